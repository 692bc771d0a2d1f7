"""``unsir audit`` and ``state`` (docs/audit.md): the audit trail verified, signed and shown, a
batch's evidence report written; the state database brought to this version's schema."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from unsir_pipeline.cli.common import emit, load_workspace
from unsir_pipeline.cli.errors import EXIT_FAILED, UsageError


def cmd_audit(project: Path, args) -> int:
    # Showing and signing read the trail alone; verifying, a request's history and the evidence
    # report also read the registry, so only they import ``auditor`` (and with it MLflow).
    from unsir_pipeline.governance import stores

    ws = load_workspace(project, args)
    if args.audit_command == "verify":  # before audit_log(), which would refuse a deleted trail
        from unsir_pipeline.governance.auditor import verify_trail

        report = verify_trail(ws)
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": report.ok,
                        "records": report.records,
                        "trail_exists": report.trail_exists,
                        "chain_ok": report.chain.ok,
                        "first_bad_seq": report.chain.first_bad_seq,
                        "chain_problem": report.chain.problem,
                        "later_chain_problems": [
                            {"seq": seq, "problem": problem} for seq, problem in report.chain.later_problems
                        ],
                        "signed": report.head_signed,
                        "signature_verified": report.chain.signed,
                        "problems": list(report.problems),
                        "warnings": list(report.warnings),
                    }
                )
            )
            return 0 if report.ok else EXIT_FAILED
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if report.ok and not report.trail_exists:
            from unsir_pipeline.adapters.state_store import StateDatabase

            trail = StateDatabase(stores.state_target(ws, ws.params.requests.audit_log)).shown
            print(
                f"nothing recorded yet: no audit trail {trail}, and the registry holds only the original that "
                "`unsir bootstrap` registered"
                if report.registered
                else f"nothing to verify yet: no model is registered and nothing recorded (no audit trail {trail}); "
                "`unsir bootstrap` registers the original model"
            )
            return 0
        if report.ok:
            signed = ", head anchor signed" if report.chain.signed else ""
            agree = "request store and registry agree" if report.registry_checked else "request store agrees"
            print(
                f"audit trail intact: {report.records} records, hash chain and head anchor verified{signed}; "
                f"{agree} with it"
            )
            return 0
        if not report.chain.ok:
            print(
                f"error: audit trail TAMPERED at record {report.chain.first_bad_seq}: {report.chain.problem}",
                file=sys.stderr,
            )
            for seq, problem in report.chain.later_problems:
                print(f"error: audit trail TAMPERED at record {seq} too: {problem}", file=sys.stderr)
            print(
                f"the other records of the {report.records} are intact and linked; appends go on after a "
                "broken record (deletions are not held up), and this check keeps failing until it is resolved",
                file=sys.stderr,
            )
        for problem in report.problems:
            print(f"error: audit evidence disagrees: {problem}", file=sys.stderr)
        return EXIT_FAILED
    if args.audit_command == "sign-head":
        result = stores.audit_log(ws).sign_head()
        emit(
            args,
            {"signed": True, "records": result.records},
            f"head anchor of {result.records} records signed with the audit key",
        )
        return 0
    if args.audit_command == "show":
        history: dict[str, Any]
        if args.request is not None and not args.request.strip():
            raise UsageError(f"--request {args.request!r}: expected a request id (see `unsir request list`)")
        if args.request:
            from unsir_pipeline.governance.auditor import request_history

            history = request_history(ws, args.request)
        else:
            log = stores.existing_audit_log(ws)
            history = {"records": [r.to_dict() for r in log.records()] if log is not None else []}
        if args.json:
            print(json.dumps(history))
            return 0
        if args.request:
            print(
                f"request {args.request}: status {history['request']['status']}, version "
                f"{history['request']['model_version'] or '-'}"
                f" ({history['production']})"
            )
        for rec in history["records"]:
            print(f"{rec['seq']:>5}  {rec['ts']}  {rec['event']:<20}{rec['actor']:<16}{_brief(rec['payload'])}")
        return 0
    from unsir_pipeline.governance.auditor import write_batch_report

    name = f"evidence-{args.batch_id}.html"
    if args.out is not None and not args.out.strip():  # an empty value is no request for the default
        raise UsageError(f"--out {args.out!r}: expected a file or directory to write the report to")
    out = Path(args.out) if args.out else ws.reports_dir / name
    # Like cp: a directory gets the report under its default name; so does one not made yet
    # that the trailing slash names as a directory (write_batch_report makes it).
    if out.is_dir() or (args.out or "").endswith(("/", os.sep)):
        out = out / name
    blocking = next((parent for parent in out.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:  # mkdir would say only "[Errno 17] File exists", after the trail is read
        raise UsageError(f"--out {args.out}: {blocking} is a file; expected a directory to write the report in")
    # The directory the report goes in, or the nearest one there to make it in. On a read-only
    # copy (an auditor's) the write failed only after the trail was read and the report built.
    writes_in = next(parent for parent in out.parents if parent.exists())
    if not os.access(writes_in, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UsageError(
            f"cannot write the report to {out}: this user may not write {out if out.exists() else writes_in} "
            "(a read-only copy or mount?); expected a writable place: choose one with --out PATH"
        )
    write_batch_report(ws, args.batch_id, out)
    emit(args, {"batch_id": args.batch_id, "report": str(out)}, f"wrote {out}")
    return 0


def cmd_state(project: Path, args) -> int:
    from unsir_pipeline.governance.stores import migrate_state

    migrations = migrate_state(load_workspace(project, args), dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "stores": [m.to_dict() for m in migrations]}))
        return 0
    for m in migrations:
        if m.found is None:
            done = f"not created yet (the first command that writes creates it at {m.head})"
        elif not m.changes:
            done = f"already current ({m.head})"
        else:
            done = f"{'would migrate' if args.dry_run else 'migrated'} {m.found} -> {m.head}"
        print(f"{m.store} ({m.database}): {done}")
    return 0


def _brief(payload: dict) -> str:
    """One line of what a record holds: the evidence of a run (its figures beside the parent's
    and the retrained reference's, the validation check, whether a forget-class sample was read)
    and the versions it names (the parent, the champion it replaced), beside its decision."""
    keys = (
        "model_version",
        "parent_version",
        "method",
        "previous_champion",
        "override",
        "classes",
        "promoted",
        "expectations_passed",
        "error",
        "refusal",
        "reason",
        "withdrawal",
    )
    parts = [f"{k}={payload[k]}" for k in keys if k in payload]
    metrics = payload.get("metrics")
    if isinstance(metrics, dict):
        parts.append(_evidence_brief(metrics, payload))
    return ", ".join(part for part in parts if part)


def _evidence_brief(m: dict, payload: dict) -> str:
    """An unlearning_metrics record's evidence in one line."""

    def beside(name: str, digits: str, original: bool = False) -> str | None:
        if name not in m:
            return None
        others = [("before", f"original_{name}")] if original else []
        # A record that registered the retrained model holds UNSIR's figures under unsir_.
        others += [("UNSIR's, not registered", f"unsir_{name}"), ("retrained", f"reference_{name}")]
        shown = [f"{label} {m[key]:{digits}}" for label, key in others if key in m]
        return f"{name}={m[name]:{digits}}" + (f" ({', '.join(shown)})" if shown else "")

    exact = payload.get("method") == "retrain"
    parts = [
        "figures of the registered retrained model" if exact else None,
        beside("forget_acc", ".4f", original=True),
        beside("mia", ".4f"),
        beside("relearn_steps", ".0f"),
    ]
    if "verified" in payload:
        parts.append(f"verified on {payload.get('verification_split', 'val')}={payload['verified']}")
    if "reads_forget_train" in payload:
        parts.append(f"reads_forget_train={payload['reads_forget_train']}")
    return ", ".join(part for part in parts if part)
