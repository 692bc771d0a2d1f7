"""The shared services on one machine, without Docker: PostgreSQL, MLflow, Prefect, a worker.

    python infra/local/stack.py up [SERVICE ...]     # start (idempotent), wait until healthy
    python infra/local/stack.py down [SERVICE ...]   # stop by process id, newest first
    python infra/local/stack.py status               # one JSON line per service

`make services-up` and `make services-down` call this with the project's virtual environment.
Every server listens on 127.0.0.1 only. Ports, directories and credentials come from the
environment (see `infra/local/README.md`); passwords that are not given are generated once and
kept in `<dir>/secrets.env` (mode 600), so a restart finds the same databases.

What a pipeline client needs (tracking URI, Prefect API URL and auth string, MLflow
credentials, the DVC remote, the state database holding requests and the audit trail) is written
to `<dir>/client.env`:

    set -a; . state/services/client.env; set +a

Each server runs in a session of its own, so `down` stops it together with its children.
PostgreSQL refuses to run as root: under root it runs as the `postgres` user that Debian's
package creates, and its data directory is owned by that user.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
SERVICES = ("postgres", "mlflow", "prefect", "worker")  # start order; `down` goes backwards
DATABASES = ("mlflow", "mlflow_auth", "prefect", "unsir_state")  # unsir_state: requests and audit trail
START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 30


class StackError(Exception):
    """A service could not be started or stopped; the message says which and where its log is."""


@dataclass(frozen=True)
class Settings:
    """Where everything lives and which ports it takes; read once from the environment."""

    directory: Path
    project_dir: Path
    pg_data: Path
    artifacts_dir: Path
    dvc_remote_dir: Path
    log_dir: Path
    python_bin: Path
    pg_bin: Path
    pg_port: int
    mlflow_port: int
    prefect_port: int
    work_pool: str
    db_user: str
    mlflow_user: str
    prefect_user: str
    deploy: bool
    worker_poll_s: int  # how often the worker asks the server for scheduled runs

    @classmethod
    def from_environment(cls) -> Settings:
        env = os.environ
        project_dir = Path(env.get("UNSIR_PROJECT_DIR", PROJECT_DIR)).resolve()
        directory = Path(env.get("UNSIR_SERVICES_DIR", project_dir / "state" / "services"))
        directory = directory.resolve()

        def place(variable: str, default: str) -> Path:
            return Path(env.get(variable) or directory / default).resolve()

        return cls(
            directory=directory,
            project_dir=project_dir,
            pg_data=place("UNSIR_PG_DATA", "postgres"),
            artifacts_dir=place("UNSIR_MLFLOW_ARTIFACTS", "mlflow-artifacts"),
            dvc_remote_dir=place("UNSIR_DVC_REMOTE_DIR", "dvc-remote"),
            log_dir=place("UNSIR_LOG_DIR", "logs"),
            python_bin=Path(sys.executable).parent,
            pg_bin=Path(env["UNSIR_PG_BIN"]) if env.get("UNSIR_PG_BIN") else _find_pg_bin(),
            pg_port=_port("UNSIR_PG_PORT", 5433),
            mlflow_port=_port("UNSIR_MLFLOW_PORT", 5000),
            prefect_port=_port("UNSIR_PREFECT_PORT", 4200),
            work_pool=env.get("UNSIR_WORK_POOL", "unsir-pool"),
            db_user=env.get("UNSIR_PG_USER", "unsir"),
            mlflow_user=env.get("UNSIR_MLFLOW_USER", "unsir-admin"),
            prefect_user=env.get("UNSIR_PREFECT_USER", "unsir"),
            deploy=env.get("UNSIR_DEPLOY", "1") == "1",
            worker_poll_s=_whole_number(
                "UNSIR_WORKER_POLL_S", 10, 1, 3600, "a whole number of seconds, 1-3600"
            ),  # 10: Prefect's default
        )

    def path(self, *parts: str) -> Path:
        return self.directory.joinpath(*parts)

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"


def _port(variable: str, default: int) -> int:
    return _whole_number(variable, default, 1, 65535, "a TCP port number between 1 and 65535")


def _whole_number(variable: str, default: int, low: int, high: int, expected: str) -> int:
    value = os.environ.get(variable, str(default))
    if not value.isdigit() or not low <= int(value) <= high:
        raise StackError(f"{variable}={value!r}: expected {expected}")
    return int(value)


def _find_pg_bin() -> Path:
    """Debian installs the server outside PATH, under /usr/lib/postgresql/<major>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not candidates:
        raise StackError(
            "PostgreSQL's server is not installed: `apt-get install postgresql` "
            "(or set UNSIR_PG_BIN to the directory holding initdb and postgres)"
        )
    return candidates[-1].parent


