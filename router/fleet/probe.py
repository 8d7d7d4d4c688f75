"""Active probes, every ``probe.interval_s``: ``GET /health`` (the ledger records up or
down) and ``GET /metrics`` of every backend, whose vLLM gauges drive the memory breaker.

The metrics text is parsed by prometheus-client's parser. KV cache usage is
``vllm:kv_cache_usage_perc`` (older vLLM: ``vllm:gpu_cache_usage_perc``), the highest over
the server's engines (one full engine refuses work even when the others have room);
``vllm:num_requests_waiting``, ``vllm:num_requests_running`` and
``vllm:num_preemptions_total`` are summed over engines. The KV cache's size in tokens
(``num_gpu_blocks`` x ``block_size`` of ``vllm:cache_config_info``) becomes the backend's
KV capacity unless the configuration sets one. Each reading also says how much the engine
holds beyond the budgets the router has in flight on it (``core/kvroom.py``: what the
router does not account for itself), and feeds the memory breaker, which opens on
distress (``core/breaker.py``). A reading older than three intervals is unknown: it
neither opens nor closes the memory breaker, and /status says so.

Passive signals (a connect error in the proxy) mark a backend down at once; the probe
brings it back when it answers again. Every change is logged, and so is a probe round
that fails as a whole (it never dies silently).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import NamedTuple

import aiohttp
from ctxroute.router.aio.tasks import stop_requested
from ctxroute.router.config import RouterConfig
from ctxroute.router.core.breaker import MemoryReading, MemorySettings, memory_open
from ctxroute.router.core.kvroom import unaccounted
from ctxroute.router.fleet.identity import EVERY_ROUNDS, cache_labels, judge, read_identity
from ctxroute.router.fleet.ledger import Ledger
from ctxroute.router.fleet.topology import Fleet
from ctxroute.router.model import Backend
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("ctxroute.probe")

_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_STALE_INTERVALS = 3
# a counter's family is named without _total by the parser; an untyped one keeps it
_PREEMPTIONS = ("vllm:num_preemptions", "vllm:num_preemptions_total")


@dataclass(slots=True)
class Reading:
    """The last /metrics reading of one backend."""

    kv_usage: float | None = None
    waiting: float | None = None
    running: float | None = None
    preemptions: float | None = None  # vllm:num_preemptions_total
    cache: tuple[tuple[str, str], ...] = ()  # the cache settings a pool's engines share
    at: float | None = None  # time.monotonic() of the reading
    error: str | None = None  # why the last scrape failed, if it did
    # the reading before this one, for the breaker's rules on what changed between them
    before: MemoryReading | None = None

    def fresh(self, now: float, interval_s: float) -> bool:
        return self.at is not None and now - self.at <= _STALE_INTERVALS * interval_s


class VllmMetrics(NamedTuple):
    kv_usage: float | None  # 0-1, the fullest engine
    waiting: float | None
    running: float | None
    kv_tokens: int | None  # the KV cache's size in tokens, per engine
    preemptions: float | None = None
    cache: tuple[tuple[str, str], ...] = ()  # cache_config_info labels (fleet/identity.py)


def _kv_tokens(labels: dict[str, str]) -> int | None:
    try:
        blocks = int(labels["num_gpu_blocks"])
        size = int(labels["block_size"])
    except (KeyError, ValueError):
        return None  # "None" before the engine profiled its memory
    return blocks * size if blocks > 0 and size > 0 else None


def parse_vllm_metrics(text: str) -> VllmMetrics:
    """What the router reads from vLLM's /metrics (None where a gauge is missing)."""
    usage: dict[str, float] = {}
    waiting: float | None = None
    running: float | None = None
    kv_tokens: int | None = None
    preemptions: float | None = None
    cache: tuple[tuple[str, str], ...] = ()
    for family in text_string_to_metric_families(text):
        # the parser drops a counter's _total, never a gauge's name: compare whole names
        name = family.name
        if name in _KV:
            for sample in family.samples:
                usage[name] = max(usage.get(name, 0.0), sample.value)
        elif name == "vllm:num_requests_waiting":
            waiting = sum(s.value for s in family.samples)
        elif name == "vllm:num_requests_running":
            running = sum(s.value for s in family.samples)
        elif name == "vllm:cache_config_info":
            sizes = [t for t in (_kv_tokens(s.labels) for s in family.samples) if t]
            kv_tokens = min(sizes) if sizes else None
            cache = cache_labels(family.samples[0].labels) if family.samples else ()
        elif name in _PREEMPTIONS:
            total = [s.value for s in family.samples if s.name == _PREEMPTIONS[1]]
            preemptions = sum(total) if total else None
    kv = usage.get(_KV[0], usage.get(_KV[1]))
    return VllmMetrics(kv, waiting, running, kv_tokens, preemptions, cache)


