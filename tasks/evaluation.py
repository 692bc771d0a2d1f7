"""Evaluate parent and unlearned model; log metrics, figures and Prefect artifacts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from unsir.checkpoint import load_checkpoint, save_checkpoint
from unsir.measures import compare_models
from unsir.methods import make_method
from unsir.methods.base import UnlearningTask
from unsir.methods.baselines import RetrainConfig
from unsir.problem import prepare_splits
from unsir_pipeline.adapters.prepared_data import load_prepared
from unsir_pipeline.adapters.registry import registry_for
from unsir_pipeline.governance.report import summary_markdown
from unsir_pipeline.settings.workspace import RunContext, Workspace


@dataclass(frozen=True)
class Evaluation:
    """Parent and unlearned model on the test split (``evaluation.json`` of the run)."""

    forget_classes: list[int]  # every class forgotten so far
    metrics: dict[str, float]
    per_class: list[dict]  # with "retrained" beside "before" and "after" when there is a reference

    def to_dict(self) -> dict:
        return asdict(self)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(ctx: RunContext, mlflow_run_id: str, all_forgotten: list[int]) -> Evaluation:
    """Parent and unlearned model on the test split, every class forgotten so far counted as
    forget classes, with the retrained reference beside them when
    ``evaluation.retrain_reference`` is on; writes the figures and ``evaluation.json`` and logs
    them to the MLflow run. The reference is kept in the run directory: the flow registers it in
    UNSIR's place when UNSIR's model fails the gate and it passes."""
    return _measure(ctx, mlflow_run_id, all_forgotten, with_reference=ctx.ws.params.evaluation.retrain_reference)


@task(name="retrain-reference", cache_policy=NO_CACHE)
def retrain_reference(ctx: RunContext, mlflow_run_id: str, all_forgotten: list[int]) -> Evaluation:
    """The retrained reference, trained after all because UNSIR's model failed the gate
    (``gates.retrain_when_held``), and the run measured again beside it: the fallback is
    judged, and the evidence reads, as in a run that trained it from the start."""
    get_run_logger().warning("UNSIR's model fails the gate: training the retrained reference for the fallback")
    return _measure(ctx, mlflow_run_id, all_forgotten, with_reference=True)


def _measure(ctx: RunContext, mlflow_run_id: str, all_forgotten: list[int], with_reference: bool) -> Evaluation:
    # matplotlib is imported only by the step that draws.
    from unsir_pipeline.adapters.plots import confusion_figure, per_class_accuracy_figure

    ws, run = ctx.ws, ctx.paths
    parent, card = load_checkpoint(run.parent)
    unlearned, _ = load_checkpoint(run.unlearned)
    data, manifest = load_prepared(ws)
    splits = prepare_splits(data, manifest, normalization=card.normalization)
    evaluation_data = splits.evaluation_data(tuple(all_forgotten))
    device = ws.device()
    config = ws.params.evaluation.core_config()
    reference = _train_reference(ws, splits, tuple(all_forgotten), parent, device) if with_reference else None
    comparison = compare_models(parent, unlearned, evaluation_data, device=device, config=config, reference=reference)
    before, after = comparison.before, comparison.after
    if reference is not None:
        save_checkpoint(run.retrained, reference.cpu(), card.with_forgotten(tuple(all_forgotten)))
    names = list(card.class_names)
    per_class_accuracy_figure(names, before.per_class_test, after.per_class_test, list(all_forgotten)).savefig(
        run.per_class_plot, dpi=110
    )
    confusion_figure(names, before.confusion_test, after.confusion_test).savefig(run.confusion_plot, dpi=110)
    result = Evaluation(
        forget_classes=list(all_forgotten),
        metrics=comparison.metrics,
        per_class=[
            {
                "class": names[c],
                "before": before.per_class_test[c],
                "after": after.per_class_test[c],
                **({"retrained": comparison.reference.per_class_test[c]} if comparison.reference else {}),
                "forgotten": c in all_forgotten,
            }
            for c in range(len(names))
        ],
    )
    run.evaluation.write_text(json.dumps(result.to_dict(), indent=2) + "\n")

    registry = registry_for(ws)
    with registry.start_run(run_id=mlflow_run_id):
        registry.log_metrics(result.metrics)
        for path in (run.per_class_plot, run.confusion_plot, run.evaluation):
            registry.log_artifact(path, "evaluation")
    create_table_artifact(
        key="per-class-accuracy", table=result.per_class, description="test accuracy before and after"
    )
    create_markdown_artifact(key="unlearning-summary", markdown=summary_markdown(result.forget_classes, result.metrics))
    m = result.metrics
    get_run_logger().info(
        "forget acc %.4f -> %.4f, retain acc %.4f -> %.4f, MIA %.3f -> %.3f",
        m["original_forget_acc"],
        m["forget_acc"],
        m["original_retain_acc"],
        m["retain_acc"],
        m["original_mia"],
        m["mia"],
    )
    return result


def _train_reference(ws: Workspace, splits, forget_classes: tuple[int, ...], parent, device: torch.device):
    """The gold standard: the same architecture trained from scratch, as long as the original,
    on the retain classes only. Costs a full training run (seconds on digits)."""
    keep = ~torch.isin(splits.train_labels, torch.as_tensor(forget_classes))
    x, y = splits.train_images[keep], splits.train_labels[keep]
    task = UnlearningTask(forget_classes, splits.num_classes, x, y, retain_train_images=x, retain_train_labels=y)
    method = make_method("retrain", RetrainConfig(train=ws.params.model.train))
    return method.unlearn(
        parent, task, device=device, generator=torch.Generator().manual_seed(ws.params.model.seed)
    ).model
