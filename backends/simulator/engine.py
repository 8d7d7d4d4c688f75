"""The simulated engine core: KV block pool, scheduler and step-time model.

Pure: no asyncio, no clock. ``schedule()`` plans one engine step and says how long it
takes; ``complete(step, now)`` applies it (tokens computed, tokens sampled, requests
finished) and returns the requests that made progress. The async driver (runner.py)
sleeps for the step's duration between the two.

The scheduler follows vLLM's V1 scheduler in the parts that shape latency and memory:

* continuous batching with a token budget per step (``max_num_batched_tokens``);
* running requests first (decodes and unfinished chunked prefills), then waiting ones in
  arrival order, while the budget, ``max_num_seqs`` and free KV blocks allow;
* chunked prefill: a long prompt takes the remaining budget, step after step, so it
  delays the requests behind it by exactly the prefill work it carries;
* when a running request needs a block and none is free, the most recently admitted
  running request is preempted (recompute mode: its blocks are freed, it goes back to the
  front of the waiting queue); no new request is admitted in a step that preempted;
* prefix caching: full prompt blocks are keyed by a chained hash of their content; a new
  request reuses the leading blocks already in the cache and skips their prefill; freed
  blocks stay cached (evictable, LRU) until their space is needed;
* KV usage is ``blocks held by requests / num_blocks`` (cached-but-free blocks count as
  free, as in vLLM's ``kv_cache_usage_perc``).
"""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ctxroute.backends.simulator.profiles import Profile


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False, slots=True)
class SimRequest:
    """One request inside the engine. Identity equality: each object is one request."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    # tokens to generate before a natural stop (<= max_tokens means "stop" can happen)
    stop_after: int
    arrival: float
    # chained hashes of the prompt's full blocks, for prefix caching
    block_hashes: tuple[int, ...] = ()
    status: Status = Status.WAITING
    num_computed: int = 0
    output_tokens: int = 0
    num_cached_tokens: int = 0
    blocks: list[int] = field(default_factory=list)
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None
    preemptions: int = 0
    # called by the driver when the request made progress (token sampled or finished)
    on_progress: Callable[[], None] | None = None

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(slots=True)
class Step:
    """One planned engine step: which requests compute how many tokens."""

    scheduled: list[tuple[SimRequest, int]]
    prefill_tokens: int
    prefill_quadratic: float  # sum over prefill chunks of (end^2 - start^2)
    decode_context_tokens: int  # KV tokens read by the decoding requests
    preempted: int
    duration_ms: float = 0.0


@dataclass(slots=True)
class EngineCounters:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    steps: int = 0


class BlockPool:
    """Physical KV blocks with reference counts and an LRU of cached free blocks.

    Keys of full prompt blocks are content hashes (shareable, cacheable); every other
    block gets a fresh negative key.
    """

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.refcount: dict[int, int] = {}
        self.evictable: OrderedDict[int, None] = OrderedDict()
        self._private = itertools.count(-1, -1)

    @property
    def used(self) -> int:
        return len(self.refcount)

    def free_count(self) -> int:
        return self.num_blocks - len(self.refcount)

    def contains(self, key: int) -> bool:
        return key in self.refcount or key in self.evictable

    def take_cached(self, key: int) -> None:
        if key in self.evictable:
            del self.evictable[key]
            self.refcount[key] = 1
        else:
            self.refcount[key] += 1

    def can_allocate(self, n: int) -> bool:
        return n <= self.free_count()

    def allocate(self, key: int | None) -> int:
        """Take one block (caller checked ``can_allocate``). ``key=None``: private block."""
        if key is not None and self.contains(key):
            self.take_cached(key)
            return key
        if len(self.refcount) + len(self.evictable) >= self.num_blocks:
            self.evictable.popitem(last=False)
        real_key = next(self._private) if key is None else key
        self.refcount[real_key] = 1
        return real_key

    def release(self, keys: list[int], cacheable: int) -> None:
        """Drop one reference to each key; the first ``cacheable`` stay cached when free."""
        for i, key in enumerate(keys):
            left = self.refcount[key] - 1
            if left:
                self.refcount[key] = left
                continue
            del self.refcount[key]
            if key >= 0 and i < cacheable:
                self.evictable[key] = None
                self.evictable.move_to_end(key)

    def usage(self) -> float:
        return len(self.refcount) / self.num_blocks


class EngineCore:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.pool = BlockPool(profile.num_blocks)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.counters = EngineCounters()
        # (request, finish_reason) of requests finished since the last drain, for metrics
        self.finished: list[SimRequest] = []
        # extra milliseconds per step: the "slow tokens" fault
        self.extra_step_ms = 0.0

    # ---- queue operations -------------------------------------------------------------

    def add(self, req: SimRequest) -> None:
        self.waiting.append(req)

    def abort(self, req: SimRequest, now: float) -> bool:
        """Remove a request wherever it is; frees its blocks. False if already finished."""
        if req.status is Status.FINISHED:
            return False
        if req.status is Status.RUNNING:
            self.running.remove(req)
            self._free(req)
        else:
            self.waiting.remove(req)
        self._finish(req, "abort", now)
        return True

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def kv_usage(self) -> float:
        return self.pool.usage()

    # ---- one step ---------------------------------------------------------------------

    def schedule(self, now: float) -> Step:
        profile = self.profile
        budget = profile.max_num_batched_tokens
        scheduled: list[tuple[SimRequest, int]] = []
        preempted = 0

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            num_new = min(req.num_tokens - req.num_computed, budget)
            while not self._grow(req, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                preempted += 1
                if victim is req:
                    break
            else:
                scheduled.append((req, num_new))
                budget -= num_new
                i += 1

        if not preempted:
            while self.waiting and budget > 0 and len(self.running) < profile.max_num_seqs:
                req = self.waiting[0]
                if req.num_computed == 0 and not req.blocks:
                    self._attach_prefix(req)
                remaining = req.num_tokens - req.num_computed
                if not profile.enable_chunked_prefill and remaining > budget:
                    break
                num_new = min(remaining, budget)
                if not self._grow(req, num_new):
                    # it waits holding nothing (as vLLM's allocate_slots leaves it): prefix
                    # blocks kept by a waiting request would be held by no running one, and
                    # a few such requests can hold the cache so that nothing ever runs
                    self._unattach(req)
                    break
                self.waiting.popleft()
                req.status = Status.RUNNING
                if req.scheduled_at is None:
                    req.scheduled_at = now
                self.running.append(req)
                scheduled.append((req, num_new))
                budget -= num_new

        step = self._plan(scheduled, preempted)
        step.duration_ms = self.step_ms(step)
        return step

    def complete(self, step: Step, now: float) -> list[SimRequest]:
        """Apply a planned step; return the requests that sampled a token or finished."""
        progressed: list[SimRequest] = []
        counters = self.counters
        counters.steps += 1
        counters.prompt_tokens += step.prefill_tokens
        max_model_len = self.profile.max_model_len
        for req, num_new in step.scheduled:
            if req.status is not Status.RUNNING:
                continue  # aborted while the step ran
            req.num_computed += num_new
            if req.num_computed < req.num_tokens:
                continue  # chunked prefill not done yet
            req.output_tokens += 1
            counters.generation_tokens += 1
            if req.first_token_at is None:
                req.first_token_at = now
            if req.output_tokens >= req.max_tokens or req.num_tokens >= max_model_len:
                reason = "length"
            elif req.output_tokens >= req.stop_after:
                reason = "stop"
            else:
                progressed.append(req)
                continue
            self.running.remove(req)
            self._free(req)
            self._finish(req, reason, now)
            progressed.append(req)
        return progressed

    def step_ms(self, step: Step) -> float:
        """Duration of a step: weights floor or prefill compute, plus KV reads, plus overhead."""
        p = self.profile
        prefill_ms = (
            step.prefill_tokens / p.prefill_tokens_per_ms
            + p.prefill_quadratic_ms * step.prefill_quadratic
        )
        kv_gb = step.decode_context_tokens * p.kv_bytes_per_token / 1e9
        return (
            p.step_overhead_ms
            + max(p.weights_floor_ms, prefill_ms)
            + p.kv_read_ms_per_gb * kv_gb
            + self.extra_step_ms
        )

    # ---- internals --------------------------------------------------------------------

    def _plan(self, scheduled: list[tuple[SimRequest, int]], preempted: int) -> Step:
        prefill_tokens = 0
        quadratic = 0.0
        decode_context = 0
        for req, num_new in scheduled:
            start = req.num_computed
            if num_new == 1 and start >= req.prompt_tokens:
                decode_context += start + 1
            else:
                prefill_tokens += num_new
                end = start + num_new
                quadratic += float(end * end - start * start)
        return Step(scheduled, prefill_tokens, quadratic, decode_context, preempted)

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.profile.block_size)

    def _grow(self, req: SimRequest, num_new: int) -> bool:
        """Give ``req`` the blocks to hold ``num_computed + num_new`` tokens, if free."""
        need = self._blocks_for(req.num_computed + num_new) - len(req.blocks)
        if need <= 0:
            return True
        if not self.pool.can_allocate(need):
            return False
        hashes = req.block_hashes if self.profile.enable_prefix_caching else ()
        start = len(req.blocks)
        for index in range(start, start + need):
            key = hashes[index] if index < len(hashes) else None
            req.blocks.append(self.pool.allocate(key))
        return True

    def _attach_prefix(self, req: SimRequest) -> None:
        """Reuse the cached leading blocks of the prompt: their prefill is skipped."""
        if not self.profile.enable_prefix_caching:
            return
        self.counters.prefix_cache_queries += req.prompt_tokens
        hits = 0
        for key in req.block_hashes:
            if not self.pool.contains(key):
                break
            hits += 1
        if not hits:
            return
        # at least one token must be computed to sample from (vLLM recomputes the last one)
        cached_tokens = min(hits * self.profile.block_size, req.num_tokens - 1)
        for key in req.block_hashes[:hits]:
            self.pool.take_cached(key)
            req.blocks.append(key)
        req.num_computed = cached_tokens
        req.num_cached_tokens = cached_tokens
        self.counters.prefix_cache_hits += cached_tokens

    def _unattach(self, req: SimRequest) -> None:
        """Give back the cached prefix blocks a waiting request took, if it took any."""
        if req.blocks:
            self.pool.release(req.blocks, cacheable=len(req.blocks))
            req.blocks = []
            self.counters.prefix_cache_hits -= req.num_cached_tokens  # asked again later
            self.counters.prefix_cache_queries -= req.prompt_tokens
            req.num_computed = 0
            req.num_cached_tokens = 0

    def _preempt(self, req: SimRequest) -> None:
        self._free(req)
        req.status = Status.WAITING
        req.num_computed = 0
        req.preemptions += 1
        self.counters.preemptions += 1
        self.waiting.appendleft(req)

    def _free(self, req: SimRequest) -> None:
        full_prompt_blocks = min(req.num_computed, req.prompt_tokens) // self.profile.block_size
        self.pool.release(req.blocks, cacheable=full_prompt_blocks)
        req.blocks = []

    def _finish(self, req: SimRequest, reason: str, now: float) -> None:
        req.status = Status.FINISHED
        req.finish_reason = reason
        req.finished_at = now
        self.finished.append(req)
