"""The words of admission's refusals: each a ``RouterError`` with its status, reason and
Retry-After, worded for the client who gets it."""

from __future__ import annotations

from typing import TypeVar

from ctxroute.router.core.admission import OverloadGuard, WaitQueue
from ctxroute.router.errors import DeadlineExceeded, Overloaded, QueueFull, RouterError

E = TypeVar("E", bound=RouterError)


def _queued(error: type[E], message: str, queue: WaitQueue, tier: int, long: bool,
            now: float) -> E:  # fmt: skip
    """A refusal from a queue: come back when the ones ahead have drained."""
    return error(message, retry_after=queue.retry_after(tier, long, now))


def cannot_start_in_time(queue: WaitQueue, pool: str, tier_name: str, tier: int, long: bool,
                         allowed_s: float, deadline_s: float,
                         now: float) -> DeadlineExceeded:  # fmt: skip
    """Refused on arrival: the queue ahead would not go within ``allowed_s``."""
    kind = "long" if long else "short"
    which = " (its deadline)" if allowed_s == deadline_s else " (the queue's allowed wait)"
    message = (f"{queue.ahead_of(tier, long)} {kind} requests of priority '{tier_name}' or "
               f"higher wait for pool '{pool}', which finishes {kind} ones at "
               f"{queue.drains[long].rate(now):.1f} per second: this one could not start "
               f"within {allowed_s:.1f}s{which}")  # fmt: skip
    return _queued(DeadlineExceeded, message, queue, tier, long, now)


def queue_full(queue: WaitQueue, pool: str, tier_name: str, tier: int, long: bool,
               now: float) -> QueueFull:  # fmt: skip
    message = (f"the queue of pool '{pool}' is full ({queue.max_depth} requests of priority "
               f"'{tier_name}' or higher wait)")  # fmt: skip
    return _queued(QueueFull, message, queue, tier, long, now)


def evicted(queue: WaitQueue, pool: str, tier: int, long: bool, now: float) -> QueueFull:
    message = (f"the queue of pool '{pool}' is full and a request of higher priority took "
               "this one's place")  # fmt: skip
    return _queued(QueueFull, message, queue, tier, long, now)


def waited_in_vain(queue: WaitQueue, pool: str, tier: int, long: bool, waited_s: float,
                   now: float) -> DeadlineExceeded:  # fmt: skip
    message = (f"waited {waited_s:.1f}s at the router for pool '{pool}' without a backend "
               "able to start it within its deadline")  # fmt: skip
    return _queued(DeadlineExceeded, message, queue, tier, long, now)


def overloaded(guard: OverloadGuard, tier_name: str) -> Overloaded:
    """Shed on arrival by the overload guard."""
    return Overloaded(
        f"the router is overloaded (event-loop lag {guard.lag_s * 1000:.0f} ms, "
        f"RSS {guard.rss_bytes >> 20} MiB): requests of priority '{tier_name}' are shed first",
        retry_after=2.0,
    )


def shed_while_waiting(tier_name: str) -> Overloaded:
    return Overloaded(
        f"the router is overloaded: requests of priority '{tier_name}' are shed first",
        retry_after=2.0,
    )
