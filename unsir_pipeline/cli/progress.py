"""Progress of long commands on the terminal (stderr); silent for scripts and ``--json``.

On by default when stderr is a terminal; ``UNSIR_PROGRESS=1`` (or ``true``, ``yes``, ``on``)
forces it on, ``UNSIR_PROGRESS=0`` (``false``, ``no``, ``off``) off; any other value is refused.
Child processes learn the decision through the same variable (the training stage run by
``dvc repro`` prints its epochs unless it is off), and what they print reaches the terminal
through :func:`relay`, since DVC captures its stages' output.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from unsir_pipeline.settings.runtime import RuntimeSettingError

ENV = "UNSIR_PROGRESS"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# A child process (a DVC stage) appends its progress here; the parent copies it to stderr.
RELAY_ENV = "UNSIR_PROGRESS_FILE"


def setting() -> bool | None:
    """UNSIR_PROGRESS: on, off, or None when unset (or empty); any other value is refused, since
    a mistyped one would be taken as neither, silently."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    if raw.lower() in _ON + _OFF:
        return raw.lower() in _ON
    raise RuntimeSettingError(
        f"{ENV}={raw!r}: expected 1 (or true, yes, on) to show progress, 0 (or false, no, off) to hide it, "
        "or unset to show it on a terminal only"
    )


def wanted(quiet: bool, stream: TextIO | None = None) -> bool:
    """Whether to show progress: never when ``quiet`` (``--json``), else UNSIR_PROGRESS, else
    whether ``stream`` (stderr) is a terminal."""
    forced = setting()  # read first: a bad value is refused with --json too, as on any command
    if quiet:
        return False
    if forced is not None:
        return forced
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """Step lines such as ``bootstrap: [2/4] train the original model`` on stderr."""

    def __init__(self, command: str, enabled: bool, stream: TextIO | None = None) -> None:
        self.command = command
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.started = time.monotonic()

    def step(self, message: str) -> None:
        if self.enabled:
            elapsed = time.monotonic() - self.started
            # Written, not print()ed: inside a flow with log_prints, Prefect turns print() into a
            # log record, which would come back here (FlowStepHandler) and recurse.
            self.stream.write(f"{self.command}: {message} ({elapsed:.0f}s)\n")
            self.stream.flush()


@contextmanager
def relay(progress: Progress, poll_s: float = 0.2) -> Iterator[None]:
    """Copy what child processes write to ``$UNSIR_PROGRESS_FILE`` onto ``progress``'s stream
    while the block runs, and tell them (``UNSIR_PROGRESS``) whether to write anything."""
    saved = {k: os.environ.get(k) for k in (ENV, RELAY_ENV)}
    os.environ[ENV] = "1" if progress.enabled else "0"
    if not progress.enabled:
        try:
            yield
        finally:
            _restore(saved)
        return
    handle, name = tempfile.mkstemp(prefix="unsir-progress-", suffix=".log")
    os.close(handle)
    os.environ[RELAY_ENV] = name
    stop = threading.Event()

    def copy() -> None:
        with open(name, encoding="utf-8", errors="replace") as source:
            while True:
                chunk = source.read()
                if chunk:
                    progress.stream.write(chunk)
                    progress.stream.flush()
                elif stop.is_set():
                    return
                else:
                    time.sleep(poll_s)

    thread = threading.Thread(target=copy, name="unsir-progress-relay", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        Path(name).unlink(missing_ok=True)
        _restore(saved)


def _restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class _Tee:
    """A text stream writing to two others (a stage's stderr and the relay file)."""

    def __init__(self, first: TextIO, second: TextIO) -> None:
        self.first, self.second = first, second

    def write(self, text: str) -> int:
        self.second.write(text)
        self.second.flush()
        return self.first.write(text)

    def flush(self) -> None:
        self.first.flush()
        self.second.flush()

    def isatty(self) -> bool:
        return False


@contextmanager
def relayed_stderr() -> Iterator[None]:
    """In a child process started under :func:`relay`: copy stderr to the relay file too, so
    the training stage's epoch lines reach the user's terminal through DVC."""
    target = os.environ.get(RELAY_ENV)
    if not target or not setting():
        yield
        return
    with open(target, "a", encoding="utf-8") as sink:
        saved = sys.stderr
        sys.stderr = _Tee(saved, sink)
        try:
            yield
        finally:
            sys.stderr = saved


# Prefect's "Beginning subflow run 'peach-gopher' for flow 'unlearn'" (flow_engine.py).
_SUBFLOW_START = re.compile(r"Beginning subflow run .* for flow '(?P<flow>[^']*)'$")


class FlowStepHandler(logging.Handler):
    """Turns Prefect's "Finished in state ..." task-run records into one progress line per
    step of a flow (``forget: [4] version-data done in 0.9s``), and the start of each flow and
    subflow (``batch: subflow unlearn started``) into one line too. Prefect's own console lines
    are turned down while progress is on (see ``orchestration.configure_prefect``)."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(level=logging.INFO)
        self.progress = progress
        self.done = 0
        self.started: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        name = getattr(record, "task_name", None)
        message = record.getMessage()
        if name is None:
            if message.startswith("Beginning flow run"):
                self.progress.step(f"flow {getattr(record, 'flow_name', '')!s} started")
            elif started := _SUBFLOW_START.match(message):
                # Logged on the parent's logger, whose flow_name is the parent's: the subflow's
                # name is only in the message.
                self.progress.step(f"subflow {started['flow']} started")
            return
        if message.startswith("Finished in state"):
            self.done += 1
            state = message.removeprefix("Finished in state ").split("(")[0].strip()
            self.progress.step(f"[{self.done}] {name} {'done' if state == 'Completed' else state.lower()}")


@contextmanager
def flow_steps(progress: Progress) -> Iterator[None]:
    """Show each finished task of the flows run inside the block as a progress line."""
    if not progress.enabled:
        yield
        return
    handler = FlowStepHandler(progress)
    loggers = [logging.getLogger("prefect.task_runs"), logging.getLogger("prefect.flow_runs")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
