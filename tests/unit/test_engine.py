"""The pure engine core: scheduling, chunked prefill, preemption, prefix cache, timing."""

from __future__ import annotations

import pytest
from ctxroute.backends.simulator.engine import EngineCore, SimRequest, Status
from ctxroute.backends.simulator.profiles import PROFILES, Profile


def make_req(
    rid: str,
    prompt: int,
    max_tokens: int,
    *,
    hashes: tuple[int, ...] = (),
    stop_after: int | None = None,
) -> SimRequest:
    return SimRequest(rid, prompt, max_tokens, stop_after or max_tokens, 0.0, hashes)


def run_until_idle(core: EngineCore, limit: int = 100_000) -> float:
    now = 0.0
    for _ in range(limit):
        if not core.has_work():
            return now
        step = core.schedule(now)
        now += step.duration_ms / 1000
        core.complete(step, now)
    raise AssertionError("engine did not go idle")


def tiny(**changes: object) -> Profile:
    return PROFILES["tiny"].replace(**changes)


def test_a_request_generates_exactly_max_tokens_and_frees_its_blocks() -> None:
    core = EngineCore(tiny())
    req = make_req("a", 100, 7)
    core.add(req)
    run_until_idle(core)
    assert req.status is Status.FINISHED
    assert req.finish_reason == "length"
    assert req.output_tokens == 7
    assert core.pool.used == 0
    assert core.kv_usage() == 0.0


def test_natural_stop_before_max_tokens_is_reported_as_stop() -> None:
    core = EngineCore(tiny())
    req = make_req("a", 10, 50, stop_after=5)
    core.add(req)
    run_until_idle(core)
    assert (req.finish_reason, req.output_tokens) == ("stop", 5)


def test_chunked_prefill_spreads_a_long_prompt_over_budget_sized_steps() -> None:
    core = EngineCore(tiny(max_num_batched_tokens=512))
    req = make_req("long", 2000, 1)
    core.add(req)
    steps = []
    now = 0.0
    while core.has_work():
        step = core.schedule(now)
        steps.append(step.prefill_tokens)
        now += step.duration_ms / 1000
        core.complete(step, now)
    assert steps == [512, 512, 512, 464]


def test_a_short_request_waits_behind_a_long_prefill_that_holds_the_budget() -> None:
    core = EngineCore(tiny(max_num_batched_tokens=512))
    long = make_req("long", 2000, 4)
    core.add(long)
    now = 0.0
    step = core.schedule(now)
    now += step.duration_ms / 1000
    core.complete(step, now)
    short = make_req("short", 10, 2)
    core.add(short)
    run_until_idle(core)
    assert long.first_token_at is not None and short.first_token_at is not None
    # running requests first: the short one gets no budget until the long prefill is done
    assert short.first_token_at >= long.first_token_at


def test_running_out_of_blocks_preempts_the_latest_request_and_everything_still_finishes() -> None:
    # 16 blocks of 16 tokens = 256 tokens of KV; four requests that each grow to 100 tokens
    core = EngineCore(tiny(num_blocks=16, max_model_len=256))
    reqs = [make_req(f"r{i}", 20, 80) for i in range(4)]
    for r in reqs:
        core.add(r)
    peak = 0.0
    now = 0.0
    while core.has_work():
        step = core.schedule(now)
        now += step.duration_ms / 1000
        core.complete(step, now)
        peak = max(peak, core.kv_usage())
    assert core.counters.preemptions > 0
    assert peak > 0.9
    assert all(r.finish_reason == "length" and r.output_tokens == 80 for r in reqs)
    assert core.pool.used == 0


