"""The ``unsir`` command's entry point, :func:`main`, which parses the arguments and runs the
command's ``cmd_*`` function (every command: init, bootstrap, stage, forget, models, promote,
reject, request, batch, review, audit, state, serve; one module per group, see ``cli/__init__``).

Errors print one line naming what was wrong; ``--debug`` shows tracebacks. Exit codes: 0 done,
1 the pipeline failed, 2 bad input or configuration. Bad input (a version, an alias, a class, a
parameter, an argument that is not UTF-8) is refused before Prefect starts or an MLflow run
opens. Precedence of settings: ``--set`` flag, then the environment, then ``params.yaml``.
Heavy imports (Prefect, MLflow, torch) happen after argument parsing, so ``--help`` is instant.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# Both import only the standard library when they load: light enough for every command.
from unsir_pipeline.adapters import orchestration
from unsir_pipeline.cli.audit import cmd_audit, cmd_state
from unsir_pipeline.cli.common import progress_lines
from unsir_pipeline.cli.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    UsageError,
    describe_error,
    fail_with,
    is_user_error,
)
from unsir_pipeline.cli.forget import cmd_forget
from unsir_pipeline.cli.models import cmd_models, cmd_promote, cmd_reject
from unsir_pipeline.cli.parser import build_parser
from unsir_pipeline.cli.project import cmd_bootstrap, cmd_init, cmd_stage
from unsir_pipeline.cli.requests_and_batches import cmd_batch, cmd_request, cmd_review
from unsir_pipeline.cli.serve import cmd_serve
from unsir_pipeline.settings import runtime


def _check_utf8(argv: list[str]) -> None:
    """Python decodes undecodable argument bytes to lone surrogates; refuse them by position
    rather than fail later with a codec error that names nothing."""
    for position, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
            option = f" (value of {argv[position - 2]})" if position > 1 and argv[position - 2].startswith("-") else ""
            raise UsageError(
                f"argument {position}{option} is not valid UTF-8: '{shown}' (bytes shown as \\xNN)"
            ) from None


def main(argv: list[str] | None = None) -> int:
    # argv None: this process *is* the command (the `unsir` entry point), so it owns signals
    # and Prefect's temporary server; a caller passing argv (a test) keeps its own.
    owns_process = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        _check_utf8(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser().parse_args(argv)
    if args.command == "init":  # before the params.yaml check: init is what writes it
        return cmd_init(args)
    project = Path(args.project).resolve()
    if not (project / "params.yaml").is_file():
        return fail_with(
            args, f"no params.yaml in {project}; run from the project directory or pass --project", EXIT_USAGE
        )

    from unsir_pipeline.settings.environment import configure

    def stopped(word: str, code: int) -> int:
        """A signal ended the command: say so, and leave no Prefect server behind."""
        print(word, file=sys.stderr)
        if owns_process:
            try:
                orchestration.stop_prefect_server()
            except Exception as err:  # a clean-up that fails must not turn the stop into a failure
                print(
                    f"warning: stopping Prefect's temporary server: {describe_error(err, project, args.overrides)}",
                    file=sys.stderr,
                )
        return code

    if owns_process:
        runtime.handle_sigterm()
    if not args.debug:
        _quiet_mlflow_store_errors()
    try:
        configure(project)
        runtime.configure_threads()
        progress_shown = progress_lines(args).enabled  # a bad UNSIR_PROGRESS stops every command here
        orchestration.configure_prefect(quiet_console=getattr(args, "json", False) or progress_shown)
        code = COMMANDS[args.command](project, args)
        # Prefect's engine may swallow the stop and let the command return as if nothing
        # happened; the stop still decides the exit.
        if owns_process and runtime.was_terminated():
            return stopped("terminated", runtime.EXIT_SIGTERM)
        if owns_process and runtime.was_interrupted():
            return stopped("interrupted", EXIT_INTERRUPTED)
        return code
    except KeyboardInterrupt:
        return stopped("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # `unsir models | head -1`: the reader went away, which is no error of the command (it
        # printed "error: [Errno 32] Broken pipe"). stdout goes to devnull so that the
        # interpreter's own flush at exit does not fail on the closed pipe too.
        if owns_process:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except runtime.Terminated:
        stopped("terminated", runtime.EXIT_SIGTERM)
        raise
    except Exception as err:  # one clear line for people and scripts; --debug for the rest
        # Prefect may re-raise a SIGTERM or a KeyboardInterrupt as a crash of the run.
        if owns_process and runtime.was_terminated():
            return stopped("terminated", runtime.EXIT_SIGTERM)
        if owns_process and runtime.was_interrupted():
            return stopped("interrupted", EXIT_INTERRUPTED)
        if args.debug:
            raise
        return fail_with(
            args, describe_error(err, project, args.overrides), EXIT_USAGE if is_user_error(err) else EXIT_FAILED
        )


# MLflow's SQL store logs every database error it raises (the SQL, then a traceback: about a
# hundred lines an attempt) before raising it; the command names that error in its one line.
_MLFLOW_STORE_LOGGER = "mlflow.store.db.utils"


class _DropRaisedStoreErrors(logging.Filter):
    """Drops the records of errors MLflow's SQL store logs and then raises (``--debug`` keeps
    them); its other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.levelno >= logging.ERROR)


def _quiet_mlflow_store_errors() -> None:
    """Keep MLflow's log of a store error it raises (a registry locked mid-run) off the console,
    where the command's one ``error:`` line names it. By the logger's name, so that MLflow need
    not be imported (its loggers, made when it is, keep the filter); idempotent."""
    store_logger = logging.getLogger(_MLFLOW_STORE_LOGGER)
    if not any(isinstance(f, _DropRaisedStoreErrors) for f in store_logger.filters):
        store_logger.addFilter(_DropRaisedStoreErrors())


COMMANDS = {
    "bootstrap": cmd_bootstrap,
    "forget": cmd_forget,
    "models": cmd_models,
    "promote": cmd_promote,
    "reject": cmd_reject,
    "request": cmd_request,
    "batch": cmd_batch,
    "review": cmd_review,
    "audit": cmd_audit,
    "state": cmd_state,
    "stage": cmd_stage,
    "serve": cmd_serve,
}


if __name__ == "__main__":
    sys.exit(main())
