"""Task bodies called directly with ``task.fn(...)``: no Prefect server, no flow run, a copy of
the session's bootstrapped project. The flow tests run the same tasks end to end; these pin
down what each task decides, in seconds."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from conftest import clone_project, set_version_status
from prefect.logging import disable_run_logger

from unsir.checkpoint import load_checkpoint, save_checkpoint
from unsir.errors import UnlearningInputError
from unsir_pipeline.adapters.registry import registry_for
from unsir_pipeline.governance.promotion import GateInput, ParentModel
from unsir_pipeline.settings.workspace import RunContext, Workspace
from unsir_pipeline.tasks import data, evaluation, model


@pytest.fixture(scope="module")
def project(tmp_path_factory, bootstrapped_project) -> Path:
    return clone_project(bootstrapped_project, tmp_path_factory.mktemp("tasks") / "project")


@pytest.fixture
def artifacts(monkeypatch) -> dict[str, object]:
    """Prefect artifacts, kept here instead of posted to a Prefect API."""
    kept: dict[str, object] = {}

    def keep(key: str, **kwargs) -> None:
        kept[key] = kwargs.get("markdown", kwargs.get("table"))

    for module in (data, evaluation):
        for name in ("create_markdown_artifact", "create_table_artifact"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, lambda key, _keep=keep, **kwargs: _keep(key, **kwargs))
    return kept


def _context(project: Path, run_key: str, *overrides: str) -> RunContext:
    return RunContext.open(Workspace.load(project, overrides), run_key, f"flow-{run_key}")


# --- validate-data-splits: the request's classes, the retain subset, the expectations ---------


def test_a_request_is_resolved_and_its_retain_subset_drawn(project, artifacts):
    ctx = _context(project, "unit-request")
    with disable_run_logger():
        request = data.validate_data_splits.fn(ctx, ["8"], ParentModel(1, [3], [3]))
    assert request.forget_classes == [8] and request.all_forgotten == [3, 8]  # the parent's and the new
    assert request.class_names == [str(c) for c in range(10)]
    retain = pd.read_csv(request.retain_subset)
    assert set(retain["label"]) == set(range(10)) - {3, 8}
    assert retain["label"].value_counts().eq(ctx.ws.params.data.retain_per_class).all()
    assert request.expectations_passed > 0 and "data-validation" in artifacts


def test_a_class_the_parent_was_asked_to_forget_but_still_classifies_is_forgotten_again(project, artifacts):
    """A champion promoted with --override over its gate was asked to forget class 3 and did
    not (its evidence: 3 not among its verified forgotten classes). A request for 3 is not
    "already forgotten" (it was refused), and a run for 8 from it forgets 3 again."""
    parent = ParentModel(2, [3], [])
    with disable_run_logger():
        asked = data.validate_data_splits.fn(_context(project, "unit-not-forgotten"), ["3"], parent)
        other = data.validate_data_splits.fn(_context(project, "unit-not-forgotten-8"), ["8"], parent)
    assert asked.forget_classes == [3] and asked.all_forgotten == [3] and asked.forgotten_again == []
    assert other.forget_classes == [3, 8] and other.all_forgotten == [3, 8] and other.forgotten_again == [3]


@pytest.mark.parametrize(
    ("requested", "parent", "message"),
    [
        (["3"], ParentModel(2, [3], [3]), r"\['3'\] are already forgotten by the parent model \(version 2\)"),
        (["eleven"], ParentModel(1, [], []), "unknown class 'eleven'"),
        ([str(c) for c in range(1, 10)], ParentModel(2, [0], [0]), "every one of the 10 classes"),
    ],
)
def test_a_bad_request_is_refused_before_anything_is_written(project, artifacts, requested, parent, message):
    ctx = _context(project, "unit-refused")
    retain_dir = ctx.ws.root / "data" / "retain"
    before = sorted(retain_dir.glob("*")) if retain_dir.exists() else []
    with disable_run_logger(), pytest.raises(UnlearningInputError, match=message):
        data.validate_data_splits.fn(ctx, requested, parent)
    assert (sorted(retain_dir.glob("*")) if retain_dir.exists() else []) == before
    assert artifacts == {}


def test_data_other_than_the_parents_is_refused_before_the_retain_subset_is_drawn(project, artifacts):
    """A model is unlearned and judged on the split it was trained with: other parameters than
    the prepared data's, or prepared data other than the parent's, fail validation."""
    from unsir_pipeline.governance.promotion import DataLineageError

    retain_dir = project / "data" / "retain"
    before = sorted(retain_dir.glob("*")) if retain_dir.exists() else []
    with disable_run_logger(), pytest.raises(DataLineageError) as failed:
        other_split = _context(project, "unit-split", "data.split_seed=5")
        data.validate_data_splits.fn(other_split, ["8"], ParentModel(1, [], []))
    assert "data.split_seed is 5, but data/prepared was built with 0 (dvc.lock)" in str(failed.value)
    other_data = ParentModel(1, [], [], {"data/prepared": "0" * 32 + ".dir"})
    with disable_run_logger(), pytest.raises(DataLineageError) as failed:
        data.validate_data_splits.fn(_context(project, "unit-digest"), ["8"], other_data)
    assert f"version 1 was trained on data/prepared {'0' * 32}.dir, but the project's data/prepared is " in str(
        failed.value
    )
    assert (sorted(retain_dir.glob("*")) if retain_dir.exists() else []) == before


def test_a_manifest_that_is_not_what_dvc_recorded_fails_validation_naming_how_to_restore_it(
    project, artifacts, tmp_path
):
    """A manifest edited by hand failed validation naming its rows, but not how to get the
    recorded manifest back."""
    from unsir_pipeline.adapters.validation import ValidationFailed

    manifest = project / "data" / "prepared" / "manifest.csv"
    shutil.copy(manifest, tmp_path / "manifest.csv")
    manifest.write_bytes(manifest.read_bytes().replace(b"digits-00007,", b"digits-99999,"))
    try:
        with disable_run_logger(), pytest.raises(ValidationFailed) as failed:
            data.validate_data_splits.fn(_context(project, "unit-manifest"), ["8"], ParentModel(1, [], []))
    finally:
        shutil.copy(tmp_path / "manifest.csv", manifest)
    message = str(failed.value)
    assert "data/prepared/manifest.csv: recorded md5" in message and "digits-99999" in message, message
    assert message.endswith(
        "\ndata/prepared is not what dvc.lock records: restore it with `dvc pull --force data/prepared` "
        "(dvc.lock records it)"
    ), message


# --- resolve-model-version: the parent, refused before the tracking run opens -----------------


def test_a_parent_that_is_not_ready_is_refused_when_resolved_and_not_retried(
    prefect_harness, project, tmp_path, recwarn
):
    """A batch on a champion MLflow left FAILED_REGISTRATION opened its tracking run, then was
    refused only when the parent was loaded, and Prefect retried that refusal twice (~4 s): bad
    input gets the same answer however often it is asked.

    The task runs inside a flow, as in the pipeline: run alone, Prefect's engine logged its
    "Finished in state Failed" line once the task's run context had closed, and warned (in
    every test run's output) that a log was sent "without a flow run id"."""
    from prefect import flow

    from unsir_pipeline.adapters.registry import VersionNotReady

    copy = clone_project(project, tmp_path / "unready")
    ctx = _context(copy, "unit-unready")
    champion = registry_for(ctx.ws).resolve_alias(ctx.ws.params.registry.champion_alias)
    set_version_status(ctx.ws, champion, "FAILED_REGISTRATION")
    runs: list[int] = []  # how often the task ran, as Prefect counts it when it gives up
    resolve = model.resolve_model_version.with_options(on_failure=[lambda _, run, __: runs.append(run.run_count)])
    outcome: list[object] = []

    @flow(name="resolve-an-unready-parent")
    def resolve_once() -> None:
        state = resolve(ctx, ctx.ws.params.registry.champion_alias, return_state=True)
        outcome.append(state.result(raise_on_failure=False))

    resolve_once()
    (refused,) = outcome
    assert isinstance(refused, VersionNotReady)
    assert f"version {champion} is FAILED_REGISTRATION, not READY" in str(refused)
    assert runs == [1]
    missing_flow = [str(w.message) for w in recwarn if "without a flow run id" in str(w.message)]
    assert missing_flow == []


