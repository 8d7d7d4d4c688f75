"""The router's own health, measured: event-loop lag and resident memory, fed to the
gate's overload guard (``core/admission/overload.py`` decides what is shed)."""

from __future__ import annotations

import asyncio
import logging
import os
from time import monotonic
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ctxroute.router.dispatch.gate import Gate

log = logging.getLogger("ctxroute.gate")

_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


async def watch_overload(gate: Gate, interval_s: float) -> None:
    """Measure event-loop lag and RSS every ``interval_s``; shed waiters of the tiers the
    guard sheds."""
    loop = asyncio.get_running_loop()
    guard = gate.guard
    while True:
        start = loop.time()
        await asyncio.sleep(interval_s)
        lag = max(0.0, loop.time() - start - interval_s)
        before = guard.level
        guard.observe(lag, rss_bytes())
        level = guard.level
        if level != before:
            log.warning(
                "overload guard: shedding the %d lowest priority tier(s) "
                "(event-loop lag %.0f ms, RSS %d MiB)",
                level,
                lag * 1000,
                guard.rss_bytes >> 20,
            )
        if level:
            gate.shed_queued(monotonic())
