"""Circuit breakers, pure: values in, a new breaker out; the clock and the jitter are
passed in.

Error breaker, per backend::

    CLOSED --(consecutive failures, or failure rate over the window)--> OPEN
    OPEN   --(open time over; the first call that asks)--> HALF_OPEN
    HALF_OPEN --(probes all succeed)--> CLOSED      --(a probe fails)--> OPEN (longer)

- Only backend failures and successes count. Backpressure (an upstream 429/503) and
  neutral outcomes (a 4xx such as the context-length 400, a client that left, the
  router's own shedding) are not given to a breaker at all (``router.model``: FAILURES,
  BACKPRESSURE, NEUTRAL).
- The failure rate is judged only over ``min_calls`` or more recent calls (a window of the
  last ``window`` calls), so two failures out of three never open it.
- Open time: ``open_s`` x ``growth`` ^ (openings - 1), capped at ``max_open_s``, times
  1 + ``jitter`` x a number in [0, 1) given by the caller, so replicas that saw the same
  failures do not all probe at the same instant.
- Half-open admits ``half_open_probes`` calls, no more; while they run every other call is
  refused. Outcomes of calls that were not probes (they started before it opened) do not
  count while it is open or half-open.

Memory breaker, per backend: ``memory_open`` below. It opens on distress, evidence that
the engine is overcommitted (preemptions rising, the waiting queue growing on a nearly
full cache, usage at the high mark), not on the usage vLLM runs at normally: the KV marks
of ``core/kvroom.py`` keep requests within room. Hysteresis on usage; it never counts as a
failure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import NamedTuple


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    consecutive_failures: int = 5
    failure_rate: float = 0.5
    min_calls: int = 10
    window: int = 20
    open_s: float = 2.0
    growth: float = 2.0
    max_open_s: float = 60.0
    jitter: float = 0.2
    half_open_probes: int = 1


@dataclass(frozen=True, slots=True)
class Breaker:
    state: BreakerState = BreakerState.CLOSED
    recent: tuple[bool, ...] = ()  # the last ``window`` calls, True for a failure
    consecutive: int = 0  # failures in a row
    openings: int = 0  # openings since it was last closed by probes
    open_until: float = 0.0
    probes_out: int = 0  # half-open probes granted and not ended
    probes_ok: int = 0  # half-open probes that succeeded
    # state is CLOSED, as a field read for every backend a request looks at (why:
    # docs/architecture.md, "Performance budget")
    closed: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "closed", self.state is BreakerState.CLOSED)


CLOSED = Breaker()


def open_time(openings: int, settings: BreakerSettings, jitter01: float) -> float:
    base = min(settings.open_s * settings.growth ** max(0, openings - 1), settings.max_open_s)
    return base * (1.0 + settings.jitter * jitter01)


def _open(b: Breaker, now: float, settings: BreakerSettings, jitter01: float) -> Breaker:
    openings = b.openings + 1
    return Breaker(BreakerState.OPEN, (), 0, openings,
                   now + open_time(openings, settings, jitter01))  # fmt: skip


def allow(b: Breaker, now: float, settings: BreakerSettings) -> tuple[bool, bool, Breaker]:
    """May a call go to the backend now? Returns (allowed, as a half-open probe, breaker)."""
    if b.state is BreakerState.CLOSED:
        return True, False, b
    if b.state is BreakerState.OPEN:
        if now < b.open_until:
            return False, False, b
        b = replace(b, state=BreakerState.HALF_OPEN, probes_out=0, probes_ok=0)
    if b.probes_out + b.probes_ok >= settings.half_open_probes:
        return False, False, b
    return True, True, replace(b, probes_out=b.probes_out + 1)


def usable(b: Breaker, now: float, settings: BreakerSettings) -> bool:
    """Would ``allow`` let a call through now (without taking a probe)?"""
    if b.state is BreakerState.CLOSED:
        return True
    if b.state is BreakerState.OPEN:
        return now >= b.open_until and settings.half_open_probes > 0
    return b.probes_out + b.probes_ok < settings.half_open_probes


def record(b: Breaker, failed: bool, probe: bool, now: float, settings: BreakerSettings,
           jitter01: float) -> Breaker:  # fmt: skip
    """A call ended with a backend failure (``failed``) or a success."""
    if b.closed:
        if probe:
            return b  # a probe of an episode already over: it changes nothing now
        if not failed and len(b.recent) == settings.window and not any(b.recent):
            return b  # healthy and full of successes: one more changes nothing (no copy)
        recent = (*b.recent, failed)[-settings.window :]
        consecutive = b.consecutive + 1 if failed else 0
        if failed and (
            consecutive >= settings.consecutive_failures
            or (
                len(recent) >= settings.min_calls
                and sum(recent) >= settings.failure_rate * len(recent)
            )
        ):
            return _open(b, now, settings, jitter01)
        return replace(b, recent=recent, consecutive=consecutive)
    if not probe or b.state is BreakerState.OPEN:
        return b  # a call from before it opened, or a probe of an earlier half-open
    if failed:
        return _open(b, now, settings, jitter01)
    probes_ok = b.probes_ok + 1
    if probes_ok >= settings.half_open_probes:
        return CLOSED
    return replace(b, probes_out=max(0, b.probes_out - 1), probes_ok=probes_ok)


def release(b: Breaker, probe: bool) -> Breaker:
    """A granted call ended neither as a failure nor a success (the client left, a 4xx,
    backpressure): a probe slot it held is given back for another call to use."""
    if probe and b.state is BreakerState.HALF_OPEN and b.probes_out > 0:
        return replace(b, probes_out=b.probes_out - 1)
    return b


def retry_after(b: Breaker, now: float) -> float:
    """Seconds until this breaker may let a probe through (0 when it may now)."""
    if b.state is BreakerState.OPEN:
        return max(0.0, b.open_until - now)
    return 0.0


@dataclass(frozen=True, slots=True)
class MemorySettings:
    open_at: float = 0.97  # KV cache usage (0-1) at which the backend takes no new request
    close_below: float | None = None  # default 0.9 x open_at
    max_waiting: float | None = None  # vLLM's waiting queue over this is saturation too
    on_preemptions: bool = True  # vllm:num_preemptions_total rising is distress
    queue_growth_at: float | None = 0.9  # a growing queue at this usage or more is distress

    @property
    def close_at(self) -> float:
        return self.close_below if self.close_below is not None else 0.9 * self.open_at


class MemoryReading(NamedTuple):
    """One fresh reading of a backend's vLLM gauges (None: the gauge is missing)."""

    kv_usage: float | None
    waiting: float | None = None
    preemptions: float | None = None  # vllm:num_preemptions_total


