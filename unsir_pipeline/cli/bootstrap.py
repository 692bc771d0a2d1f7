"""First run on a new machine: version the embedded data, train the original model and
register it as the champion. Safe to run again: an existing champion is kept."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from unsir.checkpoint import load_checkpoint
from unsir.data import TORCHVISION_LAYOUT
from unsir.splits import select
from unsir_pipeline.adapters import data_versioning
from unsir_pipeline.adapters.prepared_data import load_prepared, recorded_prepared_path
from unsir_pipeline.adapters.provenance import git_commit
from unsir_pipeline.adapters.registry import (
    RegistryError,
    VersionInfo,
    VersionNotReady,
    existing_registry,
    registry_for,
)
from unsir_pipeline.cli.progress import Progress, relay
from unsir_pipeline.governance.promotion import DATA_DIGESTS_TAG, FORGOTTEN_TAG
from unsir_pipeline.governance.trail import require_registry_not_lost
from unsir_pipeline.settings.config import ORIGINAL_ALIAS, ConfigError
from unsir_pipeline.settings.workspace import Workspace


@dataclass(frozen=True)
class BootstrapResult:
    version: int
    created: bool
    test_acc: float | None = None


def bootstrap(
    ws: Workspace, progress: Progress | None = None, before_training: Callable[[], None] | None = None
) -> BootstrapResult:
    """``progress`` (off by default) announces each step; the training stage's epochs reach
    it from DVC's child process through :func:`unsir_pipeline.cli.progress.relay`.
    ``before_training`` runs once the data is prepared and its splits valid, before the original
    is trained: a caller's own check of the data (``unsir forget``'s classes) fails there."""
    progress = progress or Progress("bootstrap", enabled=False)
    # Opening a SQLite registry creates its database: a bootstrap refused below leaves none.
    registry = existing_registry(ws)
    champion = ws.params.registry.champion_alias
    # A version that is not READY is no model (a failed registration left it, and its deletion
    # failed too), and `unsir promote` refuses it: with no READY version the original is
    # registered afresh, which deletes a failed try's version (its idempotency key is this one's).
    versions = registry.list_versions() if registry is not None and registry.has_model() else []
    if registry is not None and any(v.ready for v in versions):
        try:
            version = registry.resolve_alias(champion)
        except RegistryError as err:
            raise RegistryError(
                f"model {ws.params.registry.model_name!r} has versions but no {champion!r} alias; "
                f"choose one with `unsir promote VERSION --reason ...`"
            ) from err
        _restore_original_alias(registry)
        _require_ready_champion(champion, version, versions)
        return BootstrapResult(version, created=False)

    # An empty registry whose versions the audit trail records was lost: a new original would
    # bring every deleted class back.
    require_registry_not_lost(ws)
    _refuse_overrides_dvc_cannot_see(ws)
    _require_data_root(ws)
    registry = registry_for(ws)
    progress.step("[1/4] initialise DVC")
    data_versioning.ensure_repo(ws.root, ws.params.paths.dvc_remote, ws.params.paths.dvc_remote_endpoint)
    progress.step(
        f"[2/4] dvc repro train: prepare {ws.params.data.name} and validate its splits, train "
        f"{ws.params.model.arch} for {ws.params.model.train.epochs} epochs"
    )
    with relay(progress):
        data_versioning.repro(ws.root, ["prepare"], force=_reads_untracked_source(ws))
        _require_valid_splits(ws)
        if before_training is not None:
            before_training()
        data_versioning.repro(ws.root, ["train"])
    progress.step("[3/4] dvc push")
    data_versioning.push(ws.root)
    train_report = json.loads((ws.reports_dir / "train.json").read_text())
    timing = ws.reports_dir / "train_timing.json"
    train_s = json.loads(timing.read_text())["train_s"] if timing.is_file() else float("nan")
    recorded = data_versioning.recorded_digests(ws.root)

    progress.step("[4/4] register the original model")
    _, card = load_checkpoint(ws.original_model_dir)
    data, manifest = load_prepared(ws)
    # Raw [0, 1] images: the served model normalises them itself (serving_model.py).
    test_images, _ = select(data, manifest[manifest["split"] == "test"].head(2))
    input_example = test_images.numpy()
    tags = {
        FORGOTTEN_TAG: "[]",
        "origin": "bootstrap",
        "params_digest": ws.params.digest(),
        DATA_DIGESTS_TAG: json.dumps(recorded, sort_keys=True),
        "git_commit": git_commit(ws.root),
    }
    with registry.start_run(run_name="bootstrap", tags={"git_commit": tags["git_commit"]}) as run_id:
        registry.log_params({"arch": card.spec.arch, "params_digest": ws.params.digest(), "dataset": data.name})
        registry.log_metrics({"test_acc": train_report["test_acc"], "train_s": train_s})
        version = registry.register_checkpoint(
            ws.original_model_dir,
            input_example=input_example,
            tags={**tags, "mlflow_run_id": run_id},
            idempotency_key=f"bootstrap-{ws.params.digest()}",
            alias=champion,
        )
    # The original model keeps an alias of its own: a demo or an audit can always start from it.
    registry.set_alias(ORIGINAL_ALIAS, version)
    return BootstrapResult(version, created=True, test_acc=train_report["test_acc"])


def _require_ready_champion(alias: str, version: int, versions: list[VersionInfo]) -> None:
    """A champion alias moved (in MLflow) onto a version whose registration failed names no
    model: bootstrapped, but with nothing to serve or forget from. Registering an original
    would not mend it; moving the alias to a READY version does."""
    info = next(v for v in versions if v.version == version)
    if not info.ready:
        raise VersionNotReady(
            f"already bootstrapped, but the {alias!r} alias names version {version}, which is {info.status}, not "
            "READY (its registration failed or never finished): there is no model to serve or forget from; move "
            f"the alias to a READY version ({[v.version for v in versions if v.ready]}; `unsir models` lists them) "
            "with `unsir promote VERSION --reason ...` (with --override where it would bring back a forgotten class)"
        )


def _restore_original_alias(registry) -> None:
    """A bootstrap stopped between registering the original (as champion) and aliasing it
    ``original`` leaves a registry a rerun calls bootstrapped: the rerun sets the alias, which
    ``unsir forget --from original`` needs."""
    versions = registry.list_versions()
    if any(ORIGINAL_ALIAS in v.aliases for v in versions):
        return
    originals = [v.version for v in versions if v.tags.get("origin") == "bootstrap"]
    if originals:
        registry.set_alias(ORIGINAL_ALIAS, min(originals))


def _refuse_overrides_dvc_cannot_see(ws: Workspace) -> None:
    """``dvc repro`` builds the data and the original from params.yaml alone: a ``--set`` (or
    environment) value of a key its stages read would not reach them, yet the version's
    parameters digest would claim it. Refused before anything is built."""
    in_file = Workspace.load(ws.root).params
    keys = [key for stage in ("prepare", "train") for key in data_versioning.stage_param_keys(ws.root, stage)]
    differing = [key for key in dict.fromkeys(keys) if ws.params.value(key) != in_file.value(key)]
    if differing:
        found = "; ".join(
            f"{key} is {ws.params.value(key)!r} here but {in_file.value(key)!r} in params.yaml" for key in differing
        )
        raise ConfigError(
            "`unsir bootstrap` builds the data and the original model with `dvc repro`, which reads "
            f"params.yaml only: {found}. Write the value into params.yaml instead"
        )


def _require_data_root(ws: Workspace) -> None:
    """A ``data.root`` that is no directory would fail ``dvc repro prepare`` inside the stage,
    after DVC's start; refused before it, unless ``dvc.lock`` records the prepared data (a clone
    pulls it and never reads the files)."""
    root, name = ws.params.data.root, ws.params.data.name
    reads_root = name == "imagefolder" or name in TORCHVISION_LAYOUT
    if root is None or not reads_root or ws.path(root).is_dir() or recorded_prepared_path(ws) is not None:
        return
    expected = (
        "an image folder, root/<class>/<image>"
        if name == "imagefolder"
        else f"the directory that holds {name!r}'s files: {TORCHVISION_LAYOUT[name]}"
    )
    raise ConfigError(f"data.root {root!r} ({ws.path(root)}) is not a directory; expected {expected}")


def _reads_untracked_source(ws: Workspace) -> bool:
    """Whether ``prepare`` reads files at ``data.root`` that are on this machine. DVC tracks the
    key, not the files: an image folder given more images (after a bootstrap that its
    validation refused, say) would otherwise be skipped as up to date, or its earlier
    ``data/prepared`` restored from DVC's run cache. Rebuilt, the unchanged files give the same
    bytes, so the training stage is still skipped; without the files (a clone that pulls
    ``data/prepared``) the recorded output is kept."""
    root = ws.params.data.root
    return root is not None and ws.path(root).exists()


def _require_valid_splits(ws: Workspace) -> None:
    """The split manifest passes the expectations every forget checks (a class too rare in a
    split, say), before a model is trained and registered that no forget could start from."""
    # Great Expectations takes ~1.5 s to import: only a bootstrap that trains pays for it.
    from unsir_pipeline.adapters.validation import require_valid, validate_manifest

    data, manifest = load_prepared(ws)
    require_valid(
        validate_manifest(manifest, num_classes=data.num_classes, min_per_class=ws.params.data.min_per_class, data=data)
    )
