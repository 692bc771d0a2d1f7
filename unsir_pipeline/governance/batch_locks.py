"""The deletion batch's lock: one batch at a time, wherever the state lives.

With embedded state (SQLite files under the project) a file lock in the state directory is
enough, since only this machine can reach the requests (``batches.batch_lock``). With a shared
state database (``state.database_url``) batches on several machines claim from the same queue,
and a batch recovers requests that a killed batch left ``running`` (``release_stale``), which is
only safe while no other batch runs anywhere: the lock is then a Prefect global concurrency
limit (``state.batch_lock``, limit 1, created when missing) on the configured Prefect server.
Its slot is leased: a batch whose process dies frees it when the lease expires.

This is the module that talks to Prefect's concurrency API; ``batches`` stays free of Prefect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from unsir_pipeline.governance import batches
from unsir_pipeline.settings.workspace import Workspace

# Seconds a held slot survives without renewal (Prefect renews it while the batch runs).
LEASE_S = 300


class BatchLockError(RuntimeError):
    """The shared batch lock cannot be used (no Prefect server, or the server refused)."""


def prefect_api_url() -> str | None:
    """The Prefect server this process talks to; None in ephemeral mode (no server)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


@contextmanager
def deletion_batch_lock(ws: Workspace) -> Iterator[bool]:
    """Yields True while this batch holds the lock, False at once when another batch holds it."""
    if ws.params.state.database_url is None:
        with batches.batch_lock(ws) as acquired:
            yield acquired
        return
    if prefect_api_url() is None:
        raise BatchLockError(
            "state.database_url is set (requests shared between machines), but no Prefect server is "
            "configured: the batch lock must be shared too; set PREFECT_API_URL (the stack's client.env does)"
        )
    with global_lock(ws.params.state.batch_lock) as acquired:
        yield acquired


def ensure_limit(name: str) -> None:
    """Create the global concurrency limit ``name`` with one slot, unless it exists (an
    operator may have changed it; it is left as it is)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another batch created it a moment ago
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextmanager
def global_lock(name: str) -> Iterator[bool]:
    """One slot of the global concurrency limit ``name``, without waiting for it."""
    import httpx
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    ensure_limit(name)
    with ExitStack() as held:
        try:
            held.enter_context(concurrency(name, occupy=1, max_retries=0, strict=True, lease_duration=LEASE_S))
        except ConcurrencySlotAcquisitionError as err:
            cause = err.__cause__
            if isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423:
                yield False  # 423 Locked: the slot is taken, another batch runs
                return
            raise BatchLockError(
                f"cannot take the batch lock {name!r} on the Prefect server {prefect_api_url()}: {err}"
            ) from err
        yield True
