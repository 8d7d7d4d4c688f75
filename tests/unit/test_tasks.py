"""Stopping background tasks is bounded even when a library swallows the cancellation
(redis-py turns one that lands mid-send into a ConnectionError)."""

from __future__ import annotations

import asyncio

from ctxroute.router.aio.tasks import stop_requested, stop_tasks


async def _loop_that_survives_errors(rounds: list[int], honour: bool,
                                     quit_: asyncio.Event | None = None) -> None:  # fmt: skip
    """A loop as the stores write them: a failed round is logged and the next one starts.
    The cancellation arrives inside a 'command' that turns it into a ConnectionError."""
    while quit_ is None or not quit_.is_set():
        try:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError as exc:
                raise ConnectionError("Error UNKNOWN while writing to socket") from exc
        except ConnectionError as exc:
            if honour and stop_requested():
                raise asyncio.CancelledError from exc
        rounds.append(1)
        await asyncio.sleep(0.001)


async def test_a_loop_that_asks_stop_requested_ends_cancelled() -> None:
    rounds: list[int] = []
    task = asyncio.get_running_loop().create_task(_loop_that_survives_errors(rounds, True))
    await asyncio.sleep(0.01)
    assert await stop_tasks([task], wait_s=5.0) == 0
    assert task.cancelled() and rounds == []


async def test_stop_tasks_returns_within_its_bound_when_the_loop_ignores_the_request() -> None:
    rounds: list[int] = []
    quit_ = asyncio.Event()
    task = asyncio.get_running_loop().create_task(_loop_that_survives_errors(rounds, False, quit_))
    await asyncio.sleep(0.01)
    started = asyncio.get_running_loop().time()
    assert await stop_tasks([task], wait_s=0.2) == 1  # left behind, said so, not waited on
    assert asyncio.get_running_loop().time() - started < 5.0
    assert not task.done() and rounds  # it really did go round again
    quit_.set()
    task.cancel()
    await asyncio.wait([task], timeout=5.0)
    assert task.done()


async def test_stop_tasks_does_not_swallow_its_callers_cancellation() -> None:
    rounds: list[int] = []
    quit_ = asyncio.Event()
    stubborn = asyncio.get_running_loop().create_task(
        _loop_that_survives_errors(rounds, False, quit_)
    )
    await asyncio.sleep(0.01)
    stopper = asyncio.get_running_loop().create_task(stop_tasks([stubborn], wait_s=60.0))
    await asyncio.sleep(0.05)
    stopper.cancel()
    done, _ = await asyncio.wait([stopper], timeout=5.0)
    assert done and stopper.cancelled()
    quit_.set()
    stubborn.cancel()
    await asyncio.wait([stubborn], timeout=5.0)


async def test_stop_requested_is_false_in_a_task_nobody_cancelled() -> None:
    assert not stop_requested()