# --- evaluate: parent and unlearned model side by side, as the run's evaluation.json -----------


def test_evaluation_shapes_per_class_rows_metrics_and_the_runs_files(project, artifacts):
    ctx = _context(project, "unit-evaluate", "evaluation.relearn=false")
    parent, card = load_checkpoint(ctx.ws.original_model_dir)
    save_checkpoint(ctx.paths.parent, parent, card)
    with torch.no_grad():  # an "unlearned" model that never predicts class 3
        parent.classifier.bias[3] -= 1e4
    save_checkpoint(ctx.paths.unlearned, parent, card.with_forgotten((3,)))
    registry = registry_for(ctx.ws)
    with registry.start_run(run_name="unit-evaluate") as run_id:
        pass

    with disable_run_logger():
        result = evaluation.evaluate.fn(ctx, run_id, [3])
    # The figures are drawn without pyplot, which would keep every one alive in a long-lived worker.
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()
    assert result.forget_classes == [3]
    assert [row["class"] for row in result.per_class] == [str(c) for c in range(10)]
    assert [row["forgotten"] for row in result.per_class] == [c == 3 for c in range(10)]
    three = result.per_class[3]
    assert three["before"] > 0.9 and three["after"] == 0.0
    # Samples once taken for a 3 go to other classes: no other class loses accuracy.
    assert all(row["after"] >= row["before"] for row in result.per_class if not row["forgotten"])
    m = result.metrics
    assert m["forget_acc"] == 0.0 and m["original_forget_acc"] == pytest.approx(three["before"])
    assert "reference_retain_acc" not in m and "relearn_steps" not in m  # both off here
    assert json.loads(ctx.paths.evaluation.read_text()) == result.to_dict()
    assert ctx.paths.per_class_plot.stat().st_size > 0 and ctx.paths.confusion_plot.stat().st_size > 0
    logged = mlflow.MlflowClient(ctx.ws.tracking_uri).get_run(run_id)
    assert logged.data.metrics["forget_acc"] == 0.0
    assert {a.path for a in mlflow.MlflowClient(ctx.ws.tracking_uri).list_artifacts(run_id, "evaluation")} == {
        "evaluation/evaluation.json",
        "evaluation/per_class_accuracy.png",
        "evaluation/confusion_matrices.png",
    }
    assert artifacts["per-class-accuracy"] == result.per_class
    assert "unlearning-summary" in artifacts


