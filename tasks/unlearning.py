"""The three UNSIR steps, each its own task so its time and device show in the flow run."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.common import run_paths, workspace
from unsir_pipeline import steps


@task(name="learn-noise", cache_policy=NO_CACHE)
def learn_noise(project_dir: str, overrides: list[str], run_key: str, forget_classes: list[int], retain_subset: str) -> dict:
    out = steps.learn_noise(workspace(project_dir, overrides), run_paths(project_dir, overrides, run_key), forget_classes, retain_subset)
    get_run_logger().info("error-maximising noise for classes %s learned on %s in %.2fs", forget_classes, out["device"], out["seconds"])
    return out


@task(name="impair", cache_policy=NO_CACHE)
def impair(project_dir: str, overrides: list[str], run_key: str, retain_subset: str) -> dict:
    out = steps.impair_step(workspace(project_dir, overrides), run_paths(project_dir, overrides, run_key), retain_subset)
    get_run_logger().info("impaired in %.2fs", out["seconds"])
    return out


@task(name="repair", cache_policy=NO_CACHE)
def repair(project_dir: str, overrides: list[str], run_key: str, retain_subset: str, all_forgotten: list[int]) -> dict:
    out = steps.repair_step(workspace(project_dir, overrides), run_paths(project_dir, overrides, run_key), retain_subset, all_forgotten)
    get_run_logger().info("repaired in %.2fs", out["seconds"])
    return out
