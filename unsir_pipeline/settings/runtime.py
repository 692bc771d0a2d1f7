"""Process settings that let a command survive a busy machine and stop cleanly.

- torch threads: ``UNSIR_TORCH_THREADS``, else ``OMP_NUM_THREADS``, else half the CPUs this
  process may use (at least 1, at most 4). torch's own default takes every core; on a loaded 2-core host that made the
  bootstrap's training run over 10 minutes instead of 2. Exported as ``OMP_NUM_THREADS``,
  ``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` too, so NumPy's BLAS and DVC's stage
  processes get the same count.
- SIGTERM is turned into an orderly exit (exit code 143), so Prefect's temporary server, the
  MLflow run and child processes are stopped as they are for Ctrl-C; a stop that Prefect's
  engine swallowed is still remembered here (:func:`was_terminated`, :func:`raise_if_stopped`).

Prefect's own settings, its temporary server and its database are
:mod:`unsir_pipeline.adapters.orchestration`'s. Everything here must run before torch or Prefect
is imported: both read these variables then; so this module imports only the standard library.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

THREADS_ENV = "UNSIR_TORCH_THREADS"
EXIT_SIGTERM = 128 + signal.SIGTERM


class RuntimeSettingError(ValueError):
    """An environment variable read here holds a value that cannot be used; names it."""


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def torch_threads() -> int:
    """The thread count from UNSIR_TORCH_THREADS, else an operator's OMP_NUM_THREADS, else half
    the available CPUs (1 to 4)."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        omp = os.environ.get("OMP_NUM_THREADS", "").strip()
        return int(omp) if omp.isdigit() and int(omp) > 0 else max(1, min(4, available_cpus() // 2))
    if not raw.isdigit() or int(raw) < 1:
        raise RuntimeSettingError(f"{THREADS_ENV}={raw!r}: expected a positive whole number of threads, e.g. 1")
    return int(raw)


def configure_threads() -> int:
    """Apply :func:`torch_threads` to this process and the processes it starts: to torch, and to
    the BLAS under NumPy and SciPy (the MIA's logistic regression), whose idle worker threads
    otherwise spin on the other cores for a while after every call."""
    threads = torch_threads()
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(threads)
    if "torch" in sys.modules:  # already imported (a test, a notebook): tell it directly
        sys.modules["torch"].set_num_threads(threads)
    if "numpy" in sys.modules:  # its BLAS read the variables when it loaded: limit its pools now
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")
    return threads


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM, so ``finally`` blocks and atexit handlers run."""


_terminated = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    remember_terminated()
    # One orderly shutdown: a second SIGTERM during clean-up must not interrupt the clean-up.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(EXIT_SIGTERM)


def remember_terminated() -> None:
    """Note that SIGTERM arrived, whichever handler took it (ours, or Prefect's engine's during a
    flow run: see ``orchestration.remember_stops_prefect_catches``)."""
    global _terminated
    _terminated = True


def was_terminated() -> bool:
    """True once SIGTERM arrived: Prefect's engine may catch :class:`Terminated` inside a run and
    re-raise it as a crash of its own, which must still end the process as terminated."""
    return _terminated


def handle_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` (Python's default ends the process at once, and
    Prefect's temporary server, a child process, then outlives it); remember SIGINT too."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigint)


_interrupted = False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _interrupted
    _interrupted = True
    signal.default_int_handler(signum, frame)  # KeyboardInterrupt, as Python's own handler


def was_interrupted() -> bool:
    """True once SIGINT arrived: Prefect's engine may swallow the KeyboardInterrupt inside a run
    (seen: the flow ended and the command exited 0), which must still end as interrupted."""
    return _interrupted


def raise_if_stopped() -> None:
    """Re-raise a stop that Prefect's engine swallowed, before anything changes the registry.

    Seen: a ``unsir forget`` stopped after its first task ran on, registered and promoted a
    version, and only then exited as interrupted. The tasks that register and promote call
    this first, so a stopped command leaves the registry as it found it."""
    if _terminated:
        raise Terminated(EXIT_SIGTERM)
    if _interrupted:
        raise KeyboardInterrupt
