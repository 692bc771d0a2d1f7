"""``unsir request``, ``batch`` and ``review`` (docs/requests.md): deletion requests filed, listed,
withdrawn and retried; the batch that forgets the pending ones, now or on a schedule; the versions
its promotion gate held for a reviewer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Imports only the standard library when it loads: light enough for every command.
from unsir_pipeline.adapters import orchestration
from unsir_pipeline.cli.common import (
    acting_user,
    class_names_if_prepared,
    load_workspace,
    name_classes,
    progress_lines,
    refuse_writing_read_only_state,
    warn_if_the_promotion_lock_is_local,
)
from unsir_pipeline.cli.errors import EXIT_USAGE, UsageError
from unsir_pipeline.cli.forget import format_result


def _shown(request, run_alive: bool | None, unknown_why: str | None = None) -> dict:
    """``request`` as --json shows it: a running one says whether its batch or forget run is
    alive (``run_alive``: null where that cannot be told, and ``run_alive_unknown`` saying why
    where the Prefect server refused or did not answer)."""
    shown = request.to_dict()
    if request.status == "running":
        shown["run_alive"] = run_alive
        if unknown_why is not None:
            shown["run_alive_unknown"] = unknown_why
    return shown


def _stopped_run_note(request, run_alive: bool | None, unknown_why: str | None = None) -> str | None:
    """For a request left ``running`` by a batch or forget run that no longer runs: what happened
    and what puts it back in the queue; where the Prefect server that would tell refused or did
    not answer, that it is unknown, and why."""
    if request.status == "running" and unknown_why is not None:
        return f"whether a batch or forget run is running it is unknown: {unknown_why}"
    if request.status != "running" or run_alive is not False:
        return None
    return (
        f"no batch or forget run is running it now ({request.batch_id} stopped before finishing); the next "
        "`unsir batch run` puts it back in the queue"
    )


def _run_alive(ws, requests: list) -> tuple[bool | None, str | None]:
    """Whether the batch lock is held now, asked only where a request is ``running``; with a
    shared state database, why that is unknown where the Prefect server refused or did not
    answer (a listing still answers, saying so: nothing it shows needs the server)."""
    if not any(r.status == "running" for r in requests):
        return None, None
    from unsir_pipeline.governance.locks import batch_lock_held

    try:
        return batch_lock_held(ws), None
    except orchestration.GlobalLockUnreadable as err:
        return None, str(err)


def _print_requests(
    requests: list, as_json: bool, run_alive: bool | None = None, unknown_why: str | None = None
) -> None:
    if as_json:
        print(json.dumps([_shown(r, run_alive, unknown_why) for r in requests]))
        return
    if not requests:
        print("no requests")
        return
    print(f"{'id':<18}{'status':<10}{'classes':<14}{'version':>8}  {'requester':<16}created")
    for r in requests:
        print(
            f"{r.id:<18}{r.status:<10}{','.join(r.class_names) or '-':<14}{r.model_version or '-':>8}  "
            f"{r.requester:<16}{r.created_at}"
        )
        note = _stopped_run_note(r, run_alive, unknown_why)
        if note:
            print(f"{'':<18}{note}")
        if r.error:
            # A request a batch holds or has done keeps an earlier attempt's failure: say so. Any
            # other was given its error (a failed batch, a rejection, a retry, a withdrawal) by
            # the change that stamped updated_at: say when, since a pending one is tried again.
            known = "an earlier attempt failed: " if r.status in ("running", "done") else f"at {r.updated_at}: "
            print(f"{'':<18}{known}{r.error}")


def _requested_classes(args) -> list[str]:
    if args.classes and args.classes_flag:
        raise UsageError(
            f"classes given twice, as arguments {args.classes} and with --classes {args.classes_flag}; "
            "expected one of the two"
        )
    if not (args.classes or args.classes_flag):
        raise UsageError("no class given: expected the classes to forget, e.g. `unsir request add 3 --by alice ...`")
    return list(args.classes or args.classes_flag)


def cmd_request(project: Path, args) -> int:
    # Listing and showing read the store alone; only filing needs the registry (MLflow).
    from unsir_pipeline.governance import stores

    ws = load_workspace(project, args)
    if args.request_command == "add":
        from unsir_pipeline.governance import intake
        from unsir_pipeline.governance.deletion_requests import TEXT_LIMITS, check_request_text

        # Named as typed (--by, --reason), as every command that records who and why names them.
        check_request_text("--by", args.requester, limit=TEXT_LIMITS["requester"])
        check_request_text("--reason", args.reason, limit=TEXT_LIMITS["reason"], allow_empty=True)
        request = intake.file_request(ws, _requested_classes(args), args.requester, args.reason)
        print(
            json.dumps(request.to_dict())
            if args.json
            else f"request {request.id} pending: forget {list(request.class_names)}"
        )
    elif args.request_command == "withdraw":
        from unsir_pipeline.governance import intake

        request = intake.withdraw_request(ws, args.id, acting_user(args, args.reason), args.reason)
        print(json.dumps(request.to_dict()) if args.json else f"request {request.id} {request.error}")
    elif args.request_command == "retry":
        from unsir_pipeline.governance import intake

        retried = intake.retry_requests(ws, args.id, acting_user(args, args.reason), args.reason)
        print(
            json.dumps([r.to_dict() for r in retried])
            if args.json
            else "\n".join(f"request {r.id} pending again: {r.error}" for r in retried)
        )
    elif args.request_command == "list":
        store = stores.existing_request_store(ws)
        listed = store.list(args.status) if store is not None else []
        _print_requests(listed, args.json, *_run_alive(ws, listed))
    else:
        (request,) = stores.stored_requests(ws, [args.id])
        run_alive, unknown_why = _run_alive(ws, [request])
        note = _stopped_run_note(request, run_alive, unknown_why)
        print(
            json.dumps(_shown(request, run_alive, unknown_why))
            if args.json
            else "\n".join(f"{k:<14}{v}" for k, v in [*request.to_dict().items(), *([("note", note)] if note else [])])
        )
    return 0


def _require_a_ready_champion(ws) -> int | None:
    """`batch run` with requests to claim: the champion the batch forgets from is READY, checked
    as `unsir forget` checks its parent, before Prefect's server starts (half a minute) and the
    flow claims the requests; the flow checks it again, for a run without this command. A model
    not registered, or without the alias, is left for the flow to name. Returns the version made
    champion by finishing a killed promotion first (the flow then finds none to say so), or None."""
    from unsir_pipeline.adapters.registry import RegistryError, existing_registry
    from unsir_pipeline.governance.promotion import finish_interrupted_promotion

    registry = existing_registry(ws)
    if registry is None or not registry.has_model():
        return None
    finished = finish_interrupted_promotion(ws)  # the champion a killed promotion was moving, as the flow does
    try:
        champion = registry.resolve_alias(ws.params.registry.champion_alias)
    except RegistryError:
        return finished
    registry.require_ready(champion)
    return finished


def _finish_a_killed_promotion_only(ws, as_json: bool) -> int:
    """`batch run` when all a batch would do is finish a promotion killed before moving the
    champion: the flow's trail check, then the promotion; printed as the flow's result."""
    from unsir_pipeline.governance import trail
    from unsir_pipeline.governance.promotion import finish_interrupted_promotion

    trail.require_trail_the_registry_anchored(ws, unreachable_raises=True)
    finished = finish_interrupted_promotion(ws)
    result: dict = {"status": "empty", **({"finished_promotion": finished} if finished is not None else {})}
    print(json.dumps(result) if as_json else format_batch_result(result))
    return 0


def cmd_batch(project: Path, args) -> int:
    ws = load_workspace(project, args)
    # The server as Prefect reads it: the environment, else the active profile of PREFECT_HOME's
    # profiles.toml (`prefect config set`). Refused before the flow's imports (seconds).
    if args.batch_command == "serve" and orchestration.prefect_api_url() is None:
        profiles = orchestration.prefect_profiles_path()
        print(
            "error: `unsir batch serve` needs a Prefect server (ephemeral mode cannot run schedules): run "
            "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api in the environment, or in "
            f"the active profile of {profiles} (`PREFECT_HOME={profiles.parent} prefect config set "
            "PREFECT_API_URL=...`)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.batch_command == "run":
        from unsir_pipeline.governance import claims, stores, trail

        # An empty queue is answered without starting Prefect (seconds, not half a minute), after
        # the same trail check a batch makes first, so a nightly run still flags a tampered trail.
        # On a read-only copy (an auditor's) the check reads the state as it is, writing nothing.
        work = claims.work_for_a_batch(ws)
        if work == claims.NOTHING:
            trail.require_trail_the_registry_anchored(ws, read_only=stores.state_read_only(ws))
            result: dict = {"status": "empty"}
            print(json.dumps(result) if args.json else "batch empty: nothing pending")
            return 0
        if work == claims.PROMOTION_ONLY:
            # Before the lock's warning: one line.
            refuse_writing_read_only_state(
                ws,
                "`unsir batch run` would finish a promotion stopped before it moved the champion, which writes "
                "the registry and the audit trail",
            )
        warn_if_the_promotion_lock_is_local(ws)
        if work == claims.PROMOTION_ONLY:
            # A killed promotion and nothing else: finished with the registry and the trail, as
            # the flow would, without the device, the prepared data or Prefect (half a minute).
            return _finish_a_killed_promotion_only(ws, args.json)
        ws.device()  # one this machine has, before the flow claims any request
        from unsir_pipeline.adapters.prepared_data import require_prepared_as_recorded

        require_prepared_as_recorded(ws)
        # The trail check the flow makes first, made before Prefect's server starts (half a
        # minute): a damaged trail or registry file is refused at once. A read-only copy is named
        # as such before it, where the trail check would only say the trail cannot be written.
        # A server that does not answer is named here: the champion check below would wait
        # through the registry's retries a second time to say the same.
        orchestration.require_writable_prefect_home()
        trail.require_trail_the_registry_anchored(ws, unreachable_raises=True)
        finished_promotion = _require_a_ready_champion(ws)
        server_ready = orchestration.start_prefect_server_early()
    # `batch run`: the flow and its tasks' imports (Great Expectations: seconds) load while
    # Prefect's temporary server starts.
    from unsir_pipeline.flows.deletion_batch import deletion_batch

    orchestration.remember_stops_prefect_catches()
    if args.batch_command == "serve":
        deletion_batch.serve(
            name="deletion-batch",
            cron=ws.params.requests.schedule,
            parameters={"project_dir": str(project), "overrides": list(args.overrides)},
        )
        return 0
    if not args.debug:
        orchestration.console_without_tracebacks()
    from unsir_pipeline.cli.progress import flow_steps

    progress = progress_lines(args)
    progress.step("starting the deletion-batch flow (Prefect)")
    server_ready()  # `batch run`: `batch serve` returned above
    # On a terminal Prefect's INFO lines are off (configure_prefect): these lines replace them.
    with flow_steps(progress):
        result = deletion_batch(project_dir=str(project), overrides=list(args.overrides))
    if finished_promotion is not None:  # finished here, before the flow: said as the flow's recorded versions are
        result["finished_promotion"] = finished_promotion
    print(json.dumps(result, default=float) if args.json else format_batch_result(result))
    return 0


def format_batch_result(result: dict) -> str:
    """What `unsir batch run` prints: the batch's requests and version, the run's table as
    `unsir forget` prints it, and the command that writes the batch's evidence report."""
    finished = (
        f"; finished promoting version {result['finished_promotion']}, which a stopped run left promoted "
        "but not yet champion"
        if result.get("finished_promotion") is not None
        else ""
    )
    if result["status"] != "done":
        line = f"batch {result['status']}: {result.get('reason', 'nothing pending')}{finished}"
        if result.get("recorded_versions"):  # a killed run's, no batch resumes (flows/deletion_batch.py)
            numbers = ", ".join(str(v) for v in result["recorded_versions"])
            plural = "s" if len(result["recorded_versions"]) > 1 else ""
            line += f"; recorded version{plural} {numbers}, which a stopped run registered without recording it"
        return line
    report = f"audit trail: `unsir audit report {result['batch_id']}`"
    if "metrics" not in result:
        return (
            f"batch {result['batch_id']}: requests done; their classes were already forgotten by version "
            f"{result['new_version']}{finished}\n{report}"
        )
    # The batch's records carry its id as batch_id, as a forget run's carry its audit_id.
    return (
        f"batch {result['batch_id']}: {len(result['request_ids'])} request(s) done with version "
        f"{result['new_version']}{finished}\n\n" + format_result({**result, "audit_id": result["batch_id"]})
    )


def cmd_review(project: Path, args) -> int:
    from unsir_pipeline.governance.decisions import versions_awaiting_review

    ws = load_workspace(project, args)
    waiting = versions_awaiting_review(ws)
    if args.json:
        print(json.dumps(waiting))
    elif not waiting:
        print("no version is waiting for review")
    else:
        class_names = class_names_if_prepared(ws)
        for v in waiting:
            forgotten = name_classes(v["forgotten_classes"], class_names) or v["forgotten_classes"]
            print(f"version {v['version']} (forgotten {forgotten}): {v['gate_reasons']}")
    return 0
