"""The ``unlearn`` flow: forget classes from the registered champion, prove it, register it.

resolve-model-version -> open-tracking-run -> validate-data-splits -> version-data
-> load-registered-model -> unlearn (rounds of learn-noise, impair, repair, verify)
-> evaluate -> choose-registration [-> retrain-reference -> choose-registration]
-> register-model-version -> promotion-gate -> record-on-audit-trail

choose-registration registers UNSIR's model, or, when it fails the gate and the retrained
reference passes it (``gates.fallback_to_retrained``), the retrained model in its place: the
deletion is finished by exact unlearning rather than left held. Without a reference from
evaluate (``evaluation.retrain_reference: false``), a held UNSIR model has it trained then
(``gates.retrain_when_held``), so the retraining is paid only on a miss.
"""

from __future__ import annotations

import getpass
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace

from prefect import flow, runtime

from unsir_pipeline.adapters.registry import registry_for
from unsir_pipeline.governance import locks, promotion, trail
from unsir_pipeline.governance.failures import failure_message, setup_fault
from unsir_pipeline.governance.trail import require_recordable
from unsir_pipeline.settings.runtime import was_interrupted
from unsir_pipeline.settings.workspace import RunContext, Workspace, open_workspace
from unsir_pipeline.tasks import data, evaluation, model, requests, unlearning

# The error a forget's own request keeps when its user stopped the run (Ctrl-C).
CANCELLED = "stopped with Ctrl-C by the user who ran it: not retried by a batch; run `unsir forget` again to forget"


@dataclass
class UnlearnResult:
    forget_classes: list[int]
    forget_class_names: list[str]
    all_forgotten: list[int]
    parent_version: int
    new_version: int
    promoted: bool
    gate_reasons: list[str]
    metrics: dict[str, float]
    per_class: list[dict]
    mlflow_run_id: str
    flow_run_id: str
    run_key: str
    device: str
    data_digests: dict[str, str] = field(default_factory=dict)
    expectations_passed: int = 0
    compute_s: dict[str, float] = field(default_factory=dict)
    task_s: dict[str, float] = field(default_factory=dict)
    rounds: list[dict] = field(default_factory=list)
    verified: bool | None = None
    verified_forgotten_classes: list[int] = field(default_factory=list)
    reads_forget_train: bool = False
    method: str = "unsir"  # what was registered: UNSIR's model, or "retrain" (the fallback)
    unsir_gate_reasons: list[str] = field(default_factory=list)  # why UNSIR's was not, on a fallback
    no_fallback_because: str = ""  # why a held UNSIR model was not replaced by the reference
    # Of forget_classes, those nobody asked for this time: deletions that promoted versions made
    # and the parent still classifies (a run from the original, or from a version promoted back).
    forgotten_again: list[int] = field(default_factory=list)
    previous_champion: int | None = None  # the champion the gate replaced, when it promoted

    def to_dict(self) -> dict:
        return asdict(self)


