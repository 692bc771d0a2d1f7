"""UNSIR, verified: rounds of noise, impair and repair until the validation check passes."""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.common import run_paths, workspace
from unsir_pipeline import steps


@task(name="unlearn", cache_policy=NO_CACHE)
def unlearn(project_dir: str, overrides: list[str], run_key: str, mlflow_run_id: str, forget_classes: list[int],
            all_forgotten: list[int], retain_subset: str) -> dict:
    """Learn the noise, impair, repair; verify on the validation split; repeat within budget.
    Every round is logged to the MLflow run as metrics with the round as their step."""
    ws = workspace(project_dir, overrides)
    out = steps.unlearn_step(ws, run_paths(project_dir, overrides, run_key), forget_classes, all_forgotten, retain_subset)
    registry = steps.registry_for(ws)
    with registry.start_run(run_id=mlflow_run_id):
        for record in out["rounds"]:
            registry.log_metrics({f"round_{k}": float(v) for k, v in record.items() if k != "round"},
                                 step=int(record["round"]))
        registry.log_metrics({"rounds": float(len(out["rounds"])), "verified": float(bool(out["verified"]))})
    logger = get_run_logger()
    for record in out["rounds"]:
        logger.info("round %d: %s", int(record["round"]), json.dumps({k: round(v, 4) for k, v in record.items()}))
    logger.info("classes %s %s after %d round(s) on %s", forget_classes,
                "verified forgotten" if out["verified"] else "NOT verified forgotten", len(out["rounds"]), out["device"])
    return out
