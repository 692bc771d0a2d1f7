"""Process environment for the pipeline's tools: state inside the project, no telemetry.

Must run before Prefect, MLflow or DVC is imported: they read these variables at import.
``setdefault`` keeps whatever an operator set explicitly (a Prefect server, a shared home).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def configure(project_dir: Path, state_dir: str = "state") -> None:
    state = Path(project_dir).resolve() / state_dir
    home = state / "prefect"
    defaults = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # Prefect's client counts installs itself (its notice on a terminal says so) unless this
        # is set; the server's setting above does not reach it. MLflow honours it too.
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # MLflow's own stderr handler shows INFO ("Validating input example against model
        # signature" on every registration), --json or not; its warnings and errors stay.
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "DVC_NO_ANALYTICS": "1",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if os.environ["PREFECT_HOME"] != str(home):
        return  # an operator's home is theirs to make
    # Not on a read-only copy of the state (an auditor's): the commands that read it start no
    # Prefect; one that does fails there, naming the directory.
    with contextlib.suppress(OSError):
        home.mkdir(parents=True, exist_ok=True)