# --- promotion-gate: when champion moves ----------------------------------------------------


def _register_candidate(project: Path, key: str) -> int:
    """The original's weights registered again as a new version (what it is does not matter to
    the gate: it judges the measures it is given)."""
    ws = Workspace.load(project)
    registry = registry_for(ws)
    example = torch.rand(2, 1, 8, 8).numpy()
    with registry.start_run(run_name=key):
        return registry.register_checkpoint(ws.original_model_dir, input_example=example, tags={}, idempotency_key=key)


def _candidate(per_class: list[float], forget_classes: list[int], **metrics: float) -> GateInput:
    forget_acc = sum(per_class[c] for c in forget_classes) / len(forget_classes)
    base = {
        "forget_acc": forget_acc,
        "original_retain_acc": 0.97,
        "retain_acc": 0.96,
        "mia": 0.5,
        "mia_forget_holdout": 0.5,
        "mia_forget_train_samples": 100.0,
        "mia_forget_holdout_samples": 27.0,
    }
    return GateInput(
        metrics={**base, **metrics}, per_class_test=per_class, forget_classes=forget_classes, verified=True, rounds=1
    )


def test_the_gate_promotes_a_version_that_passes_and_holds_one_that_brings_a_class_back(project):
    registry = registry_for(Workspace.load(project))
    champion = registry.resolve_alias("champion")

    forgot_3 = _register_candidate(project, "unit-gate-forgot-3")
    registry.set_version_tags(forgot_3, {"verified_forgotten_classes": "[3]"})
    with disable_run_logger():
        passed = model.promotion_gate.fn(
            _context(project, "unit-gate-1"), forgot_3, _candidate([0.97] * 3 + [0.0] + [0.97] * 6, [3])
        )
    assert passed.promoted is True and all(r.startswith("pass: ") for r in passed.reasons)
    assert registry.resolve_alias("champion") == forgot_3 != champion
    assert registry.get_version(forgot_3).tags["gate_decision"] == "promoted"

    # Forgets class 0 perfectly, but class 3 (deleted by the promoted version) is back at 95%.
    knows_3 = _register_candidate(project, "unit-gate-knows-3")
    with disable_run_logger():
        held = model.promotion_gate.fn(
            _context(project, "unit-gate-2"), knows_3, _candidate([0.0] + [0.97] * 2 + [0.95] + [0.97] * 6, [0])
        )
    assert held.promoted is False
    assert [r for r in held.reasons if r.startswith("FAIL")] == [
        "FAIL: every requested and every earlier-deleted class measured forgotten; still classified: [3]"
    ]
    assert registry.resolve_alias("champion") == forgot_3  # unchanged
    tags = registry.get_version(knows_3).tags
    assert tags["gate_decision"] == "held" and "still classified: [3]" in tags["gate_reasons"]


