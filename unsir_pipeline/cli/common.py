"""What the commands share: the project's workspace (``--project``, ``--set``), who asks
(``--by``, ``--reason``), the output (``--json`` or text) and progress lines, the model version a
``--from`` or ``--alias`` names, and class names for listings."""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path

from unsir_pipeline.cli.errors import UsageError


def progress_lines(args):
    from unsir_pipeline.cli.progress import Progress, wanted

    return Progress(args.command, wanted(quiet=getattr(args, "json", False)))


def emit(args, payload: dict, text: str) -> None:
    """One JSON object with --json, else the text."""
    print(json.dumps(payload, default=str) if getattr(args, "json", False) else text)


def acting_user(args, reason: str | None = None) -> str:
    """``--by`` (default: the user name) and ``--reason`` as the audit trail will hold them,
    checked before anything starts, with the rules the governance layer applies again."""
    from unsir_pipeline.governance.trail import require_recordable

    by = args.by if args.by is not None else getpass.getuser()
    require_recordable(by, reason, by_name="--by", reason_name="--reason")
    return by


def require_model_ref(ws, ref: str, option: str = "--from") -> int:
    """The version an alias or version number names; exit 2 naming the ones that exist."""
    from unsir_pipeline.adapters.registry import registry_for

    if not ref.strip():
        raise UsageError(f"{option} {ref!r}: expected a version number or an alias (e.g. original, champion)")
    registry = registry_for(ws)
    name = ws.params.registry.model_name
    if not registry.has_model():
        raise UsageError(f"{option} {ref}: model {name!r} is not registered yet (run `unsir bootstrap`)")
    versions = registry.list_versions()
    if ref.isascii() and ref.isdigit():  # "²" is a digit to str.isdigit, not a version
        if int(ref) not in {v.version for v in versions}:
            raise UsageError(
                f"{option} {ref}: model {name!r} has no version {ref}; its versions are {[v.version for v in versions]}"
            )
        return int(ref)
    aliases = {alias: v.version for v in versions for alias in v.aliases}
    if ref not in aliases:
        raise UsageError(f"{option} {ref!r}: model {name!r} has no alias {ref!r}; its aliases are {sorted(aliases)}")
    return aliases[ref]


def load_workspace(project: Path, args):
    from unsir_pipeline.settings.workspace import Workspace

    return Workspace.load(project, tuple(args.overrides))


def warn_if_the_promotion_lock_is_local(ws) -> None:
    """Once per command that may promote, before it does."""
    from unsir_pipeline.governance.locks import machine_local_promotion_lock

    warning = machine_local_promotion_lock(ws)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def refuse_writing_read_only_state(ws, would: str) -> None:
    """Refuse (``StateWriteRefused``, exit 2) a command that ``would`` write the request store,
    the trail and a SQLite registry, where this user may not write one of them (an auditor's
    read-only copy or mount, `chmod a-w state/*.sqlite`): before anything is written. The
    governance functions refuse so too; here the refusal also says which commands to run instead."""
    from unsir_pipeline.governance.stores import require_writable_state

    require_writable_state(
        ws,
        would,
        instead="run it where the project's state may be written; the commands that only read (`audit verify`, "
        "`request list`) read this copy as it is",
    )


def class_names_if_prepared(ws) -> tuple[str, ...] | None:
    """The prepared data set's class names, or None where it is not on disk (a clone that has not
    pulled it): listings then show class indices."""
    from unsir_pipeline.adapters.data_versioning import DataVersioningError
    from unsir_pipeline.adapters.prepared_data import PreparedDataDamaged, PreparedDataMissing, prepared_class_names

    try:
        return prepared_class_names(ws)
    except (PreparedDataMissing, DataVersioningError):  # not prepared here, or no DVC project at all
        return None
    except PreparedDataDamaged as err:  # the listing still answers; the damage is not hidden
        print(f"warning: {err}; classes are shown by index", file=sys.stderr)
        return None


def name_classes(classes: list[int], class_names: tuple[str, ...] | None) -> list[str] | None:
    """``classes`` by name ("cat"; an image folder's index 1 reads as its folder named "1"), or None."""
    if class_names is None or not all(0 <= c < len(class_names) for c in classes):
        return None
    return [class_names[c] for c in classes]