# --- credentials ----------------------------------------------------------------------------

SECRET_VARIABLES = (
    "UNSIR_PG_PASSWORD",
    "UNSIR_MLFLOW_PASSWORD",
    "UNSIR_PREFECT_PASSWORD",
    "UNSIR_MLFLOW_SECRET_KEY",  # signs the basic-auth app's CSRF tokens
)


def credentials(settings: Settings) -> dict[str, str]:
    """Passwords from the environment, else from `secrets.env`, else new ones written there."""
    stored_path = settings.path("secrets.env")
    stored = _read_env_file(stored_path)
    values = {name: os.environ.get(name) or stored.get(name) or secrets.token_urlsafe(18) for name in SECRET_VARIABLES}
    if values != stored:
        _write_private(stored_path, "".join(f"{k}={v}\n" for k, v in values.items()))
    return values


def client_environment(settings: Settings, creds: dict[str, str]) -> dict[str, str]:
    """What the pipeline (CLI, flows, worker) needs to use these services instead of its defaults."""
    return {
        "MLFLOW_TRACKING_URI": settings.mlflow_url,
        "MLFLOW_TRACKING_USERNAME": settings.mlflow_user,
        "MLFLOW_TRACKING_PASSWORD": creds["UNSIR_MLFLOW_PASSWORD"],
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_API_AUTH_STRING": f"{settings.prefect_user}:{creds['UNSIR_PREFECT_PASSWORD']}",
        "UNSIR_DVC_REMOTE": str(settings.dvc_remote_dir),
        "UNSIR_PROJECT_DIR": str(settings.project_dir),
        # Deletion requests and the audit trail, shared by every checkout and worker.
        "UNSIR_STATE_DATABASE_URL": _database_url(settings, creds, "unsir_state"),
    }


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


# --- processes -------------------------------------------------------------------------------


def pid_of(settings: Settings, service: str) -> int | None:
    """The process id recorded for ``service`` if that process is still alive."""
    pid_file = settings.path("run", f"{service}.pid")
    try:
        pid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    # A zombie (exited, not yet reaped by its parent) counts as stopped.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return pid
    return None if state == "Z" else pid


def _spawn(
    settings: Settings,
    service: str,
    argv: list[str],
    env: dict[str, str],
    user: str | None = None,
    cwd: Path | None = None,
) -> int:
    log_path = settings.log_dir / f"{service}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting {argv[0]}\n".encode())
        log.flush()
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd or settings.directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
            group=user,
        )
    settings.path("run").mkdir(parents=True, exist_ok=True)
    settings.path("run", f"{service}.pid").write_text(str(process.pid))
    return process.pid