def test_the_gate_judges_every_bound_it_is_given(project):
    registry = registry_for(Workspace.load(project))
    champion = registry.resolve_alias("champion")
    version = _register_candidate(project, "unit-gate-bounds")
    weak = _candidate(
        [0.97] * 5 + [0.2] + [0.97] * 4, [5], retain_acc=0.90, mia=0.9, reference_retain_acc=0.97, reference_mia=0.5
    )
    weak = replace(weak, verified=False, rounds=4)
    with disable_run_logger():
        decision = model.promotion_gate.fn(_context(project, "unit-gate-3"), version, weak)
    assert decision.promoted is False
    failed = [r for r in decision.reasons if r.startswith("FAIL")]
    assert [r.split(" ")[1] for r in failed] == ["forget", "every", "retain", "retain", "membership", "forgetting"]
    assert "below retrained" in failed[3] and "(retrained)" in failed[4] and "round budget ran out" in failed[5]
    assert registry.resolve_alias("champion") == champion


def test_two_gates_deciding_at_once_cannot_bring_a_class_back(project, monkeypatch):
    """Two runs reach their gates together (two forgets, or a forget beside a batch). Without the
    promotion lock each read "nothing else forgotten" before the other promoted, both passed, and
    the later alias move undid the earlier deletion."""
    import threading

    from unsir_pipeline.governance import promotion

    ws = Workspace.load(project)
    registry = registry_for(ws)
    already = promotion.classes_that_must_stay_forgotten(registry)  # what earlier tests promoted
    read = promotion.classes_that_must_stay_forgotten

    def slow_registry(*args, **kwargs):  # a registry slow to answer between the read and the write
        found = read(*args, **kwargs)
        time.sleep(0.5)
        return found

    monkeypatch.setattr(promotion, "classes_that_must_stay_forgotten", slow_registry)
    decisions: dict[str, tuple[bool, list[str]]] = {}

    # Registered one after the other: MLflow's model logging keeps process-wide state, and what
    # races here is the gates' decisions, not the registrations.
    candidates = {name: _register_candidate(project, f"unit-race-{name}") for name in ("first", "second")}

    def gate(name: str, forgets: int) -> None:
        version = candidates[name]
        verified = sorted({forgets, *already})
        registry.set_version_tags(version, {"verified_forgotten_classes": json.dumps(verified)})
        per_class = [0.0 if c in verified else 0.97 for c in range(10)]
        decisions[name] = (version, promotion.apply_gate(ws, version, _candidate(per_class, [forgets])))

    first = threading.Thread(target=gate, args=("first", 5))
    second = threading.Thread(target=gate, args=("second", 6))
    first.start()
    time.sleep(0.2)  # the second run reaches its gate while the first is deciding
    second.start()
    first.join()
    second.join()

    (first_version, (first_promoted, _)), (second_version, (second_promoted, reasons)) = (
        decisions["first"],
        decisions["second"],
    )
    assert first_promoted and not second_promoted
    assert "FAIL: every requested and every earlier-deleted class measured forgotten; still classified: [5]" in reasons
    assert registry.resolve_alias("champion") == first_version != second_version


