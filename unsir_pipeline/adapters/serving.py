"""``unsir serve``: MLflow's scoring server on 127.0.0.1 for the version an alias names, moved
to the new version when the alias moves.

A small supervisor: it resolves the alias, runs MLflow's scoring app for that version number
under uvicorn (so what is served is always a known version), polls the alias every ``poll_s``
seconds, and when it points elsewhere stops the server and starts one for the new version on the
same port (requests fail for the few seconds of the restart). The app is MLflow's own, as
``mlflow models serve --env-manager local`` runs it, behind a check of the request body
(``scoring_app``). The server runs in a process group of its own, stopped as a whole (uvicorn's
workers included) on exit, SIGINT or SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from unsir_pipeline.adapters.registry import RegistryError, VersionNotReady, registry_for
from unsir_pipeline.adapters.scoring_app import ALIAS_VARIABLE, MODEL_URI_VARIABLE
from unsir_pipeline.settings.workspace import Workspace

HOST = "127.0.0.1"


class ServeError(RuntimeError):
    """The scoring server could not be started or kept running; the message says why."""


@dataclass
class Served:
    version: int
    process: subprocess.Popen


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (checked before starting one, so that a
    port in use is one line, not the scoring server's traceback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def server_environment(ws: Workspace, model_name: str, version: int, alias: str) -> dict[str, str]:
    """The scoring server's environment: the version to serve and the alias that named it (GET
    /model says both), the project's registry, and the same thread count as the pipeline
    (runtime.configure_threads)."""
    return {
        **os.environ,
        MODEL_URI_VARIABLE: f"models:/{model_name}/{version}",
        ALIAS_VARIABLE: alias,
        "MLFLOW_TRACKING_URI": ws.tracking_uri,
        "MLFLOW_REGISTRY_URI": ws.tracking_uri,
    }


def serve_command(port: int) -> list[str]:
    """uvicorn from this interpreter (found without the environment on PATH) with the app."""
    factory = "unsir_pipeline.adapters.scoring_app:create_app"
    return [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", HOST, "--port", str(port)]


def wait_ready(port: int, process: subprocess.Popen, timeout_s: float) -> None:
    """Until ``/ping`` answers 200; fail naming the exit code if the server dies first."""
    deadline = time.monotonic() + timeout_s
    url = f"http://{HOST}:{port}/ping"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServeError(f"the scoring server exited with code {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise ServeError(f"the scoring server did not answer {url} within {timeout_s:.0f}s (UNSIR_SERVE_STARTUP_S)")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(process: subprocess.Popen, grace_s: float = 10) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL after ``grace_s``.

    uvicorn's workers can outlive the process we started by the time of a graceful shutdown:
    wait for the group, not only for that process, or the next server finds the port still
    taken."""
    pgid = process.pid  # start_new_session: the leader's pid is the group id
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:  # the whole group is gone already
        process.poll()
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()  # reap our own child, or it stays a member of the group as a zombie
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait()


class Supervisor:
    """Serve ``alias`` of the workspace's registered model on ``port``; follow the alias."""

    def __init__(
        self,
        ws: Workspace,
        alias: str,
        port: int,
        *,
        poll_s: float,
        startup_s: float,
        report: Callable[[dict], None],
        concerns: Callable[[int], list[str]] = lambda version: [],
    ) -> None:
        self.ws, self.alias, self.port = ws, alias, port
        self.poll_s, self.startup_s, self.report = poll_s, startup_s, report
        # What the caller has to say about a version it starts serving (a warning each): the
        # command line names deleted classes the version was not measured to have forgotten.
        self.concerns = concerns
        self.registry = registry_for(ws)
        self.model_name = ws.params.registry.model_name
        self.served: Served | None = None
        # The version the alias moved to that is not READY, reported once (None: none is).
        self.refused: int | None = None

    def start(self, version: int) -> None:
        process = subprocess.Popen(
            serve_command(self.port),
            env=server_environment(self.ws, self.model_name, version, self.alias),
            # Its access log goes to stderr: stdout carries this command's own reports (--json).
            cwd=self.ws.root,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr,
        )
        self.served = Served(version, process)
        try:
            wait_ready(self.port, process, self.startup_s)
        except BaseException:
            stop(process)
            self.served = None
            raise
        # The pid is also the server's process group and session (start_new_session above).
        self.report(
            {
                "event": "serving",
                "alias": self.alias,
                "version": version,
                "url": f"http://{HOST}:{self.port}/invocations",
                "pid": process.pid,
            }
        )
        for concern in self.concerns(version):
            self.report({"event": "warning", "version": version, "reason": concern})

    def follow(self, iterations: int | None = None) -> None:
        """Serve, then poll the alias; ``iterations`` bounds the polls (None: until stopped)."""
        first = self.registry.resolve_alias(self.alias)
        self.registry.require_ready(first)  # MLflow's scoring app would load whatever it has
        self.start(first)
        count = 0
        try:
            while iterations is None or count < iterations:
                count += 1
                time.sleep(self.poll_s)
                assert self.served is not None
                if self.served.process.poll() is not None:
                    code = self.served.process.returncode
                    self.report(
                        {
                            "event": "restarting",
                            "reason": f"server exited with code {code}",
                            "version": self.served.version,
                        }
                    )
                    self.start(self.served.version)
                    continue
                try:
                    current = self.registry.resolve_alias(self.alias)
                    if current != self.served.version:
                        self.registry.require_ready(current)
                except VersionNotReady as err:  # moved in MLflow: keep the served version, say so once
                    if current != self.refused:
                        self.refused = current
                        self.report(
                            {
                                "event": "not-switched",
                                "alias": self.alias,
                                "version": self.served.version,
                                "to_version": current,
                                "reason": str(err),
                            }
                        )
                    continue
                except RegistryError as err:  # a registry hiccup or a deleted alias must not stop serving
                    self.report({"event": "warning", "reason": f"cannot resolve alias {self.alias!r}: {err}"})
                    continue
                self.refused = None
                if current != self.served.version:
                    self.report(
                        {
                            "event": "alias-moved",
                            "alias": self.alias,
                            "from_version": self.served.version,
                            "to_version": current,
                        }
                    )
                    stop(self.served.process)
                    self.start(current)
        finally:
            if self.served is not None:
                stop(self.served.process)
                self.report({"event": "stopped", "version": self.served.version})


def text_report(event: dict) -> str:
    kind = event["event"]
    if kind == "serving":
        return f"serving version {event['version']} ({event['alias']}) at {event['url']}"
    if kind == "alias-moved":
        return (
            f"alias {event['alias']!r} moved from version {event['from_version']} to {event['to_version']}: restarting"
        )
    if kind == "not-switched":
        return (
            f"alias {event['alias']!r} moved to version {event['to_version']}, which is not served: "
            f"{event['reason']}; still serving version {event['version']}"
        )
    if kind == "stopped":
        return f"stopped serving version {event['version']}"
    return f"{kind}: {event.get('reason', '')}"


def printer(as_json: bool) -> Callable[[dict], None]:
    def report(event: dict) -> None:
        print(json.dumps(event) if as_json else text_report(event), flush=True)

    return report
