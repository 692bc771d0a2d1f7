"""``unsir serve`` (docs/serving.md): a registered model served over HTTP on 127.0.0.1, following
its alias, with its flags checked before the scoring server starts."""

from __future__ import annotations

import math
from pathlib import Path

from unsir_pipeline.cli.common import load_workspace, require_model_ref
from unsir_pipeline.cli.errors import UsageError


def cmd_serve(project: Path, args) -> int:
    from unsir_pipeline.adapters import serving

    ws = load_workspace(project, args)
    alias = ws.params.registry.champion_alias if args.alias is None else args.alias
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: expected 0 (any free port) to 65535")
    for option, seconds in (("--poll", args.poll), ("--startup-timeout", args.startup_timeout)):
        if not 0 < seconds < math.inf:  # nan fails it too
            raise UsageError(f"{option} {seconds}: expected a positive number of seconds")
    if not alias.strip():  # an empty value is no request for the default
        raise UsageError(f"--alias {alias!r}: expected an alias name such as champion")
    if alias.isdigit():
        raise UsageError(f"--alias {alias}: expected an alias name such as champion, not a version number")
    require_model_ref(ws, alias, option="--alias")
    from unsir_pipeline.governance.promotion import deletions_undone_by, describe_undone

    def concerns(version: int) -> list[str]:
        # The alias may have been moved around the gate; and a version keeps its model code.
        undone = deletions_undone_by(supervisor.registry.list_versions(), version)
        found = [f"serving {describe_undone(version, undone)}: it answers for deleted classes"] if undone else []
        if not supervisor.registry.model_code_is_current(version):
            found.append(
                f"version {version} runs the model code it was registered with, not this checkout's "
                "(unsir_pipeline/adapters/serving_model.py): its refusals of bad images can say less than "
                "docs/serving.md shows; the request body is checked the same for every version"
            )
        return found

    if args.port and not serving.port_is_free(args.port):
        raise UsageError(
            f"--port {args.port}: already in use on {serving.HOST}; choose another, or 0 for any free port"
        )
    port = args.port or serving.free_port()
    supervisor = serving.Supervisor(
        ws,
        alias,
        port,
        poll_s=args.poll,
        startup_s=args.startup_timeout,
        report=serving.printer(args.json),
        concerns=concerns,
    )
    supervisor.follow()
    return 0
