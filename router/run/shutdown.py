"""A server's orderly stop (``shutdown`` in the config): on the first SIGTERM or SIGINT,
``/readyz`` answers 503 at once and requests are served on for ``prestop_s``; then new
requests get 503 ``shutting_down`` (Retry-After, connection closed) while the answers in
flight finish, for at most ``grace_s``; then each stream still running ends with an SSE
error event saying the router is shutting down (never cut mid-chunk), and what is left is
cancelled. None of it counts as a client disconnect. A second signal skips the waiting.

Kubernetes: the pod's ``terminationGracePeriodSeconds`` must cover its preStop pause,
``prestop_s`` and ``grace_s`` (k8s/base/router.yaml: 5 + 0 + 90 of 120 s)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ctxroute.router.api.context import RouterContext
from ctxroute.router.api.lifecycle import Lifecycle, Phase
from ctxroute.router.config import ShutdownConfig

log = logging.getLogger("ctxroute.serve")

CUT_MESSAGE = "the router is shutting down: this answer was cut short"
_POLL_S = 0.05
_CUT_WAIT_S = 2.0  # for the streams to write their error events, then for the cancelled


async def stop_gracefully(ctx: RouterContext, settings: ShutdownConfig,
                          hurry: asyncio.Event) -> None:  # fmt: skip
    """Run the stop described above; returns once nothing is in flight (or it was cut)."""
    life = ctx.lifecycle
    life.enter(Phase.STOPPING)
    log.warning("stopping: /readyz answers 503; serving on for %gs, then up to %gs for the "
                "%d requests in flight", settings.prestop_s, settings.grace_s,
                len(life.handlers))  # fmt: skip
    await _sleep(settings.prestop_s, hurry)
    life.enter(Phase.REFUSING)
    finished = await _until_idle(life, settings.grace_s, hurry)
    if finished:
        log.warning("stopping: every answer in flight finished")
        return
    life.enter(Phase.CUTTING)
    streams = ctx.dispatcher.proxy.relays.stop_all(CUT_MESSAGE)
    log.warning("stopping: the grace ran out; %d requests still in flight (%d streams end "
                "with an error event)", len(life.handlers), streams)  # fmt: skip
    if not await _until_idle(life, _CUT_WAIT_S, None):
        for task in list(life.handlers):
            task.cancel()
        await _until_idle(life, _CUT_WAIT_S, None)


async def _sleep(seconds: float, hurry: asyncio.Event) -> None:
    if seconds > 0 and not hurry.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), seconds)


async def _until_idle(life: Lifecycle, seconds: float, hurry: asyncio.Event | None) -> bool:
    """Whether every handler ended within ``seconds`` (False at once when hurried)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while life.handlers:
        if (hurry is not None and hurry.is_set()) or loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True
