"""Registry-side tasks: the tracking run, the parent model, registration and promotion."""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.common import run_paths, workspace
from unsir_pipeline import promotion, steps


@task(name="open-tracking-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def open_tracking_run(project_dir: str, overrides: list[str], run_key: str, flow_run_id: str, requested: list[str]) -> str:
    run_id = steps.open_tracking_run(workspace(project_dir, overrides), run_key, flow_run_id, requested)
    get_run_logger().info("MLflow run %s", run_id)
    return run_id


@task(name="resolve-model-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def resolve_model_version(project_dir: str, overrides: list[str], ref: str) -> dict:
    parent = steps.resolve_parent(workspace(project_dir, overrides), ref)
    get_run_logger().info("%r is version %s (forgotten so far: %s)", ref, parent["version"], parent["forgotten_classes"])
    return parent


@task(name="load-registered-model", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def load_registered_model(project_dir: str, overrides: list[str], run_key: str, version: int) -> str:
    path = steps.load_parent(workspace(project_dir, overrides), run_paths(project_dir, overrides, run_key), version)
    get_run_logger().info("loaded version %s into %s (safetensors, no pickle)", version, path)
    return path


@task(name="register-model-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def register_model_version(project_dir: str, overrides: list[str], run_key: str, mlflow_run_id: str, tags: dict[str, str], input_example_count: int = 2) -> int:
    """Register the unlearned checkpoint as ``challenger``. Keyed on the run key (the flow run
    id, or a batch's stable key): a retry returns the version already registered."""
    ws = workspace(project_dir, overrides)
    run = run_paths(project_dir, overrides, run_key)
    registry = steps.registry_for(ws)
    with registry.start_run(run_id=mlflow_run_id):
        version = registry.register_checkpoint(
            run.unlearned, input_example=steps.input_example(ws, run, input_example_count), tags=tags,
            idempotency_key=tags["run_key"], alias=ws.params.registry.challenger_alias,
        )
    get_run_logger().info("registered version %s as %r; lineage %s", version, ws.params.registry.challenger_alias, json.dumps(tags))
    return version


@task(name="promotion-gate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def promotion_gate(project_dir: str, overrides: list[str], version: int, candidate: promotion.GateInput) -> dict:
    """Move ``champion`` to the new version only when every bound in params.yaml holds and no
    class that a promoted version forgot would come back."""
    ws = workspace(project_dir, overrides)
    promoted, reasons = promotion.apply_gate(ws, version, candidate)
    get_run_logger().info("version %s %s: %s", version, "promoted to champion" if promoted else "NOT promoted", "; ".join(reasons))
    return {"promoted": promoted, "reasons": reasons}
