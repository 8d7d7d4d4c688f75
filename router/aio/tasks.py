"""Stopping background tasks whose libraries may lose the cancellation.

redis-py turns a cancellation that lands while a command is being written into a
``ConnectionError`` (it catches ``BaseException`` around the send), and Python 3.11's
``asyncio.wait_for`` can drop one that lands as its inner call completes. A loop that
survives connection errors by design then never sees the request to stop, and a
``cancel(); await task`` waits on it forever: a router that never finishes shutting down.

So every loop that catches errors asks :func:`stop_requested` before going round again,
and owners stop their tasks with :func:`stop_tasks`, which is bounded whatever the task
does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger("ctxroute.aio")

# how long an owner waits for its tasks to end once cancelled
STOP_WAIT_S = 2.0


def stop_requested() -> bool:
    """Whether the running task was asked to stop, even if a library swallowed the
    ``CancelledError`` that said so (the request stays counted until uncancelled)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stop_tasks(tasks: Iterable[asyncio.Task[None]], wait_s: float = STOP_WAIT_S) -> int:
    """Cancel ``tasks`` and wait at most ``wait_s`` for them to end; how many did not (they
    are logged and left behind). A cancellation of the caller is not swallowed."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    if pending:
        _, pending = await asyncio.wait(pending, timeout=wait_s)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("task %s ended with %r", task.get_name(), task.exception())
    for task in pending:
        log.error("task %s did not stop within %gs of its cancellation", task.get_name(), wait_s)
    return len(pending)