def make_probe_session(config: RouterConfig) -> aiohttp.ClientSession:
    """The aiohttp client of the control path (the request path runs on router/upstream)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
        timeout=aiohttp.ClientTimeout(
            total=config.probe.timeout_s, connect=config.timeouts.connect_s
        ),
    )


def memory_settings(config: RouterConfig) -> MemorySettings:
    m = config.breakers.memory
    return MemorySettings(
        open_at=m.open_at,
        close_below=m.close_below,
        max_waiting=m.max_waiting,
        on_preemptions=m.on_preemptions,
        queue_growth_at=m.queue_growth_at,
    )


async def probe_once(session: aiohttp.ClientSession, fleet: Fleet, ledger: Ledger,
                     readings: list[Reading], config: RouterConfig) -> None:  # fmt: skip
    """One round: every backend's /health and /metrics at once; a slow backend delays
    nobody else's verdict."""
    probe = _Probe(session, ledger, readings, config)
    await asyncio.gather(*(probe.check_health(b) for b in fleet.backends),
                         *(probe.check_memory(b) for b in fleet.backends))  # fmt: skip


async def check_identities(session: aiohttp.ClientSession, fleet: Fleet, ledger: Ledger,
                           readings: list[Reading]) -> None:  # fmt: skip
    """What every backend says of itself, and how it differs from its pool's others."""
    identities = await asyncio.gather(
        *(read_identity(session, b, readings[b.index].cache) for b in fleet.backends)
    )
    judge(fleet, ledger, identities)


class _Probe:
    """One probe round's shared settings."""

    def __init__(self, session: aiohttp.ClientSession, ledger: Ledger, readings: list[Reading],
                 config: RouterConfig) -> None:  # fmt: skip
        self.session = session
        self.ledger = ledger
        self.readings = readings
        self.interval_s = config.probe.interval_s
        self.timeout_s = config.probe.timeout_s
        self.timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        self.memory = memory_settings(config)

    async def check_health(self, backend: Backend) -> None:
        up, why = await self._health(backend.url)
        if self.ledger.set_up(backend, up):
            if up:
                log.warning("backend %s is up", backend.url)
            else:
                log.warning("backend %s is down: %s", backend.url, why)

    async def _health(self, url: str) -> tuple[bool, str]:
        try:
            async with self.session.get(url + "/health", timeout=self.timeout) as resp:
                return resp.status == 200, f"/health answered {resp.status}"
        except TimeoutError:
            return False, f"/health did not answer within {self.timeout_s:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            return False, f"/health failed: {exc}"

    async def check_memory(self, backend: Backend) -> None:
        reading = self.readings[backend.index]
        await self._read_metrics(backend, reading)
        # per backend, as soon as its reading is in
        fresh = reading.fresh(time.monotonic(), self.interval_s)
        store = self.ledger.store
        now = MemoryReading(reading.kv_usage, reading.waiting, reading.preemptions)
        is_open, why = memory_open(
            store.memory_open(backend.index), now if fresh else None, reading.before, self.memory
        )
        if fresh:  # a stale reading changes nothing, and keeps the reason it had
            reading.before = now
            self.ledger.memory_why[backend.index] = why
        if is_open and not store.memory_open(backend.index):
            counts = self.ledger.memory_openings[backend.index]
            counts[why] = counts.get(why, 0) + 1
        store.set_memory(backend.index, is_open, why)

    async def _read_metrics(self, backend: Backend, reading: Reading) -> None:
        try:
            async with self.session.get(backend.url + "/metrics", timeout=self.timeout) as resp:
                if resp.status != 200:
                    raise ValueError(f"/metrics answered {resp.status}")
                text = await resp.text()
            kv, waiting, running, kv_tokens, preemptions, cache = parse_vllm_metrics(text)
        except TimeoutError:
            reading.error = f"/metrics did not answer within {self.timeout_s:g}s"
            return
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            reading.error = f"/metrics failed: {exc}"
            return
        reading.kv_usage, reading.waiting, reading.running = kv, waiting, running
        reading.preemptions = preemptions
        reading.cache = cache
        reading.at = time.monotonic()
        reading.error = None if kv is not None else "/metrics has no KV cache usage gauge"
        ledger = self.ledger
        i = backend.index
        if backend.kv_tokens is None and kv_tokens is not None:
            ledger.kv_tokens[i] = kv_tokens
        size = ledger.kv_tokens[i]
        if kv is not None and size is not None:
            # read right after the scrape: what the engine holds beyond the router's budgets
            reserved = ledger.board.fleet(i).budget_in_flight
            ledger.kv_unaccounted[i] = unaccounted(kv, size, reserved)


async def probe_forever(session: aiohttp.ClientSession, fleet: Fleet, ledger: Ledger,
                        readings: list[Reading], config: RouterConfig) -> None:  # fmt: skip
    rounds = 0
    while not stop_requested():  # a cancellation a library swallowed still stops it
        try:
            await probe_once(session, fleet, ledger, readings, config)
            if rounds % EVERY_ROUNDS == 0:
                await check_identities(session, fleet, ledger, readings)
        except Exception:
            if stop_requested():
                break
            log.exception("probe round failed")
        rounds += 1
        await asyncio.sleep(config.probe.interval_s)