def test_a_version_the_gate_held_needs_override_every_time_it_is_promoted(tmp_path, bootstrapped_project):
    """A hand promotion rewrote ``gate_decision`` (held -> promoted-by-override), so once the
    champion had moved on, the same held version was promoted again without ``--override``."""
    from unsir_pipeline.governance.promotion import PromotionRefused, promote_by_hand

    project = clone_project(bootstrapped_project, tmp_path / "project")
    ws = Workspace.load(project)
    registry = registry_for(ws)
    original = registry.resolve_alias("champion")
    held = _register_candidate(project, "unit-held-override")
    with disable_run_logger():  # forgets class 3, but its MIA is far from the unseen samples'
        decision = model.promotion_gate.fn(
            _context(project, "unit-held-override"), held, _candidate([0.97] * 3 + [0.0] + [0.97] * 6, [3], mia=0.9)
        )
    assert decision.promoted is False
    assert json.loads(registry.get_version(held).tags["gate_failed_bounds"]) == [
        r for r in decision.reasons if r.startswith("FAIL: ")
    ]
    assert promote_by_hand(ws, held, "MIA miss reviewed", "rev", override=True)
    forgot_3 = _register_candidate(project, "unit-forgot-3")
    registry.set_version_tags(forgot_3, {"forgotten_classes": "[3]", "verified_forgotten_classes": "[3]"})
    with disable_run_logger():
        model.promotion_gate.fn(
            _context(project, "unit-forgot-3"), forgot_3, _candidate([0.97] * 3 + [0.0] + [0.97] * 6, [3])
        )
    assert registry.resolve_alias("champion") == forgot_3 != original
    with pytest.raises(PromotionRefused) as refused:
        promote_by_hand(ws, held, "again, without --override", "rev")
    # Each refusal names what failed and, for a deletion it would undo, which version made it.
    assert str(refused.value) == (
        f"version {held} failed its promotion gate (FAIL: membership inference 0.9000 vs 0.5000 (forget-class "
        "validation samples, n=27), gap max 0.218; more member-like than unseen forget-class samples); "
        f"version {held} was not measured to have forgotten classes [3], which earlier promoted versions forgot "
        f"(class 3 by version {forgot_3}); promote it anyway only with --override and a reason"
    )
    assert registry.resolve_alias("champion") == forgot_3


def test_a_version_whose_registration_failed_is_not_promoted_even_with_override(tmp_path, bootstrapped_project):
    """A version MLflow left FAILED_REGISTRATION has no gate decision, a problem --override
    passes: `unsir promote N --override` made it champion, and serving went to a model that
    never finished registering."""
    import sqlite3

    from unsir_pipeline.governance.promotion import PromotionRefused, promote_by_hand, promotion_under_way

    project = clone_project(bootstrapped_project, tmp_path / "project")
    ws = Workspace.load(project)
    registry = registry_for(ws)
    original = registry.resolve_alias("champion")
    failed = _register_candidate(project, "unit-failed-registration")
    with sqlite3.connect(ws.registry_database) as conn:
        conn.execute(
            "UPDATE model_versions SET status = 'FAILED_REGISTRATION' WHERE name = ? AND version = ?",
            (ws.params.registry.model_name, failed),
        )
    conn.close()
    with pytest.raises(PromotionRefused) as refused:
        promote_by_hand(ws, failed, "looks fine", "rev", override=True)
    assert str(refused.value).startswith(
        f"version {failed} is FAILED_REGISTRATION, not READY: there is no registered model to serve"
    )
    assert "unit-failed-registration" in str(refused.value)
    assert registry.resolve_alias("champion") == original
    assert promotion_under_way(registry) is None
    assert "gate_decision" not in registry.get_version(failed).tags