class Distress(enum.StrEnum):
    """The evidence that an engine is overcommitted, the rule that opened its breaker."""

    NONE = ""
    PREEMPTING = "preempting (vllm:num_preemptions_total rose)"
    QUEUE_GROWING = "waiting queue growing on a nearly full KV cache"
    FULL = "KV cache usage at the high mark"
    QUEUE_OVER = "waiting queue over max_waiting"
    RECOVERING = "recovering: KV cache usage not yet under close_below"


def distress(now: MemoryReading, before: MemoryReading | None,
             settings: MemorySettings) -> Distress:  # fmt: skip
    """Which rule, if any, says the engine is overcommitted, from this reading and the one
    before it (None: the first)."""
    usage = now.kv_usage
    if (
        settings.on_preemptions
        and before is not None
        and now.preemptions is not None
        and before.preemptions is not None
        and now.preemptions > before.preemptions  # a restart resets it: lower is no signal
    ):
        return Distress.PREEMPTING
    if usage is not None and usage >= settings.open_at:
        return Distress.FULL
    waiting = now.waiting
    if settings.max_waiting is not None and waiting is not None and waiting > settings.max_waiting:
        return Distress.QUEUE_OVER
    if (
        settings.queue_growth_at is not None
        and usage is not None
        and usage >= settings.queue_growth_at
        and before is not None
        and now.waiting is not None
        and before.waiting  # it was waiting already, and more wait now: two readings
        and now.waiting > before.waiting
    ):
        return Distress.QUEUE_GROWING
    return Distress.NONE


def memory_open(was_open: bool, now: MemoryReading | None, before: MemoryReading | None,
                settings: MemorySettings) -> tuple[bool, Distress]:  # fmt: skip
    """The memory breaker's next state, and the rule that holds it open. ``now`` None (not
    scraped, or too old) changes nothing: unknown is not healthy, and not distressed. Once
    open it stays open until no rule fires and usage is under ``close_at`` (hysteresis)."""
    if now is None:
        return was_open, Distress.NONE
    why = distress(now, before, settings)
    if why is not Distress.NONE:
        return True, why
    if was_open and (now.kv_usage is None or now.kv_usage >= settings.close_at):
        return True, Distress.RECOVERING
    return False, Distress.NONE
