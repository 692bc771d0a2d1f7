"""``unsir models``, ``promote`` and ``reject``: the registered versions with their aliases and
lineage, and the champion alias moved, or a held version rejected, by a person (recorded)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from unsir_pipeline.cli.common import (
    acting_user,
    class_names_if_prepared,
    emit,
    load_workspace,
    name_classes,
    refuse_writing_read_only_state,
    warn_if_the_promotion_lock_is_local,
)
from unsir_pipeline.cli.errors import UsageError


def _require_version(ws, version: int) -> None:
    """Refuse a version number the registry does not have, naming the ones it has (exit 2)."""
    from unsir_pipeline.adapters.registry import registry_for

    registry = registry_for(ws)
    name = ws.params.registry.model_name
    if not registry.has_model():
        raise UsageError(f"model {name!r} has no version {version}: nothing is registered yet (run `unsir bootstrap`)")
    known = [v.version for v in registry.list_versions()]
    if version not in known:
        raise UsageError(f"model {name!r} has no version {version}; its versions are {known}")


def summarize_versions(listed, class_names: tuple[str, ...] | None = None) -> list[dict]:
    """Registered versions (``ModelRegistry.list_versions``) with aliases and lineage, oldest
    first (for `unsir models`); forgotten classes also by name, given the data set's."""
    from unsir_pipeline.governance.promotion import FORGOTTEN_TAG, VERIFIED_TAG

    return [
        {
            "version": v.version,
            "aliases": list(v.aliases),
            "created_at": v.created_at,
            "parent_version": v.tags.get("parent_version"),
            "forgotten_classes": (forgotten := json.loads(v.tags.get(FORGOTTEN_TAG, "[]"))),
            "forgotten_class_names": name_classes(forgotten, class_names),
            "verified_forgotten_classes": json.loads(v.tags.get(VERIFIED_TAG, "null") or "null"),
            "gate": v.tags.get("gate_decision"),
            "review_decision": v.tags.get("review_decision"),
            "status": v.status,
            "tags": v.tags,
        }
        for v in listed
    ]


def _gate_shown(version: dict) -> str:
    """The gate's decision, and a reviewer's rejection after it (a rejected version read "held");
    for a version whose registration failed or never finished, which no gate judged, its status."""
    if version["status"] != "READY":
        return version["status"]
    gate = version["gate"] or "-"
    return f"{gate} (rejected)" if version["review_decision"] == "rejected" else gate


def format_versions(versions: list[dict]) -> list[str]:
    """`unsir models`'s table: a header and a row per version, each column as wide as its
    widest value (nine forgotten classes, "promoted-by-override"), so the columns line up."""
    header = ("version", "aliases", "parent", "forgotten", "method", "gate", "created")
    rows = [
        (
            str(v["version"]),
            ",".join(v["aliases"]) or "-",
            str(v["parent_version"] or "-"),
            str(v["forgotten_class_names"] or v["forgotten_classes"]),
            v["tags"].get("method", "-"),
            _gate_shown(v),
            str(v["created_at"]),
        )
        for v in versions
    ]
    least = (7, 21, 6, 15, 8, 17, 0)  # as wide as this at the least, as before
    widths = [max(least[i], *(len(cells[i]) for cells in (header, *rows))) for i in range(len(header))]
    right = {0, 2}  # numbers: version and parent
    gaps = ("  ", " ", "  ", " ", " ", " ", "")

    def line(cells: tuple[str, ...]) -> str:
        return "".join(
            (cell.rjust(width) if i in right else cell.ljust(width)) + gap
            for i, (cell, width, gap) in enumerate(zip(cells, widths, gaps, strict=True))
        ).rstrip()

    return [line(header), *(line(cells) for cells in rows)]


def cmd_models(project: Path, args) -> int:
    from unsir_pipeline.adapters.registry import existing_registry
    from unsir_pipeline.governance.promotion import champion_problems

    ws = load_workspace(project, args)
    registry = existing_registry(ws)  # listing creates no registry database
    listed = registry.list_versions() if registry is not None else []
    versions = summarize_versions(listed, class_names_if_prepared(ws) if listed else None)
    if args.json:
        print(json.dumps(versions))
    elif not versions:
        print("no registered versions; run `unsir bootstrap`")
    else:
        print("\n".join(format_versions(versions)))
    # A champion that brings a deleted class back is said wherever versions are listed.
    problems, warnings = champion_problems(listed, ws.params.registry.champion_alias)
    for line in problems + warnings:
        print(f"warning: {line}", file=sys.stderr)
    return 0


def cmd_promote(project: Path, args) -> int:
    from unsir_pipeline.governance.decisions import promote

    ws = load_workspace(project, args)
    by = acting_user(args, args.reason)
    refuse_writing_read_only_state(  # before the lock's warning: one line
        ws,
        f"`unsir promote` would move the {ws.params.registry.champion_alias!r} to version {args.version}, which "
        "writes the registry and the audit trail",
    )
    # Before the registry is asked: the lock is local whether or not the registry answers.
    warn_if_the_promotion_lock_is_local(ws)
    _require_version(ws, args.version)
    overridden = promote(ws, args.version, by, args.reason, override=args.override)
    if not args.json:
        for problem in overridden:
            print(f"overridden: {problem}")
    emit(
        args,
        {
            "version": args.version,
            "alias": ws.params.registry.champion_alias,
            "by": by,
            "reason": args.reason,
            "overridden": list(overridden),
        },
        f"version {args.version} is now {ws.params.registry.champion_alias!r} (by {by}: {args.reason})",
    )
    return 0


def cmd_reject(project: Path, args) -> int:
    from unsir_pipeline.governance.decisions import reject

    ws = load_workspace(project, args)
    _require_version(ws, args.version)
    by = acting_user(args, args.reason)
    refuse_writing_read_only_state(
        ws,
        f"`unsir reject` would reject version {args.version}, which writes the registry, the request store and the "
        "audit trail",
    )
    rejection = reject(ws, args.version, by, args.reason)
    returned = rejection.returned
    emit(
        args,
        {
            "version": args.version,
            "rejected": True,
            "by": rejection.by,
            "reason": rejection.reason,
            "requests_pending_again": [r.id for r in returned],
            "recovered": rejection.recovered,
        },
        (
            f"version {args.version} rejected (by {rejection.by}: {rejection.reason}); "
            f"{len(returned)} request(s) back to pending"
            + (" (a stopped rejection, finished as its version's tags record it)" if rejection.recovered else "")
        ),
    )
    return 0
