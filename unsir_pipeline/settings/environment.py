"""Process environment for the pipeline's tools: state inside the project, no telemetry.

Must run before Prefect, MLflow or DVC is imported: they read these variables at import.
``setdefault`` keeps whatever an operator set explicitly (a Prefect server, a shared home).
"""

from __future__ import annotations

import os
from pathlib import Path


def configure(project_dir: Path, state_dir: str = "state") -> None:
    state = Path(project_dir).resolve() / state_dir
    defaults = {
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "DVC_NO_ANALYTICS": "1",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    (state / "prefect").mkdir(parents=True, exist_ok=True)
