"""The ``unsir`` command: bootstrap, forget, list and promote models, run DVC stages.

Errors print one line naming what was wrong and exit non-zero; ``--debug`` shows tracebacks.
Heavy imports (Prefect, MLflow, torch) happen after argument parsing, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unsir", description="Machine unlearning pipeline (UNSIR) with Prefect, MLflow, DVC and Great Expectations.")
    parser.add_argument("--project", default=".", help="project directory holding params.yaml (default: .)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. --set unlearn.seed=1 (repeatable; recorded with the run)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("bootstrap", help="prepare and version the data, train and register the first champion (idempotent)")
    p.add_argument("--json", action="store_true")

    p = commands.add_parser("forget", help="forget classes from the champion now and show before/after")
    p.add_argument("classes", nargs="+", help="class names or indices")
    p.add_argument("--from", dest="parent", default=None, metavar="ALIAS_OR_VERSION",
                   help="model to start from: an alias or a version number (default: the champion alias)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = commands.add_parser("models", help="registered versions, aliases and lineage")
    p.add_argument("--json", action="store_true")

    p = commands.add_parser("promote", help="point the champion alias at VERSION by hand")
    p.add_argument("version", type=int)
    p.add_argument("--reason", required=True)
    p.add_argument("--by", default=None, help="who promotes (default: the current user)")
    p.add_argument("--override", action="store_true",
                   help="promote a version that failed its gate or would bring back a forgotten class (recorded)")

    p = commands.add_parser("reject", help="reject a version held for review; its requests go back to pending")
    p.add_argument("version", type=int)
    p.add_argument("--reason", required=True)
    p.add_argument("--by", default=None, help="who rejects (default: the current user)")

    request = commands.add_parser("request", help="deletion requests").add_subparsers(dest="request_command", required=True)
    p = request.add_parser("add", help="file a deletion request (refused at once if invalid; the refusal is recorded)")
    p.add_argument("--classes", nargs="+", required=True, help="class names or indices")
    p.add_argument("--requester", required=True)
    p.add_argument("--reason", required=True)
    p.add_argument("--json", action="store_true")
    p = request.add_parser("list", help="requests, oldest first")
    p.add_argument("--status", default=None, choices=["pending", "running", "done", "failed", "rejected"])
    p.add_argument("--json", action="store_true")
    p = request.add_parser("show", help="one request")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")

    batch = commands.add_parser("batch", help="deletion batches").add_subparsers(dest="batch_command", required=True)
    p = batch.add_parser("run", help="forget every pending request now, in one unlearning run")
    p.add_argument("--json", action="store_true")
    batch.add_parser("serve", help="serve the batch on params.yaml's cron schedule (needs PREFECT_API_URL: a Prefect server)")

    review = commands.add_parser("review", help="versions held by the promotion gate").add_subparsers(dest="review_command", required=True)
    p = review.add_parser("list", help="versions waiting for a reviewer")
    p.add_argument("--json", action="store_true")

    audit = commands.add_parser("audit", help="the tamper-evident audit trail").add_subparsers(dest="audit_command", required=True)
    audit.add_parser("verify", help="check the hash chain, its anchors, the request store and the registry against it; non-zero exit naming what is wrong")
    audit.add_parser("sign-head", help="sign an intact trail's head with the audit key (UNSIR_AUDIT_KEY or UNSIR_AUDIT_KEY_FILE)")
    p = audit.add_parser("show", help="the trail, or one request's history from arrival to production")
    p.add_argument("--request", default=None, metavar="ID")
    p.add_argument("--json", action="store_true")
    p = audit.add_parser("report", help="write a self-contained HTML evidence report for a batch")
    p.add_argument("batch_id")
    p.add_argument("--out", default=None, help="output file (default: reports/evidence-<batch>.html)")

    p = commands.add_parser("stage", help="run one DVC stage (called by dvc repro)")
    p.add_argument("name", choices=["prepare", "train", "unlearn", "evaluate"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    project = Path(args.project).resolve()
    if not (project / "params.yaml").is_file():
        print(f"error: no params.yaml in {project}; run from the project directory or pass --project", file=sys.stderr)
        return EXIT_USAGE

    from unsir_pipeline.environment import configure

    configure(project)
    try:
        return COMMANDS[args.command](project, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line for people and scripts; --debug for the rest
        if args.debug:
            raise
        print(f"error: {_describe(err)}", file=sys.stderr)
        return EXIT_USAGE if _is_user_error(err) else EXIT_FAILED


def _describe(err: Exception) -> str:
    message = str(err).strip() or type(err).__name__
    first = message.splitlines()[0]
    rest = message.splitlines()[1:]
    # Validation failures list one failed expectation per line: keep them, they are the point.
    return first + ("".join(f"\n  {line}" for line in rest) if type(err).__name__ == "ValidationFailed" else "")


def _is_user_error(err: Exception) -> bool:
    from unsir.errors import UnlearningInputError
    from unsir_pipeline.config import ConfigError
    from unsir_pipeline.deletion_requests import RequestError

    return isinstance(err, (UnlearningInputError, ConfigError, RequestError))


def _workspace(project: Path, args):
    from unsir_pipeline.workspace import Workspace

    return Workspace.load(project, tuple(args.overrides))


def cmd_bootstrap(project: Path, args) -> int:
    from unsir_pipeline.bootstrap import bootstrap

    result = bootstrap(_workspace(project, args))
    if args.json:
        print(json.dumps({"version": result.version, "created": result.created, "test_acc": result.test_acc}))
    elif result.created:
        print(f"registered the original model as version {result.version} (champion), test accuracy {result.test_acc:.4f}")
    else:
        print(f"already bootstrapped: champion is version {result.version}")
    return 0


def cmd_forget(project: Path, args) -> int:
    ws = _workspace(project, args)
    from unsir_pipeline.bootstrap import bootstrap

    bootstrap(ws)  # the main job starts from a registered champion; a no-op when there is one
    from flows.unlearn import unlearn

    result = unlearn(forget_classes=list(args.classes), project_dir=str(project), overrides=list(args.overrides), parent=args.parent)
    if args.json:
        print(json.dumps(result, default=float))
    else:
        print(format_result(result))
    return 0


def format_result(result: dict) -> str:
    m = result["metrics"]
    lines = [
        (f"forgot classes {result['forget_class_names']} (all forgotten so far: {result['all_forgotten']}) "
         f"from version {result['parent_version']} -> new version {result['new_version']} on {result['device']}"),
        "",
        f"{'class':<12}{'before':>10}{'after':>10}",
    ]
    for row in result["per_class"]:
        mark = "  (forgotten)" if row["forgotten"] else ""
        lines.append(f"{row['class']:<12}{row['before']:>10.3f}{row['after']:>10.3f}{mark}")
    has_ref = "reference_forget_acc" in m
    header = f"{'test split':<28}{'before':>10}{'after':>10}" + (f"{'retrained':>11}" if has_ref else "")

    def row(label: str, key: str) -> str:
        ref = f"{m['reference_' + key]:>11.4f}" if has_ref else ""
        return f"{label:<28}{m['original_' + key]:>10.4f}{m[key]:>10.4f}{ref}"

    lines += [
        "",
        header,
        row("forget accuracy", "forget_acc"),
        row("retain accuracy", "retain_acc"),
        row("membership inference (D_f)", "mia"),
        "",
        "promotion gate: " + ("PROMOTED to champion" if result["promoted"] else "held as challenger (not promoted)"),
        *[f"  {reason}" for reason in result["gate_reasons"]],
        f"UNSIR compute {sum(result['compute_s'].values()):.2f}s, flow {sum(result['task_s'].values()):.2f}s; MLflow run {result['mlflow_run_id']}",
    ]
    return "\n".join(lines)


def cmd_models(project: Path, args) -> int:
    from unsir_pipeline.steps import summarize_versions

    versions = summarize_versions(_workspace(project, args))
    if args.json:
        print(json.dumps(versions))
        return 0
    if not versions:
        print("no registered versions; run `unsir bootstrap`")
        return 0
    print(f"{'version':>7}  {'aliases':<22}{'parent':>7}  {'forgotten':<16}{'gate':<18}created")
    for v in versions:
        print(f"{v['version']:>7}  {','.join(v['aliases']) or '-':<22}{v['parent_version'] or '-':>7}  "
              f"{json.dumps(v['forgotten_classes']):<16}{v['gate'] or '-':<18}{v['created_at']}")
    return 0


def cmd_promote(project: Path, args) -> int:
    from unsir_pipeline.batches import promote

    ws = _workspace(project, args)
    by = args.by or getpass.getuser()
    overridden = promote(ws, args.version, by, args.reason, override=args.override)
    for problem in overridden:
        print(f"overridden: {problem}")
    print(f"version {args.version} is now {ws.params.registry.champion_alias!r} (by {by}: {args.reason})")
    return 0


def cmd_reject(project: Path, args) -> int:
    from unsir_pipeline.batches import reject

    ws = _workspace(project, args)
    by = args.by or getpass.getuser()
    returned = reject(ws, args.version, by, args.reason)
    print(f"version {args.version} rejected (by {by}: {args.reason}); {len(returned)} request(s) back to pending")
    return 0


def _print_requests(requests: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.to_dict() for r in requests]))
        return
    if not requests:
        print("no requests")
        return
    print(f"{'id':<18}{'status':<10}{'classes':<14}{'version':>8}  {'requester':<16}created")
    for r in requests:
        print(f"{r.id:<18}{r.status:<10}{','.join(r.class_names) or '-':<14}{r.model_version or '-':>8}  {r.requester:<16}{r.created_at}")
        if r.error:
            print(f"{'':<18}{r.error}")


def cmd_request(project: Path, args) -> int:
    from unsir_pipeline import batches

    ws = _workspace(project, args)
    if args.request_command == "add":
        request = batches.file_request(ws, list(args.classes), args.requester, args.reason)
        print(json.dumps(request.to_dict()) if args.json else f"request {request.id} pending: forget {list(request.class_names)}")
    elif args.request_command == "list":
        _print_requests(batches.request_store(ws).list(args.status), args.json)
    else:
        request = batches.request_store(ws).get(args.id)
        print(json.dumps(request.to_dict()) if args.json else "\n".join(f"{k:<14}{v}" for k, v in request.to_dict().items()))
    return 0


def cmd_batch(project: Path, args) -> int:
    import os

    ws = _workspace(project, args)
    from flows.deletion_batch import deletion_batch

    if args.batch_command == "serve":
        if not os.environ.get("PREFECT_API_URL"):
            print("error: `unsir batch serve` needs a Prefect server: run `prefect server start` and set "
                  "PREFECT_API_URL=http://127.0.0.1:4200/api (ephemeral mode cannot run schedules)", file=sys.stderr)
            return EXIT_USAGE
        deletion_batch.serve(name="deletion-batch", cron=ws.params.requests.schedule,
                             parameters={"project_dir": str(project), "overrides": list(args.overrides)})
        return 0
    result = deletion_batch(project_dir=str(project), overrides=list(args.overrides))
    if args.json:
        print(json.dumps(result, default=float))
    elif result["status"] == "done" and "metrics" in result:
        print(f"batch {result['batch_id']}: {len(result['request_ids'])} request(s) done with version {result['new_version']}\n")
        print(format_result(result))
    elif result["status"] == "done":
        print(f"batch {result['batch_id']}: requests done; their classes were already forgotten by version {result['new_version']}")
    else:
        print(f"batch {result['status']}: {result.get('reason', 'nothing pending')}")
    return 0


def cmd_review(project: Path, args) -> int:
    from unsir_pipeline.batches import versions_awaiting_review

    waiting = versions_awaiting_review(_workspace(project, args))
    if args.json:
        print(json.dumps(waiting))
    elif not waiting:
        print("no version is waiting for review")
    else:
        for v in waiting:
            print(f"version {v['version']} (forgotten {v['forgotten_classes']}): {v['gate_reasons']}")
    return 0


def cmd_audit(project: Path, args) -> int:
    from unsir_pipeline import batches

    ws = _workspace(project, args)
    if args.audit_command == "verify":  # before audit_log(), which would refuse a deleted trail
        report = batches.verify_trail(ws)
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if report.ok:
            signed = ", head anchor signed" if report.chain.signed else ""
            print(f"audit trail intact: {report.records} records, hash chain and head anchor verified{signed}; "
                  "request store and registry agree with it")
            return 0
        if not report.chain.ok:
            print(f"error: audit trail TAMPERED at record {report.chain.first_bad_seq}: {report.chain.problem}", file=sys.stderr)
        for problem in report.problems:
            print(f"error: audit evidence disagrees: {problem}", file=sys.stderr)
        return EXIT_FAILED
    log = batches.audit_log(ws)
    if args.audit_command == "sign-head":
        result = log.sign_head()
        print(f"head anchor of {result.records} records signed with the audit key")
        return 0
    if args.audit_command == "show":
        history = batches.request_history(ws, args.request) if args.request else {"records": [r.to_dict() for r in log.records()]}
        if args.json:
            print(json.dumps(history))
            return 0
        if args.request:
            print(f"request {args.request}: status {history['request']['status']}, version {history['request']['model_version'] or '-'}"
                  f" ({history['production']})")
        for rec in history["records"]:
            print(f"{rec['seq']:>5}  {rec['ts']}  {rec['event']:<20}{rec['actor']:<16}{_brief(rec['payload'])}")
        return 0
    out = Path(args.out) if args.out else ws.reports_dir / f"evidence-{args.batch_id}.html"
    batches.write_batch_report(ws, args.batch_id, out)
    print(f"wrote {out}")
    return 0


def _brief(payload: dict) -> str:
    keys = ("model_version", "classes", "promoted", "error", "refusal", "reason")
    return ", ".join(f"{k}={payload[k]}" for k in keys if k in payload)


def cmd_stage(project: Path, args) -> int:
    from unsir_pipeline import workspace as w

    ws = _workspace(project, args)
    stage = {"prepare": w.prepare_data, "train": w.train_original, "unlearn": w.unlearn_original, "evaluate": w.evaluate_unlearned}[args.name]
    out = stage(ws)
    print(f"stage {args.name}: {out}")
    return 0


COMMANDS = {
    "bootstrap": cmd_bootstrap, "forget": cmd_forget, "models": cmd_models, "promote": cmd_promote, "reject": cmd_reject,
    "request": cmd_request, "batch": cmd_batch, "review": cmd_review, "audit": cmd_audit, "stage": cmd_stage,
}


if __name__ == "__main__":
    sys.exit(main())
