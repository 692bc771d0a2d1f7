"""When Prefect retries a task: on faults that may pass (a registry or a disk that answers next
time), never on bad input, which gets the same answer however often it is asked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun

from unsir_pipeline.governance.failures import is_bad_input


def unless_bad_input(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """A task's ``retry_condition_fn``: retry unless it failed on bad input (``is_bad_input``)."""
    err = state.result(raise_on_failure=False)
    return not (isinstance(err, BaseException) and is_bad_input(err))


class _Retries(TypedDict):
    retries: int
    retry_delay_seconds: int
    retry_condition_fn: Callable[[Task[..., Any], TaskRun, State[Any]], bool]


# ``@task(..., **IO_RETRIES)``: the retries of a task that talks to a registry, a store or DVC.
IO_RETRIES = _Retries(retries=2, retry_delay_seconds=2, retry_condition_fn=unless_bad_input)
