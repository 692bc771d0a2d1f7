"""Evaluate parent and unlearned model; log metrics, figures and Prefect artifacts."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.common import run_paths, workspace
from unsir_pipeline import steps


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(project_dir: str, overrides: list[str], run_key: str, mlflow_run_id: str, all_forgotten: list[int]) -> dict:
    ws = workspace(project_dir, overrides)
    run = run_paths(project_dir, overrides, run_key)
    result = steps.evaluate_step(ws, run, all_forgotten)
    registry = steps.registry_for(ws)
    with registry.start_run(run_id=mlflow_run_id):
        registry.log_metrics(result["metrics"])
        for path in (run.per_class_plot, run.confusion_plot, run.evaluation):
            registry.log_artifact(path, "evaluation")
    create_table_artifact(key="per-class-accuracy", table=result["per_class"], description="test accuracy before and after")
    create_markdown_artifact(key="unlearning-summary", markdown=steps.summary_markdown(result))
    m = result["metrics"]
    get_run_logger().info("forget acc %.4f -> %.4f, retain acc %.4f -> %.4f, MIA %.3f -> %.3f",
                          m["original_forget_acc"], m["forget_acc"], m["original_retain_acc"], m["retain_acc"], m["original_mia"], m["mia"])
    return result
