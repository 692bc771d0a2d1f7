"""Validate the data splits and version the data a run uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from unsir.classes import check_forget_classes
from unsir.errors import UnlearningInputError
from unsir_pipeline.adapters import data_versioning
from unsir_pipeline.adapters.prepared_data import how_to_restore, load_prepared, read_manifest, write_retain_subset
from unsir_pipeline.adapters.registry import registry_for

# Great Expectations, seconds to import: at the module's import, since every flow validates first
# and the CLI imports the flow while Prefect's temporary server starts.
from unsir_pipeline.adapters.validation import require_valid, validate_splits
from unsir_pipeline.governance.deletion_requests import resolve_request
from unsir_pipeline.governance.promotion import ParentModel, deletions_done, require_parents_data
from unsir_pipeline.settings.workspace import RunContext, Workspace
from unsir_pipeline.tasks.retries import IO_RETRIES


@dataclass(frozen=True)
class ValidatedRequest:
    """A request that passed validation: the classes to forget now (those requested, and
    ``forgotten_again``: deletions that promoted versions made and the parent still classifies),
    every class forgotten once this run is done, and the retain subset (D_r_sub) drawn for it."""

    forget_classes: list[int]
    all_forgotten: list[int]
    class_names: list[str]
    retain_subset: Path
    expectations_passed: int
    forgotten_again: list[int]


@task(name="validate-data-splits", cache_policy=NO_CACHE)
def validate_data_splits(ctx: RunContext, requested: list[str], parent: ParentModel) -> ValidatedRequest:
    """Resolve the request, check that the data is the one the parent was trained on, draw the
    retain subset, and run Great Expectations over the manifest and the retain subset, plus DVC
    digests; a failure stops the flow before any compute, listing every failed expectation."""
    ws = ctx.ws
    data, manifest = load_prepared(ws)
    new_classes = resolve_request(
        requested,
        data.class_names,
        forgotten=parent.deleted_classes,
        forgotten_by=f"the parent model (version {parent.version})",
    )
    require_parents_data(ws, parent)
    # A deletion stays deleted: a run from a version older than a deletion (the original, or
    # one promoted back with --override) forgets that class again, or its model could never
    # pass the gate, which holds every version that still classifies a deleted class. So does
    # a run from a version asked to forget a class it did not (promoted with --override).
    done = deletions_done(registry_for(ws).list_versions())
    again = sorted((set(done) | set(parent.forgotten_classes)) - set(parent.deleted_classes) - set(new_classes))
    all_forgotten = tuple(sorted(set(new_classes) | set(parent.forgotten_classes) | set(again)))
    if again:
        names = [data.class_names[c] for c in again]
        try:
            check_forget_classes(all_forgotten, data.num_classes, data.class_names)
        except UnlearningInputError as err:
            raise UnlearningInputError(f"{err} (counting {names}, which were to stay forgotten)") from None
        get_run_logger().info(
            "also forgetting %s again: version %s still classifies them, though promoted version(s) %s deleted "
            "them or its lineage asked to forget them",
            names,
            parent.version,
            sorted({v for c in again for v in done.get(c, [])}),
        )
    retain_path = write_retain_subset(ws, manifest, all_forgotten, data.num_classes)
    prepared = ws.prepared_dir.relative_to(ws.root).as_posix()
    mismatches = data_versioning.verify(ws.root, [prepared])
    report = validate_splits(
        manifest,
        read_manifest(retain_path),
        num_classes=data.num_classes,
        forget_classes=all_forgotten,
        min_per_class=ws.params.data.min_per_class,
        extra_failures=mismatches,
        data=data,
    )
    create_markdown_artifact(
        key="data-validation", markdown=report.to_markdown(), description="Great Expectations result"
    )
    # Data that is not what dvc.lock records (a manifest edited or cut short) is got back from DVC.
    restore = f"{prepared} is not what dvc.lock records: {how_to_restore(ws, force=True)}"
    require_valid(report, restore if mismatches else None)
    get_run_logger().info("data valid: %d expectations passed; forgetting %s", report.evaluated, list(new_classes))
    return ValidatedRequest(
        sorted({*new_classes, *again}),
        list(all_forgotten),
        list(data.class_names),
        retain_path,
        report.evaluated,
        forgotten_again=again,
    )


@task(name="version-data", cache_policy=NO_CACHE, **IO_RETRIES)
def version_data(ws: Workspace, retain_subset: Path) -> dict[str, str]:
    """DVC-track the retain subset, push to the remote, and return the data digests used."""
    retain_md5 = data_versioning.track(ws.root, retain_subset)
    # The remote can change between runs (UNSIR_DVC_REMOTE): a shared store for a team.
    data_versioning.use_remote(ws.root, ws.params.paths.dvc_remote, ws.params.paths.dvc_remote_endpoint)
    data_versioning.push(ws.root)
    recorded = data_versioning.recorded_digests(ws.root)
    relative = str(retain_subset.relative_to(ws.root))
    digests = {k: v for k, v in recorded.items() if k.startswith(str(ws.prepared_dir.relative_to(ws.root)))}
    digests[relative] = retain_md5
    get_run_logger().info("data versioned with DVC: %s", digests)
    return digests
