"""UNSIR, verified: rounds of noise, impair and repair until the validation check passes."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from unsir.checkpoint import load_checkpoint, save_checkpoint
from unsir.methods import make_method
from unsir.problem import build_task, prepare_splits
from unsir_pipeline.adapters.prepared_data import load_prepared, read_manifest
from unsir_pipeline.adapters.registry import registry_for
from unsir_pipeline.settings.workspace import RunContext
from unsir_pipeline.tasks.data import ValidatedRequest


@dataclass(frozen=True)
class Unlearned:
    """The unlearned checkpoint, and how UNSIR got there."""

    checkpoint: Path
    device: str
    timings_s: dict[str, float]
    rounds: list[dict]
    verified: bool | None


@task(name="unlearn", cache_policy=NO_CACHE)
def unlearn(ctx: RunContext, mlflow_run_id: str, request: ValidatedRequest) -> Unlearned:
    """UNSIR on the parent: rounds of noise, impair and repair until the new forget classes are
    forgotten on the validation split, or the round budget runs out. Every round is logged to
    the MLflow run as metrics with the round as their step.

    The same call as the DVC stage's (``stages.unlearn_original``): one method, one seeded
    generator, so the same parameters and parent give the same weights. The task holds D_r_sub
    and the validation split only; no forget-class training sample is ever loaded.
    """
    ws = ctx.ws
    model, card = load_checkpoint(ctx.paths.parent)
    data, manifest = load_prepared(ws)
    splits = prepare_splits(data, manifest, normalization=card.normalization)
    task = build_task(splits, data, read_manifest(request.retain_subset), tuple(request.forget_classes))
    earlier = sorted(set(request.all_forgotten) - set(request.forget_classes))
    if earlier and task.validation_images is not None and task.validation_labels is not None:
        # Classes the parent already forgot are neither verified again here nor retain samples.
        keep = ~torch.isin(task.validation_labels, torch.as_tensor(earlier))
        task = replace(
            task, validation_images=task.validation_images[keep], validation_labels=task.validation_labels[keep]
        )
    device = ws.device()
    result = make_method("unsir", ws.params.unsir_config()).unlearn(
        model, task, device=device, generator=torch.Generator().manual_seed(ws.params.unlearn.seed)
    )
    save_checkpoint(ctx.paths.unlearned, result.model.cpu(), card.with_forgotten(tuple(request.all_forgotten)))
    out = Unlearned(ctx.paths.unlearned, str(device), result.timings_s, result.rounds, result.verified)

    registry = registry_for(ws)
    with registry.start_run(run_id=mlflow_run_id):
        for record in out.rounds:
            registry.log_metrics(
                {f"round_{k}": float(v) for k, v in record.items() if k != "round"}, step=int(record["round"])
            )
        registry.log_metrics({"rounds": float(len(out.rounds)), "verified": float(bool(out.verified))})
    logger = get_run_logger()
    for record in out.rounds:
        logger.info("round %d: %s", int(record["round"]), json.dumps({k: round(v, 4) for k, v in record.items()}))
    logger.info(
        "classes %s %s after %d round(s) on %s",
        request.forget_classes,
        "verified forgotten" if out.verified else "NOT verified forgotten",
        len(out.rounds),
        out.device,
    )
    return out
