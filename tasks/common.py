"""What every task needs: the workspace of the project it runs for, and a run's paths."""

from __future__ import annotations

from unsir_pipeline.steps import RunPaths
from unsir_pipeline.workspace import Workspace, open_workspace


def workspace(project_dir: str, overrides: list[str]) -> Workspace:
    return open_workspace(project_dir, tuple(overrides))


def run_paths(project_dir: str, overrides: list[str], run_key: str) -> RunPaths:
    return RunPaths.for_run(workspace(project_dir, overrides), run_key)