def test_preempted_requests_with_cached_prefixes_never_hold_the_cache_while_waiting() -> None:
    """Requests that all hit the prefix cache, preempted under pressure, wait holding no
    blocks: blocks kept by waiting requests would be held by no running one, and once they
    fill the cache nothing runs again (the simulator once deadlocked so)."""
    core = EngineCore(tiny(num_blocks=64, max_model_len=1024))
    warm = make_req("warm", 300, 1, hashes=tuple(range(1, 19)))
    core.add(warm)
    run_until_idle(core)  # its 18 prompt blocks stay cached
    # eight prompts that share its first 12 blocks, then differ; each grows to 500 tokens
    reqs = [make_req(f"r{i}", 300, 200, hashes=(*range(1, 13), *(1000 * (i + 1) + j
                                                                  for j in range(6))))
            for i in range(8)]  # fmt: skip
    for r in reqs:
        core.add(r)
    now = 0.0
    for _ in range(100_000):
        if not core.has_work():
            break
        step = core.schedule(now)
        held = sum(len(r.blocks) for r in core.waiting)
        assert held == 0, f"waiting requests hold {held} blocks"
        now += step.duration_ms / 1000
        core.complete(step, now)
    assert core.counters.preemptions > 0
    assert all(r.finish_reason == "length" and r.output_tokens == 200 for r in reqs)
    assert core.pool.used == 0


def test_no_request_is_admitted_beyond_max_num_seqs() -> None:
    core = EngineCore(tiny(max_num_seqs=3))
    for i in range(5):
        core.add(make_req(f"r{i}", 10, 5))
    core.schedule(0.0)
    assert len(core.running) == 3
    assert len(core.waiting) == 2


def test_a_shared_prompt_prefix_is_served_from_the_prefix_cache() -> None:
    core = EngineCore(tiny())
    shared = tuple(range(1, 9))  # 8 full blocks = 128 tokens
    first = make_req("first", 130, 2, hashes=shared)
    core.add(first)
    run_until_idle(core)
    assert first.num_cached_tokens == 0
    second = make_req("second", 130, 2, hashes=shared)
    core.add(second)
    step = core.schedule(0.0)
    assert second.num_cached_tokens == 128
    assert step.prefill_tokens == 2
    run_until_idle(core)
    assert core.counters.prefix_cache_hits == 128


def test_abort_frees_blocks_of_running_and_removes_waiting_requests() -> None:
    core = EngineCore(tiny(max_num_seqs=1))
    running = make_req("run", 100, 50)
    waiting = make_req("wait", 100, 50)
    core.add(running)
    core.add(waiting)
    core.schedule(0.0)
    assert core.pool.used > 0
    assert core.abort(running, 1.0)
    assert core.abort(waiting, 1.0)
    assert not core.abort(waiting, 1.0)  # already finished
    assert core.pool.used == 0
    assert not core.has_work()
    assert [r.finish_reason for r in core.finished] == ["abort", "abort"]


@pytest.mark.parametrize(
    ("tokens", "measured_ms"),
    [(1024, 24.3), (2048, 50.1), (4096, 104.9), (8192, 228.8)],
)
def test_h100_prefill_time_follows_the_measured_profile(tokens: int, measured_ms: float) -> None:
    profile = PROFILES["h100-8b"].replace(step_overhead_ms=0.0, max_num_batched_tokens=8192)
    core = EngineCore(profile)
    core.add(make_req("p", tokens, 1))
    step = core.schedule(0.0)
    assert step.duration_ms == pytest.approx(measured_ms, rel=0.10)


@pytest.mark.parametrize(
    ("context", "batch", "measured_ms"),
    [(1024, 1, 6.40), (1024, 128, 12.84), (4096, 32, 12.08), (16384, 8, 12.09)],
)
def test_h100_decode_step_follows_the_measured_profile(
    context: int, batch: int, measured_ms: float
) -> None:
    profile = PROFILES["h100-8b"].replace(step_overhead_ms=0.0)
    core = EngineCore(profile)
    step_reqs = []
    for i in range(batch):
        req = make_req(f"d{i}", context - 1, 10)
        req.num_computed = context - 1
        req.output_tokens = 1  # decoding: one new token per step
        step_reqs.append((req, 1))
    step = core._plan(step_reqs, 0)
    assert core.step_ms(step) == pytest.approx(measured_ms, rel=0.10)


def test_slow_token_fault_adds_to_every_step() -> None:
    core = EngineCore(tiny())
    core.add(make_req("a", 10, 3))
    base = core.schedule(0.0).duration_ms
    core.extra_step_ms = 25.0
    core2 = EngineCore(tiny())
    core2.extra_step_ms = 25.0
    core2.add(make_req("a", 10, 3))
    assert core2.schedule(0.0).duration_ms == pytest.approx(base + 25.0)