class _Clock:
    """Wall time of each task as the flow sees it (scheduling and I/O included), summed over
    the times a task runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn, *args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def _candidates(
    result: evaluation.Evaluation, unlearned: unlearning.Unlearned
) -> tuple[promotion.GateInput, promotion.GateInput | None]:
    """UNSIR's model and, when the evaluation trained it, the retrained reference, as the gate
    judges them."""
    unsir = promotion.GateInput(
        metrics=result.metrics,
        per_class_test=[row["after"] for row in result.per_class],
        forget_classes=result.forget_classes,
        verified=unlearned.verified,
        rounds=len(unlearned.rounds),
    )
    if "retrained" not in result.per_class[0]:
        return unsir, None
    return unsir, promotion.retrained_candidate(unsir, [row["retrained"] for row in result.per_class])


@flow(name="unlearn", log_prints=True, validate_parameters=True)
def unlearn(
    forget_classes: list[str],
    project_dir: str = ".",
    overrides: list[str] | None = None,
    parent: str | None = None,
    run_key: str | None = None,
    requested_by: str | None = None,
    recorded_by_caller: bool = False,
) -> dict:
    """Forget ``forget_classes`` from ``parent`` (default: the champion).

    ``run_key`` names the run's directory, its MLflow run and its registration; it defaults to
    the flow run id. A caller that may rerun the same work (a deletion batch resumed after a
    crash) passes a stable key, so the rerun resumes instead of registering a second version.

    The run puts itself on the audit trail, as ``requested_by`` (default: the user running
    it), whoever started it: ``unsir forget``, Python, or a Prefect deployment. No version is
    registered by a run that leaves no record. Its classes are a deletion request of its own
    while it runs (``unsir request list``), held under the batch lock, and end done with its
    version or released with the error, as a batch's requests do. A deletion batch claims,
    ends and records its subflow under its own batch and requests (``recorded_by_caller``).
    """
    ws = open_workspace(project_dir, tuple(overrides or ()))
    actor = requested_by or getpass.getuser()
    if not recorded_by_caller:
        require_recordable(actor, by_name="requested_by")  # before any compute, not at the record
    parent_ref = parent or ws.params.registry.champion_alias
    # A run outside a batch holds the batch lock while its own request runs (claim-forget-request).
    with nullcontext() if recorded_by_caller else locks.forget_run_lock(ws):
        return _run(ws, forget_classes, parent_ref, run_key, actor, recorded_by_caller)


def _run(
    ws: Workspace,
    forget_classes: list[str],
    parent_ref: str,
    run_key: str | None,
    actor: str,
    recorded_by_caller: bool,
) -> dict:
    """The flow's steps, in order (see :func:`unlearn`)."""
    flow_run_id = str(runtime.flow_run.id or "local")
    ctx = RunContext.open(ws, run_key or flow_run_id, flow_run_id)
    clock = _Clock()

    parent_model = clock("resolve-model-version", model.resolve_model_version, ctx, parent_ref)
    mlflow_run_id = clock("open-tracking-run", model.open_tracking_run, ctx, forget_classes)
    registry = registry_for(ws)
    run_id = trail.forget_id(ctx.run_key)
    try:
        if not recorded_by_caller:
            # Its classes, as a running request of its own: a request filed while it runs
            # counts them, and the check counts the queued requests' (one transaction).
            clock(
                "claim-forget-request",
                requests.claim_forget_request,
                ws,
                forget_classes,
                parent_model,
                actor,
                ctx.run_key,
            )
        request = clock("validate-data-splits", data.validate_data_splits, ctx, forget_classes, parent_model)
        digests = clock("version-data", data.version_data, ws, request.retain_subset)
        clock("load-registered-model", model.load_registered_model, ctx, parent_model.version)
        unlearned = clock("unlearn", unlearning.unlearn, ctx, mlflow_run_id, request)
        result = clock("evaluate", evaluation.evaluate, ctx, mlflow_run_id, request.all_forgotten)

        def choose(result: evaluation.Evaluation) -> promotion.RegistrationChoice:
            candidates = _candidates(result, unlearned)
            return clock(
                "choose-registration", model.choose_registration, ctx, parent_model.version, digests, *candidates
            )

        choice = choose(result)
        if choice.reference_wanted:  # held, and no reference yet: train it now (gates.retrain_when_held)
            result = clock("retrain-reference", evaluation.retrain_reference, ctx, mlflow_run_id, request.all_forgotten)
            choice = choose(result)
        verified_forgotten = promotion.measured_forgotten(
            choice.candidate.per_class_test, ws.params.gates.max_forget_acc
        )
        tags = promotion.lineage_tags(
            ws,
            parent_version=parent_model.version,
            all_forgotten=request.all_forgotten,
            new_classes=request.forget_classes,
            data_digests=digests,
            flow_run_id=flow_run_id,
            mlflow_run_id=mlflow_run_id,
            run_key=ctx.run_key,
            rounds=len(unlearned.rounds),
            verified=unlearned.verified,
            verified_forgotten=verified_forgotten,
            method=choice.method,
            unsir_gate_reasons=choice.unsir_gate_reasons,
        )
        checkpoint = ctx.paths.retrained if choice.method == "retrain" else ctx.paths.unlearned
        version = clock("register-model-version", model.register_model_version, ctx, mlflow_run_id, tags, checkpoint)
        # The run as registered, before the gate decides (promoted and gate_reasons follow).
        registered = UnlearnResult(
            forget_classes=request.forget_classes,
            forget_class_names=[request.class_names[c] for c in request.forget_classes],
            all_forgotten=request.all_forgotten,
            parent_version=parent_model.version,
            new_version=version,
            promoted=False,
            gate_reasons=[],
            metrics=result.metrics,
            per_class=result.per_class,
            mlflow_run_id=mlflow_run_id,
            flow_run_id=flow_run_id,
            run_key=ctx.run_key,
            device=unlearned.device,
            data_digests=digests,
            expectations_passed=request.expectations_passed,
            compute_s=dict(unlearned.timings_s),
            task_s=clock.seconds,
            rounds=unlearned.rounds,
            verified=unlearned.verified,
            verified_forgotten_classes=verified_forgotten,
            method=choice.method,
            unsir_gate_reasons=choice.unsir_gate_reasons,
            forgotten_again=request.forgotten_again,
        )
        if not recorded_by_caller:
            # Its evidence and registration go on the trail before the gate can make it champion:
            # a run stopped in between leaves a recorded version the gate never judged (it waits
            # in review), never a champion without a record.
            clock(
                "record-on-audit-trail",
                requests.record_on_audit_trail,
                ws,
                registered.to_dict(),
                actor,
                through="model_registered",
            )
        decision = clock("promotion-gate", model.promotion_gate, ctx, version, choice.candidate)
    except BaseException as err:
        registry.end_run(mlflow_run_id, status="FAILED")
        if not recorded_by_caller:  # as a failed batch releases its requests
            # A forget its user stopped with Ctrl-C was cancelled: its request ends failed,
            # not forgotten later by a batch nobody asked for. Any other failure (a
            # SIGTERM from the system included) leaves it pending for the next batch, its
            # attempt counted as a batch's is: not when the setup failed.
            cancelled = isinstance(err, KeyboardInterrupt) or was_interrupted()
            message = CANCELLED if cancelled else failure_message(err, ws)
            counted = cancelled or setup_fault(err) is None
            requests.release_requests(ws, run_id, message, retry=not cancelled, count_attempt=counted)
        raise
    with registry.start_run(run_id=mlflow_run_id):
        registry.log_metrics(
            {
                **{f"compute_{k}": v for k, v in registered.compute_s.items()},
                **{f"task_s_{k.replace('-', '_')}": v for k, v in clock.seconds.items()},
            }
        )
    outcome = replace(
        registered,
        promoted=decision.promoted,
        gate_reasons=decision.reasons,
        previous_champion=decision.previous_champion,
        no_fallback_because="" if decision.promoted else choice.no_fallback_because,
    ).to_dict()
    if not recorded_by_caller:
        outcome["audit_id"] = clock("record-on-audit-trail", requests.record_on_audit_trail, ws, outcome, actor)
        requests.complete_requests(ws, run_id, version)  # as a batch's: done, promoted or held
    return outcome
