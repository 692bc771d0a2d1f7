"""Where a result came from: the git commit of the code that produced it."""

from __future__ import annotations

import subprocess
from pathlib import Path

# Files the pipeline itself rewrites: DVC records each stage's output hashes in dvc.lock, and a
# training on another machine writes other hashes. The lineage carries those data digests on
# their own, so a changed dvc.lock says nothing about the code and must not mark it dirty.
PIPELINE_WRITTEN = ("dvc.lock",)


def git_commit(root: Path) -> str:
    """HEAD's commit (suffixed ``-dirty`` when tracked code or configuration changed), or
    ``unknown``."""
    exclude = [f":(exclude){name}" for name in PIPELINE_WRITTEN]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *exclude],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head