def test_a_done_request_is_traced_to_the_champion_that_holds_its_deletion(tmp_path, bootstrapped_project):
    """`unsir audit show --request` stopped at the request's own version: "version 2 is not in
    production" when a later champion (forgetting 3 and 5) held the deletion, and the same words
    when the original, which knows class 3, was promoted back with --override."""
    from unsir_pipeline.governance import auditor, stores

    project = clone_project(bootstrapped_project, tmp_path / "project")
    ws = Workspace.load(project)
    registry = registry_for(ws)
    original = registry.resolve_alias("champion")
    forgot_3, forgot_3_5 = (_register_candidate(project, f"unit-trace-{n}") for n in (1, 2))
    registry.set_version_tags(forgot_3, {"forgotten_classes": "[3]", "verified_forgotten_classes": "[3]"})
    registry.set_version_tags(forgot_3_5, {"forgotten_classes": "[3, 5]", "verified_forgotten_classes": "[3, 5]"})
    stores.audit_log(ws)  # the trail before the first request, as `request add` leaves them
    store = stores.request_store(ws)
    request = store.add([3], ["3"], "alice", "consent withdrawn")
    store.claim_pending("batch-a")
    store.mark_done("batch-a", forgot_3)

    registry.set_alias("champion", forgot_3)
    assert (
        auditor.request_history(ws, request.id)["production"] == f"version {forgot_3} is the champion (in production)"
    )
    registry.set_alias("champion", forgot_3_5)
    mine = f"version {forgot_3} is not in production (aliases: none)"
    assert auditor.request_history(ws, request.id)["production"] == (
        f"{mine}; the champion, version {forgot_3_5}, was measured to have forgotten ['3'] too"
    )
    registry.set_alias("champion", original)
    assert auditor.request_history(ws, request.id)["production"] == (
        f"{mine}; the champion, version {original}, was NOT measured to have forgotten ['3']: "
        "the deletion is not in effect in production"
    )


def test_a_promotion_waits_for_the_lock_then_names_it(project):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from unsir_pipeline.governance.locks import PromotionLockError, file_lock, promotion_lock

    ws = Workspace.load(project)
    # Without a Prefect server (the session's test harness, once started, sets one in Prefect's
    # settings, and the lock is then the server's), the promotion lock is this file.
    with temporary_settings(updates={PREFECT_API_URL: None}):
        with file_lock(ws.state_dir / "promotion.lock") as held:  # another process deciding
            assert held
            started = time.monotonic()
            refused = pytest.raises(PromotionLockError, match=r"another promotion of 'unsir-classifier' held .*lock")
            with refused, promotion_lock(ws, wait_s=0.3):
                pass
            assert time.monotonic() - started >= 0.3
        with promotion_lock(ws, wait_s=0.3):  # free again
            pass


def test_a_run_resumed_with_other_parameters_or_data_is_not_judged_as_its_earlier_version(
    bootstrapped_project, tmp_path
):
    """As with a moved champion: a batch stopped after registering, its params.yaml then edited
    (a user fixing the setting that made it fail), resumed under the same key, would measure a
    model made with the new parameters while registration returned the old version."""
    from unsir_pipeline.adapters.registry import RegistryError
    from unsir_pipeline.governance import claims

    project = clone_project(bootstrapped_project, tmp_path / "project")
    ws = Workspace.load(project)
    registry = registry_for(ws)
    original = registry.resolve_alias("champion")
    stopped = _register_candidate(project, "batch-stopped")
    registry.set_version_tags(
        stopped,
        {"parent_version": str(original), "params_digest": ws.params.digest(), "data_digests": '{"data/x": "a"}'},
    )
    assert not claims._resume_refused(ws, "batch-stopped")
    choose = model.choose_registration.fn
    with disable_run_logger(), pytest.raises(RegistryError, match="the data's DVC digests differ"):
        choose(_context(project, "batch-stopped"), original, {"data/x": "b"}, _candidate([0.0] * 10, [3]), None)

    registry.set_version_tags(stopped, {"params_digest": "0123456789abcdef"})  # made with other settings
    assert claims._resume_refused(ws, "batch-stopped")
    with disable_run_logger(), pytest.raises(RegistryError, match="parameters digest 0123456789abcdef then"):
        choose(_context(project, "batch-stopped"), original, {"data/x": "a"}, _candidate([0.0] * 10, [3]), None)