def _wait(settings: Settings, service: str, ready, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid_of(settings, service) is None:
            raise StackError(f"{service} exited during start-up; see {_log_tail(settings, service)}")
        if ready():
            return
        time.sleep(0.5)
    raise StackError(f"{service} not healthy after {timeout_s:.0f} s; see {_log_tail(settings, service)}")


def _log_tail(settings: Settings, service: str, lines: int = 15) -> str:
    path = settings.log_dir / f"{service}.log"
    tail = path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else []
    return f"{path}:\n" + "\n".join(tail)


def stop(settings: Settings, service: str) -> bool:
    """Stop ``service`` by its recorded process id (its whole session); True if it was running."""
    pid = pid_of(settings, service)
    if pid is None:
        settings.path("run", f"{service}.pid").unlink(missing_ok=True)
        return False
    # PostgreSQL's SIGTERM waits for clients to leave; SIGINT is its fast shutdown.
    first = signal.SIGINT if service == "postgres" else signal.SIGTERM
    _signal_group(pid, first)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and pid_of(settings, service) is not None:
        time.sleep(0.2)
    if pid_of(settings, service) is not None:
        _signal_group(pid, signal.SIGKILL)
        time.sleep(0.5)
    settings.path("run", f"{service}.pid").unlink(missing_ok=True)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _http_ok(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> bool:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _basic(user_password: str) -> dict[str, str]:
    token = base64.b64encode(user_password.encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


# --- services --------------------------------------------------------------------------------


def start_postgres(settings: Settings, creds: dict[str, str]) -> None:
    data = settings.pg_data
    user = "postgres" if os.geteuid() == 0 else None
    if not (data / "PG_VERSION").is_file():
        data.mkdir(parents=True, exist_ok=True)
        password_file = settings.path("run", "pg-password")
        _write_private(password_file, creds["UNSIR_PG_PASSWORD"] + "\n")
        if user:
            account = pwd.getpwnam(user)
            for path in (data, password_file):
                os.chown(path, account.pw_uid, account.pw_gid)
        data.chmod(0o700)
        result = subprocess.run(
            [
                str(settings.pg_bin / "initdb"),
                "-D",
                str(data),
                "-U",
                settings.db_user,
                f"--pwfile={password_file}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
            ],
            user=user,
            group=user,
            capture_output=True,
            text=True,
            check=False,
        )
        password_file.unlink()
        if result.returncode != 0:
            raise StackError(
                f"initdb {data} failed ({result.returncode}): {result.stderr.strip()[-800:]}"
                + (f" (it runs as {user!r}: every directory above {data} must let that user in)" if user else "")
            )
    # TCP on loopback only; no Unix socket, so nothing is written outside the data directory.
    _spawn(
        settings,
        "postgres",
        [
            str(settings.pg_bin / "postgres"),
            "-D",
            str(data),
            "-p",
            str(settings.pg_port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
        ],
        env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
        user=user,
        cwd=data,
    )
    connections = []  # the one that answers is kept for creating the databases

    def accepts_connections() -> bool:
        connections.append(_connect(settings, creds, "postgres"))
        return connections[-1] is not None

    _wait(settings, "postgres", accepts_connections)
    connection = connections[-1]
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            for name in DATABASES:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()


def _connect(settings: Settings, creds: dict[str, str], database: str):
    import psycopg2

    try:
        return psycopg2.connect(
            host="127.0.0.1",
            port=settings.pg_port,
            user=settings.db_user,
            password=creds["UNSIR_PG_PASSWORD"],
            dbname=database,
            connect_timeout=3,
        )
    except psycopg2.OperationalError:
        return None


def _database_url(settings: Settings, creds: dict[str, str], database: str, driver: str = "postgresql+psycopg2") -> str:
    return f"{driver}://{settings.db_user}:{creds['UNSIR_PG_PASSWORD']}@127.0.0.1:{settings.pg_port}/{database}"


def start_mlflow(settings: Settings, creds: dict[str, str]) -> Callable[[], None]:
    """Spawn the tracking server; the call returned waits until it answers."""
    # The basic-auth app reads its config from a file; it holds a database password, so 600.
    auth_config = settings.path("run", "mlflow-auth.ini")
    _write_private(
        auth_config,
        "\n".join(
            [
                "[mlflow]",
                "default_permission = READ",
                f"database_uri = {_database_url(settings, creds, 'mlflow_auth')}",
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
                # Each request otherwise pays a PBKDF2 check of the password (~0.2 s on 2 cores; a
                # model registration makes dozens). The price: a changed or deleted password still
                # works on the other server worker for up to this many seconds.
                f"auth_cache_ttl_seconds = {os.environ.get('UNSIR_MLFLOW_AUTH_CACHE_S', '60')}",
                "",
            ]
        ),
    )
    artifacts = settings.artifacts_dir
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {
        **_base_env(),
        # Passwords go through the environment, never the command line (`ps` shows that).
        "MLFLOW_BACKEND_STORE_URI": _database_url(settings, creds, "mlflow"),
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
        "MLFLOW_AUTH_ADMIN_USERNAME": settings.mlflow_user,
        "MLFLOW_AUTH_ADMIN_PASSWORD": creds["UNSIR_MLFLOW_PASSWORD"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["UNSIR_MLFLOW_SECRET_KEY"],
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # The server's job runner (GenAI scorers) starts four queue consumers; the pipeline uses none.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("UNSIR_MLFLOW_JOBS", "false"),
    }
    _spawn(
        settings,
        "mlflow",
        [
            str(settings.python_bin / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(settings.mlflow_port),
            "--workers",
            os.environ.get("UNSIR_MLFLOW_WORKERS", "2"),
            "--serve-artifacts",
            "--artifacts-destination",
            str(artifacts),
            "--app-name",
            "basic-auth",
        ],
        env=env,
    )
    return lambda: _wait(settings, "mlflow", lambda: _http_ok(f"{settings.mlflow_url}/health"))


def start_prefect(settings: Settings, creds: dict[str, str]) -> Callable[[], None]:
    """Spawn the Prefect server; the call returned waits until it answers."""
    home = settings.path("prefect-server")
    home.mkdir(parents=True, exist_ok=True)
    auth = f"{settings.prefect_user}:{creds['UNSIR_PREFECT_PASSWORD']}"
    env = {
        **_base_env(),
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": _database_url(settings, creds, "prefect", "postgresql+asyncpg"),
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": os.environ.get("UNSIR_PREFECT_UI", "true"),
    }
    _spawn(
        settings,
        "prefect",
        [
            str(settings.python_bin / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(settings.prefect_port),
        ],
        env=env,
    )
    return lambda: _wait(settings, "prefect", lambda: _http_ok(f"{settings.prefect_api_url}/health", _basic(auth)))


def deploy(settings: Settings, client_env: dict[str, str]) -> None:
    """`prefect deploy --all` from the project: the deletion batch, on the process work pool."""
    pool = json.dumps({"name": settings.work_pool, "type": "process"}).encode()
    request = urllib.request.Request(
        f"{settings.prefect_api_url}/work_pools/",
        data=pool,
        headers=_basic(client_env["PREFECT_API_AUTH_STRING"]),
        method="POST",
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as err:
        if err.code != 409:  # 409: the pool exists already, which is what we want
            raise StackError(f"cannot create work pool {settings.work_pool!r}: HTTP {err.code} {err.reason}") from err
    env = {**_base_env(), **client_env, "PREFECT_HOME": str(settings.path("prefect-client"))}
    result = subprocess.run(
        [str(settings.python_bin / "prefect"), "--no-prompt", "deploy", "--all"],
        cwd=settings.project_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    log = settings.log_dir / "deploy.log"
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise StackError(f"`prefect deploy --all` in {settings.project_dir} failed; see {log}")


def start_worker(settings: Settings, client_env: dict[str, str]) -> None:
    env = {
        **_base_env(),
        **client_env,
        "PREFECT_HOME": str(settings.path("prefect-worker")),
        "PREFECT_WORKER_QUERY_SECONDS": str(settings.worker_poll_s),
        "UNSIR_PROGRESS": "0",
    }
    name = f"unsir-local-{os.uname().nodename}"
    started = datetime.now(UTC)
    _spawn(
        settings,
        "worker",
        [
            str(settings.python_bin / "prefect"),
            "worker",
            "start",
            "--pool",
            settings.work_pool,
            "--type",
            "process",
            "--name",
            name,
        ],
        env=env,
        cwd=settings.project_dir,
    )
    auth = client_env["PREFECT_API_AUTH_STRING"]
    url = f"{settings.prefect_api_url}/work_pools/{settings.work_pool}/workers/filter"

    def online() -> bool:
        request = urllib.request.Request(url, data=b"{}", headers=_basic(auth), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=3) as response:
                workers = json.load(response)
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return False
        # A worker of the same name that ran before stays ONLINE for a while: ask for a
        # heartbeat from this one.
        return any(
            w.get("name") == name
            and w.get("last_heartbeat_time")
            and datetime.fromisoformat(w["last_heartbeat_time"]) >= started
            for w in workers
        )

    _wait(settings, "worker", online)


def _base_env() -> dict[str, str]:
    """A clean environment: a client's MLFLOW_*/PREFECT_* settings must not leak into servers."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ}


# --- commands --------------------------------------------------------------------------------


def up(settings: Settings, services: list[str]) -> None:
    settings.directory.mkdir(parents=True, exist_ok=True)
    settings.directory.chmod(0o755)  # PostgreSQL's user must be able to reach its data directory
    creds = credentials(settings)
    client_env = client_environment(settings, creds)
    _write_private(settings.path("client.env"), "".join(f"{k}={v}\n" for k, v in client_env.items()))
    # MLflow and Prefect need only PostgreSQL: they start side by side (each spends most of its
    # start-up importing its server), and the worker waits for Prefect and its deployment.
    starting: list[tuple[str, float, Callable[[], None]]] = []

    def wait_for_starting() -> None:
        for service, started, wait in starting:
            wait()
            if service == "prefect" and settings.deploy:
                deploy(settings, client_env)
            _report_up(settings, service, started)
        starting.clear()

    for service in SERVICES:
        if service not in services:
            continue
        running = pid_of(settings, service)
        if running is not None:
            print(f"{service}: already running (pid {running})")
            continue
        if service in ("mlflow", "prefect"):
            start = start_mlflow if service == "mlflow" else start_prefect
            starting.append((service, time.monotonic(), start(settings, creds)))
            continue
        wait_for_starting()
        started = time.monotonic()
        if service == "postgres":
            start_postgres(settings, creds)
        else:
            start_worker(settings, client_env)
        _report_up(settings, service, started)
    wait_for_starting()
    print(f"client settings: set -a; . {settings.path('client.env')}; set +a")


def _report_up(settings: Settings, service: str, started: float) -> None:
    print(
        f"{service}: up in {time.monotonic() - started:.1f} s (pid {pid_of(settings, service)}, "
        f"log {settings.log_dir / (service + '.log')})"
    )


def down(settings: Settings, services: list[str]) -> None:
    for service in reversed(SERVICES):
        if service in services:
            print(f"{service}: {'stopped' if stop(settings, service) else 'not running'}")


def status(settings: Settings) -> list[dict]:
    urls = {
        "mlflow": settings.mlflow_url,
        "prefect": settings.prefect_api_url,
        "postgres": f"postgresql://127.0.0.1:{settings.pg_port}",
        "worker": settings.work_pool,
    }
    return [
        {
            "service": s,
            "pid": pid_of(settings, s),
            "running": pid_of(settings, s) is not None,
            "address": urls[s],
            "log": str(settings.log_dir / f"{s}.log"),
        }
        for s in SERVICES
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("services", nargs="*", metavar="SERVICE", help=f"some of {', '.join(SERVICES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.services if s not in SERVICES]
    try:
        if unknown:
            raise StackError(f"unknown service(s) {unknown}; expected some of {list(SERVICES)}")
        settings = Settings.from_environment()
        chosen = args.services or list(SERVICES)
        if args.command == "up":
            up(settings, chosen)
        elif args.command == "down":
            down(settings, chosen)
        else:
            for line in status(settings):
                print(json.dumps(line))
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
