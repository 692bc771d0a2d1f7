"""The locks of deletions: one batch at a time, and one promotion decision at a time.

**The batch lock.** With embedded state (SQLite files under the project) a file lock in the
state directory is enough, since only this machine can reach the requests
(``file_lock``). With a shared state database (``state.database_url``) batches on
several machines claim from the same queue, and a batch recovers requests that a killed batch
left ``running`` (``release_stale``), which is only safe while no other batch runs anywhere: the
lock is then a Prefect global concurrency limit (``state.batch_lock``, limit 1, created when
missing) on the configured Prefect server. Its slot is leased: a batch whose process dies frees
it when the lease expires.

**The promotion lock.** A promotion reads which classes promoted versions forgot, decides, then
tags the version and moves the champion alias. Two decisions interleaved (two ``unsir forget``
runs, or a forget beside a batch or a hand promotion) could each miss the other's promotion, and
the later alias move would bring the earlier one's class back. So the decision is serialised per
registered model: by a Prefect global concurrency limit when a Prefect server is configured (it
reaches every machine that promotes), else by a file lock in the state directory (this machine).
With a shared state database (``state.database_url``) a promotion needs that server, as a
batch does. A file lock does not reach a second machine that promotes in the same MLflow
server: :func:`machine_local_promotion_lock` says so, and the commands that promote warn with it.

Prefect's global concurrency limits are taken through :mod:`unsir_pipeline.adapters.orchestration`
(``global_lock``); ``claims`` and ``trail`` stay free of Prefect.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from unsir_pipeline.adapters import orchestration
from unsir_pipeline.settings.workspace import Workspace

# How long a promotion waits for another one's decision (a decision takes well under a second).
PROMOTION_WAIT_S = 120
# How long a batch waits for the file batch lock: longer than a reader's probe holds it
# (batch_lock_held), so a batch that starts during a `request list` is not turned away.
BATCH_FILE_LOCK_WAIT_S = 1.0


class LockError(RuntimeError):
    """A lock cannot be used: no Prefect server where one is needed (the server's refusal is
    ``orchestration.GlobalLockRefused``)."""


class BatchLockError(LockError):
    """The shared batch lock cannot be used."""


class DeletionRunning(LockError):
    """A forget run cannot start: a batch or another forget run holds the batch lock."""


class PromotionLockError(LockError):
    """The promotion lock was not free within its wait, or could not be used."""


@contextmanager
def deletion_batch_lock(ws: Workspace) -> Iterator[bool]:
    """Yields True while this batch holds the lock, False at once when another batch holds it."""
    if ws.params.state.database_url is None:
        with file_lock(ws.state_dir / "batch.lock", wait_s=BATCH_FILE_LOCK_WAIT_S) as acquired:
            yield acquired
        return
    if orchestration.prefect_api_url() is None:
        raise BatchLockError(
            "state.database_url is set (requests shared between machines), but no Prefect server is "
            "configured: the batch lock must be shared too; set PREFECT_API_URL (the stack's client.env does)"
        )
    with orchestration.global_lock(ws.params.state.batch_lock) as acquired:
        yield acquired


def batch_lock_held(ws: Workspace) -> bool | None:
    """Whether a batch or a forget run holds the batch lock now, read without writing (the
    commands that only read ask it of a request left ``running``); None where it cannot be told:
    a shared state database with no Prefect server configured. Raises
    ``orchestration.GlobalLockUnreadable`` (its message the one line saying why) when that server
    refuses or does not answer."""
    if ws.params.state.database_url is None:
        try:
            with open(ws.state_dir / "batch.lock") as handle:  # for reading: creates nothing
                try:
                    # Shared, for an instant: a batch starting meanwhile waits BATCH_FILE_LOCK_WAIT_S.
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(handle, fcntl.LOCK_UN)
                return False
        except FileNotFoundError:
            return False  # no batch or forget run ever took it
    return orchestration.global_lock_held(ws.params.state.batch_lock)


@contextmanager
def forget_run_lock(ws: Workspace) -> Iterator[None]:
    """The batch lock, held by a forget run outside a batch while its own request is running:
    a batch that starts meanwhile ends at once, and one that starts after a killed run releases
    its request (``release_stale``) as it releases a killed batch's. Raises
    :class:`DeletionRunning` when a batch or another forget run holds it."""
    with deletion_batch_lock(ws) as acquired:
        if not acquired:
            raise DeletionRunning(
                "a deletion batch or another forget run is running (it holds the batch lock); run this forget "
                "again when it has finished, or file the classes with `unsir request add` for the next batch"
            )
        yield


@contextmanager
def promotion_lock(ws: Workspace, *, wait_s: float = PROMOTION_WAIT_S) -> Iterator[None]:
    """Held while one promotion decision reads the registry, decides and moves the alias; waits
    up to ``wait_s`` for another decision to finish."""
    # The server as Prefect reads it (the environment or the active profile): reading only the
    # environment took a server set with `prefect config set` for none, and the lock for a file.
    model = ws.params.registry.model_name
    server = orchestration.prefect_api_url()
    if server is not None:
        name = f"unsir-promotion-{model}"
        lock = orchestration.global_lock(name, wait_s=wait_s)
        where = f"the lock {name!r} on the Prefect server {server}"
    elif ws.params.state.database_url is not None:
        # Requests and the trail are shared between machines: so must this lock be, as the batch lock.
        raise PromotionLockError(
            "state.database_url is set (requests shared between machines), but no Prefect server is configured: "
            "the promotion lock must be shared too; set PREFECT_API_URL (the stack's client.env does)"
        )
    else:
        lock, where = file_lock(ws.state_dir / "promotion.lock", wait_s=wait_s), str(ws.state_dir / "promotion.lock")
    with lock as acquired:
        if not acquired:
            raise PromotionLockError(
                f"another promotion of {model!r} held {where} for {wait_s:g} s; try again when it has finished"
            )
        yield


def machine_local_promotion_lock(ws: Workspace) -> str | None:
    """Why the promotion lock, a file on this machine when no Prefect server is set, does not
    keep out a promotion on another machine that shares this project's registry; None when it
    does (a server is set) or when nothing is shared (SQLite files under the project). With a
    shared state database there is no such lock: :func:`promotion_lock` refuses to promote."""
    if ws.params.state.database_url:  # as promotion_lock decides
        return None
    uri = ws.tracking_uri
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return None
    # Prefect's settings (a second's import) only for a registry that may be shared.
    if orchestration.prefect_api_url() is not None:
        return None
    from unsir_pipeline.settings.database_url import redact

    return (
        f"the promotion lock is a file on this machine ({ws.state_dir / 'promotion.lock'}), but "
        f"the registry {redact(uri)} may be shared with other machines: a promotion there at the same moment is not "
        "kept out, and could move the champion to a version that still classifies a class deleted here; set "
        "PREFECT_API_URL to the team's Prefect server (the stack's client.env does) to share the lock"
    )


@contextmanager
def file_lock(path: Path, *, wait_s: float = 0) -> Iterator[bool]:
    """An exclusive lock on ``path`` on this machine: yields False when another process held it
    for ``wait_s`` seconds (0: do not wait). The OS drops the lock when its process dies, so a
    killed holder never blocks the next one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    with open(path, "w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
