"""The ``unsir`` command line's arguments: every command and subcommand with its options, help
and examples (``unsir --help``). Parsing only: nothing here imports Prefect, MLflow or torch."""

from __future__ import annotations

import argparse

JSON_HELP = "print one JSON object on stdout instead of text (no progress lines)"


class _Parser(argparse.ArgumentParser):
    """Every (sub)command shows its epilog's examples as written."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unsir-pipeline")
    except PackageNotFoundError:  # run from a source tree that pip never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="unsir",
        description="Machine unlearning pipeline (UNSIR) with Prefect, MLflow, DVC and Great Expectations.",
        epilog=_examples(
            "unsir bootstrap",
            "unsir forget 3 --from original",
            "unsir --set registry.tracking_uri=http://127.0.0.1:5000 models --json",
            "unsir serve --port 5001",
        )
        + "\n\nprecedence: a --set flag wins over the environment (MLFLOW_TRACKING_URI, UNSIR_DVC_REMOTE, ...),"
        "\nwhich wins over params.yaml.\nexit codes: 0 done, 1 the pipeline failed, 2 bad input or configuration.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version and exit"
    )
    parser.add_argument(
        "--project",
        default=".",
        metavar="DIR",
        help="project directory holding params.yaml (default: .), e.g. --project ~/unlearning",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter of params.yaml, e.g. --set unlearn.seed=1 (repeatable; validated like "
        "the file; wins over the environment; recorded with the run)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = commands.add_parser(
        "bootstrap",
        help="prepare and version the data, train and register the first champion (idempotent)",
        epilog=_examples("unsir bootstrap", "unsir bootstrap --json"),
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = commands.add_parser(
        "forget",
        help="forget classes from the champion now and show before/after",
        epilog=_examples("unsir forget 3", "unsir forget 3 8 --from original", "unsir forget 1 --from 2 --json"),
    )
    p.add_argument("classes", nargs="+", metavar="CLASS", help="class names or indices of the data set, e.g. 3 or cat")
    p.add_argument(
        "--from",
        dest="parent",
        default=None,
        metavar="ALIAS_OR_VERSION",
        help="model to start from: an alias (champion, original) or a version number (default: the champion alias)",
    )
    p.add_argument("--by", default=None, help="who asks, for the audit trail (default: your user name)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = commands.add_parser(
        "models",
        help="registered versions, aliases and lineage",
        epilog=_examples("unsir models", "unsir models --json"),
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of versions")

    p = commands.add_parser(
        "promote",
        help="point the champion alias at VERSION by hand",
        epilog=_examples(
            'unsir promote 3 --reason "reviewed by the DPO" --by alice',
            'unsir promote 1 --reason "rollback drill" --override --json',
        ),
    )
    p.add_argument("version", type=int, metavar="VERSION", help="registered version number, e.g. 3")
    p.add_argument("--reason", required=True, help="why, recorded on the version and in the audit trail")
    p.add_argument("--by", default=None, help="who promotes (default: the current user)")
    p.add_argument(
        "--override",
        action="store_true",
        help="promote a version that failed its gate or would bring back a forgotten class (recorded)",
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = commands.add_parser(
        "reject",
        help="reject a version held for review; its requests go back to pending",
        epilog=_examples('unsir reject 4 --reason "MIA too high" --by bob'),
    )
    p.add_argument("version", type=int, metavar="VERSION", help="registered version number held for review, e.g. 4")
    p.add_argument("--reason", required=True, help="why, recorded on the version and in the audit trail")
    p.add_argument("--by", default=None, help="who rejects (default: the current user)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    request = commands.add_parser(
        "request",
        help="deletion requests",
        epilog=_examples(
            'unsir request add --classes 3 --requester alice --reason "consent withdrawn"',
            "unsir request list --status pending",
            'unsir request withdraw req-1a2b3c4d5e6f --reason "filed twice" --by alice',
            'unsir request retry req-1a2b3c4d5e6f --reason "restored data/prepared" --by alice',
        ),
    ).add_subparsers(dest="request_command", required=True, metavar="SUBCOMMAND")
    p = request.add_parser(
        "add",
        help="file a deletion request (refused at once if invalid; the refusal is recorded)",
        epilog=_examples(
            'unsir request add --classes 3 8 --requester alice --reason "consent withdrawn"',
            'unsir request add 3 8 --by alice --reason "consent withdrawn"',
        ),
    )
    # Classes as arguments and --by, as `unsir forget` takes them, or the explicit flags.
    p.add_argument("classes", nargs="*", metavar="CLASS", help="class names or indices, e.g. 3 8 (or --classes)")
    p.add_argument(
        "--classes", dest="classes_flag", nargs="+", default=[], metavar="CLASS", help="class names or indices"
    )
    p.add_argument(
        "--requester", "--by", required=True, help="who asks (UTF-8 text, no control characters), e.g. alice"
    )
    p.add_argument("--reason", required=True, help='why (UTF-8 text, no control characters), e.g. "consent withdrawn"')
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = request.add_parser(
        "list",
        help="requests, oldest first",
        epilog=_examples("unsir request list", "unsir request list --status failed --json"),
    )
    p.add_argument(
        "--status",
        default=None,
        choices=["pending", "running", "done", "failed", "rejected", "withdrawn"],
        help="only requests in this state",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of requests")
    p = request.add_parser("show", help="one request", epilog=_examples("unsir request show req-1a2b3c4d5e6f"))
    p.add_argument("id", help="request id as `unsir request list` shows it")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = request.add_parser(
        "withdraw",
        help="take back a pending or failed request before it runs (recorded)",
        epilog=_examples('unsir request withdraw req-1a2b3c4d5e6f --reason "filed twice" --by alice --json'),
    )
    p.add_argument("id", help="request id as `unsir request list` shows it")
    p.add_argument(
        "--reason", required=True, help='why (UTF-8 text, no control characters), e.g. "duplicate of req-..."'
    )
    p.add_argument("--by", default=None, help="who withdraws it (default: the current user)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = request.add_parser(
        "retry",
        help="queue failed requests again once the cause is fixed (recorded)",
        epilog=_examples('unsir request retry req-1a2b3c4d5e6f --reason "restored data/prepared" --by alice --json'),
    )
    p.add_argument("id", nargs="+", help="ids of failed requests as `unsir request list --status failed` shows them")
    p.add_argument(
        "--reason", required=True, help='what was fixed (UTF-8 text, no control characters), e.g. "lr lowered"'
    )
    p.add_argument("--by", default=None, help="who retries them (default: the current user)")
    p.add_argument("--json", action="store_true", help="print a JSON list of the requests retried")

    batch = commands.add_parser(
        "batch", help="deletion batches", epilog=_examples("unsir batch run", "unsir batch serve")
    ).add_subparsers(dest="batch_command", required=True, metavar="SUBCOMMAND")
    p = batch.add_parser(
        "run",
        help="forget every pending request now, in one unlearning run",
        epilog=_examples("unsir batch run --json"),
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    batch.add_parser(
        "serve",
        help="serve the batch on params.yaml's cron schedule (needs PREFECT_API_URL: a Prefect server)",
        epilog=_examples("PREFECT_API_URL=http://127.0.0.1:4200/api unsir batch serve"),
    )

    review = commands.add_parser(
        "review", help="versions held by the promotion gate", epilog=_examples("unsir review list")
    ).add_subparsers(dest="review_command", required=True, metavar="SUBCOMMAND")
    p = review.add_parser("list", help="versions waiting for a reviewer", epilog=_examples("unsir review list --json"))
    p.add_argument("--json", action="store_true", help="print a JSON list of versions")

    audit = commands.add_parser(
        "audit",
        help="the tamper-evident audit trail",
        epilog=_examples("unsir audit verify", "unsir audit show --request ID"),
    ).add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    p = audit.add_parser(
        "verify",
        help="check the hash chain, its anchors, the request store and the registry against it; non-zero exit naming "
        "what is wrong",
        epilog=_examples("unsir audit verify", "unsir audit verify --json"),
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = audit.add_parser(
        "sign-head",
        help="sign an intact trail's head with the audit key (UNSIR_AUDIT_KEY or UNSIR_AUDIT_KEY_FILE)",
        epilog=_examples("UNSIR_AUDIT_KEY_FILE=~/.unsir/audit.key unsir audit sign-head"),
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = audit.add_parser(
        "show",
        help="the trail, or one request's history from arrival to production",
        epilog=_examples("unsir audit show", "unsir audit show --request req-1a2b3c4d5e6f --json"),
    )
    p.add_argument("--request", default=None, metavar="ID", help="only this request's history")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = audit.add_parser(
        "report",
        help="write a self-contained HTML evidence report for a batch",
        epilog=_examples("unsir audit report b-20260101-0001 --out evidence.html"),
    )
    p.add_argument("batch_id", help="batch id as `unsir audit show` lists it")
    p.add_argument(
        "--out",
        default=None,
        help="output file, or a directory to write evidence-<batch>.html in (default: reports/evidence-<batch>.html)",
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    state = commands.add_parser(
        "state",
        help="the state database: the request store and the audit trail",
        epilog=_examples("unsir state migrate --dry-run", "unsir state migrate"),
    ).add_subparsers(dest="state_command", required=True, metavar="SUBCOMMAND")
    p = state.add_parser(
        "migrate",
        help="bring the request store and the audit trail to this version's schema revisions (nothing else changes)",
        epilog=_examples("unsir state migrate --dry-run", "unsir state migrate --json"),
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be migrated, writing nothing")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = commands.add_parser(
        "serve",
        help="serve a registered model (default: the champion) over HTTP on 127.0.0.1, following its alias",
        epilog=_examples(
            "unsir serve",
            "unsir serve --alias challenger --port 5002",
            "curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\",
            "     -d '{\"inputs\": [[[[0.0, 0.5, ...]]]]}'   # see docs/serving.md",
        ),
    )
    p.add_argument(
        "--alias", default=None, help="alias to serve and follow (default: registry.champion_alias, champion)"
    )
    p.add_argument("--port", type=int, default=5001, help="port on 127.0.0.1 (default: 5001; 0 picks a free one)")
    p.add_argument(
        "--poll",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how often to check where the alias points (default: 5)",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long the scoring server may take to answer /ping (default: 300)",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per event (serving, alias-moved, stopped)"
    )

    p = commands.add_parser(
        "init",
        help="create a new project (params.yaml, dvc.yaml, .gitignore, git and DVC) in a directory",
        epilog="examples:\n  unsir init ~/unlearning\n  cd ~/unlearning && unsir bootstrap",
    )
    p.add_argument(
        "directory",
        metavar="DIR",
        help="directory to create or fill, e.g. ~/unlearning (no params.yaml or dvc.yaml in it yet)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")

    p = commands.add_parser(
        "stage", help="run one DVC stage (called by dvc repro)", epilog=_examples("unsir stage train")
    )
    p.add_argument("name", choices=["prepare", "train", "unlearn", "evaluate"], help="the dvc.yaml stage")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    return parser