def test_a_run_resumed_after_the_champion_moved_is_not_judged_as_its_earlier_version(bootstrapped_project, tmp_path):
    """A batch registers version 2 from version 1 and stops before its gate; a direct forget then
    promotes version 3. Resumed under the same key, the run measured a model made from version 3
    while registration returned version 2: the gate promoted version 2, which still knew the
    class version 3 forgot. Now the batch starts afresh and the flow refuses the mismatch."""
    from unsir_pipeline.adapters.registry import RegistryError
    from unsir_pipeline.governance import claims

    project = clone_project(bootstrapped_project, tmp_path / "project")
    ws = Workspace.load(project)
    registry = registry_for(ws)
    original = registry.resolve_alias("champion")
    stopped = _register_candidate(project, "batch-stopped")
    registry.set_version_tags(stopped, {"parent_version": str(original)})  # never judged
    assert not claims._resume_refused(ws, "batch-stopped")  # the champion has not moved: resume

    moved = _register_candidate(project, "forget-elsewhere")
    registry.set_version_tags(moved, {"parent_version": str(original), "gate_decision": "promoted"})
    registry.set_alias("champion", moved)
    assert claims._resume_refused(ws, "batch-stopped")
    with (
        disable_run_logger(),
        pytest.raises(
            RegistryError,
            match=rf"registered version {stopped}, which is not .*parent version {original} then, {moved} now",
        ),
    ):
        model.choose_registration.fn(_context(project, "batch-stopped"), moved, {}, _candidate([0.0] * 10, [3]), None)

    registry.set_version_tags(stopped, {"gate_decision": "promoted"})  # promoted, then superseded
    assert not claims._resume_refused(ws, "batch-stopped")  # resumed: its records are recovered


def test_class_names_the_font_cannot_draw_show_as_their_index():
    """A CJK class name was drawn as empty boxes in the per-class and confusion figures (the
    plotting font, DejaVu Sans, has no such glyphs); it now shows as its index."""
    import io
    import warnings

    from unsir_pipeline.adapters.plots import confusion_figure, per_class_accuracy_figure, tick_labels

    names = ["猫", "dog", "café"]
    assert tick_labels(names) == ["#0", "dog", "café"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)"
        per_class_accuracy_figure(names, [1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0]).savefig(io.BytesIO(), format="png")
        confusion_figure(names, [[1, 0, 0]] * 3, [[1, 0, 0]] * 3).savefig(io.BytesIO(), format="png")


def test_a_gate_promotion_records_the_champion_it_replaced(tmp_path, bootstrapped_project):
    """A hand promotion's version_promoted record names the champion it replaced; the gate's
    gate_decision did not, so for a version the gate promoted the trail could not say which
    version was serving before (parent_version is where the run started, not what was serving
    when the gate moved the alias: `--from original`, or a promotion by hand meanwhile)."""
    from unsir_pipeline.governance.trail import run_records

    project = clone_project(bootstrapped_project, tmp_path / "project")
    registry = registry_for(Workspace.load(project))
    first, second = (_register_candidate(project, f"unit-replaced-{n}") for n in (1, 2))
    registry.set_alias("champion", first)  # promoted by hand meanwhile: not the run's parent
    registry.set_version_tags(second, {"verified_forgotten_classes": "[3]"})
    with disable_run_logger():
        passed = model.promotion_gate.fn(
            _context(project, "unit-replaced"), second, _candidate([0.97] * 3 + [0.0] + [0.97] * 6, [3])
        )
    assert (passed.promoted, passed.previous_champion) == (True, first)
    assert registry.get_version(second).tags["previous_champion"] == str(first)
    result = {
        **dict.fromkeys(("mlflow_run_id", "flow_run_id", "device"), "x"),
        **dict.fromkeys(("data_digests", "metrics", "compute_s"), {}),
        **dict.fromkeys(("forget_classes", "all_forgotten", "verified_forgotten_classes", "per_class", "rounds"), []),
        "expectations_passed": 1,
        "verified": True,
        "reads_forget_train": False,
        "parent_version": 1,
        "new_version": second,
        "promoted": True,
        "gate_reasons": passed.reasons,
        "previous_champion": passed.previous_champion,
    }
    decision = next(payload for event, payload in run_records(result) if event == "gate_decision")
    assert decision["previous_champion"] == first
