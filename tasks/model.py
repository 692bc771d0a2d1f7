"""Registry-side tasks: the tracking run, the parent model, registration and promotion."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from unsir.checkpoint import save_checkpoint
from unsir.splits import select
from unsir_pipeline.adapters.prepared_data import load_prepared
from unsir_pipeline.adapters.provenance import git_commit
from unsir_pipeline.adapters.registry import RegistryError, registry_for, version_with_key
from unsir_pipeline.governance import promotion
from unsir_pipeline.settings import runtime
from unsir_pipeline.settings.workspace import RunContext
from unsir_pipeline.tasks.retries import IO_RETRIES


@task(name="open-tracking-run", cache_policy=NO_CACHE, **IO_RETRIES)
def open_tracking_run(ctx: RunContext, requested: list[str]) -> str:
    """The MLflow run for this run key, created once: a retried or resumed run reuses it."""
    ws = ctx.ws
    registry = registry_for(ws)
    run_id = registry.find_run("run_key", ctx.run_key)
    if run_id is None:
        tags = {
            "run_key": ctx.run_key,
            "prefect_flow_run_id": ctx.flow_run_id,
            "requested_classes": json.dumps(requested),
            "git_commit": git_commit(ws.root),
        }
        with registry.start_run(run_name=f"unlearn-{ctx.run_key[:12]}", tags=tags) as run_id:
            registry.log_params(
                {
                    **_flatten(ws.params.model_dump(mode="json")),
                    "params_digest": ws.params.digest(),
                    "overrides": json.dumps(list(ws.overrides)),
                }
            )
    get_run_logger().info("MLflow run %s", run_id)
    return run_id


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@task(name="resolve-model-version", cache_policy=NO_CACHE, **IO_RETRIES)
def resolve_model_version(ctx: RunContext, ref: str) -> promotion.ParentModel:
    promotion.finish_interrupted_promotion(ctx.ws)  # the champion a killed promotion was moving
    registry = registry_for(ctx.ws)
    parent = promotion.resolve_parent(registry, ref)
    registry.require_ready(parent.version)  # before the tracking run opens, not at the load
    promotion.require_unrejected_parent(parent)
    get_run_logger().info("%r is version %s (forgotten so far: %s)", ref, parent.version, parent.forgotten_classes)
    return parent


@task(name="load-registered-model", cache_policy=NO_CACHE, **IO_RETRIES)
def load_registered_model(ctx: RunContext, version: int) -> Path:
    """Download the parent version and keep its checkpoint in the run directory."""
    model, card, _ = registry_for(ctx.ws).load_model(
        version, dest=ctx.paths.download, allow_pickled_module=ctx.ws.params.registry.allow_pickled_module
    )
    save_checkpoint(ctx.paths.parent, model, card)
    get_run_logger().info("loaded version %s into %s (safetensors, no pickle)", version, ctx.paths.parent)
    return ctx.paths.parent


@task(name="choose-registration", cache_policy=NO_CACHE, **IO_RETRIES)
def choose_registration(
    ctx: RunContext,
    parent_version: int,
    data_digests: dict[str, str],
    unsir: promotion.GateInput,
    retrained: promotion.GateInput | None,
) -> promotion.RegistrationChoice:
    """UNSIR's model, or the retrained reference in its place when UNSIR's fails the gate and the
    reference passes it (``gates.fallback_to_retrained``); a resumed run keeps the choice its
    earlier attempt registered, and must have made its model as that attempt did."""
    versions = registry_for(ctx.ws).list_versions()
    registered = version_with_key(versions, ctx.run_key)  # what registration would return
    if registered is not None:
        changed = promotion.not_this_runs_model(
            registered.tags,
            parent_version=parent_version,
            params_digest=ctx.ws.params.digest(),
            data_digests=data_digests,
        )
        if changed:
            raise RegistryError(
                f"run key {ctx.run_key!r} registered version {registered.version}, which is not the model "
                f"this run made ({changed}): run it under a new run key"
            )
    if registered is not None:
        choice = promotion.registered_choice(registered.tags, unsir, retrained)
    else:
        must_stay_forgotten = set(promotion.deletions_done(versions))
        choice = promotion.choose_registration(ctx.ws, unsir, retrained, must_stay_forgotten)
    if choice.method == "retrain":
        get_run_logger().warning(
            "UNSIR's model fails the gate (%s); registering the retrained reference (exact unlearning) instead",
            "; ".join(choice.unsir_gate_reasons),
        )
    return choice


@task(name="register-model-version", cache_policy=NO_CACHE, **IO_RETRIES)
def register_model_version(
    ctx: RunContext,
    mlflow_run_id: str,
    tags: dict[str, str],
    checkpoint: Path | None = None,
    input_example_count: int = 2,
) -> int:
    """Register ``checkpoint`` (default: the unlearned one) as ``challenger``. Keyed on the run
    key (the flow run id, or a batch's stable key): a retry returns the version already
    registered."""
    runtime.raise_if_stopped()  # a stopped command registers nothing
    ws = ctx.ws
    # A few test images as the data set gives them (the served model normalises them itself).
    data, manifest = load_prepared(ws)
    images, _ = select(data, manifest[manifest["split"] == "test"].head(input_example_count))
    registry = registry_for(ws)
    with registry.start_run(run_id=mlflow_run_id):
        version = registry.register_checkpoint(
            checkpoint or ctx.paths.unlearned,
            input_example=images.numpy(),
            tags=tags,
            idempotency_key=tags["run_key"],
            alias=ws.params.registry.challenger_alias,
        )
    get_run_logger().info(
        "registered version %s as %r; lineage %s", version, ws.params.registry.challenger_alias, json.dumps(tags)
    )
    return version


@task(name="promotion-gate", cache_policy=NO_CACHE, **IO_RETRIES)
def promotion_gate(ctx: RunContext, version: int, candidate: promotion.GateInput) -> promotion.GateDecision:
    """Move ``champion`` to the new version only when every bound in params.yaml holds and no
    class that a promoted version forgot would come back."""
    runtime.raise_if_stopped()
    promoted, reasons = promotion.apply_gate(ctx.ws, version, candidate)
    get_run_logger().info(
        "version %s %s: %s", version, "promoted to champion" if promoted else "NOT promoted", "; ".join(reasons)
    )
    # The champion it replaced, tagged by the gate under its lock (read back: a retried task
    # whose first attempt promoted finds it there).
    tags = registry_for(ctx.ws).get_version(version).tags if promoted else {}
    return promotion.GateDecision(promoted, reasons, promotion.previous_champion_of(tags))
