"""Pure core: token bounds, pool choice, bounded-load planning."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from router.classify import choose_pool
from router.errors import ContextTooLong
from router.hashring import PoolRing
from router.model import BackendState, PoolChoice, RequestFacts, TokenBounds
from router.planner import PlannerSettings, PoolView, bounded_load_cap, plan_route
from router.tokens import chat_bounds, completion_bounds


@dataclass(frozen=True)
class Window:
    name: str
    max_context_tokens: int
    default_max_tokens: int = 100


POOLS = (Window("short", 8192), Window("long", 65536))


def bounds(n: int) -> TokenBounds:
    return TokenBounds(n, n, True, n)


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "pool"),
    [(100, None, "short"), (8000, 192, "short"), (8000, 193, "long"), (60000, 500, "long")],
)
def test_the_smallest_window_that_holds_the_budget_wins(
    prompt: int, max_tokens: int | None, pool: str
) -> None:
    assert choose_pool(bounds(prompt), max_tokens, POOLS).pool == pool


def test_routing_uses_the_upper_bound() -> None:
    # may be 9,000 tokens: must not go to the 8k window even if it is probably 3,000
    choice = choose_pool(TokenBounds(1000, 9000, False, 2500), 10, POOLS)
    assert choice.pool == "long"
    assert choice.budget == 9010


def test_rejection_uses_the_lower_bound() -> None:
    # the lower bound fits the largest window: not rejected, the backend decides
    choice = choose_pool(TokenBounds(60000, 200000, False, 100000), 100, POOLS)
    assert choice.pool == "long"
    with pytest.raises(ContextTooLong) as info:
        choose_pool(TokenBounds(70000, 200000, False, 100000), 100, POOLS)
    assert "maximum context length is 65536 tokens" in info.value.message
    assert info.value.param == "input_tokens"


def test_explicit_max_tokens_over_the_window_is_rejected_with_both_numbers() -> None:
    with pytest.raises(ContextTooLong) as info:
        choose_pool(bounds(60000), 10000, POOLS)
    assert "you requested 10000 output tokens" in info.value.message
    assert "total of at least 70000 tokens" in info.value.message


def test_an_absent_max_tokens_is_a_hint_not_a_demand() -> None:
    # 65,500 prompt tokens + default 100 does not fit; one output token does
    assert choose_pool(bounds(65500), None, POOLS).pool == "long"


def test_heuristic_bounds_bracket_four_bytes_per_token() -> None:
    b = completion_bounds("abcd" * 1000, None)  # 4,000 bytes
    assert (b.lower, b.estimate, b.upper, b.exact) == (400, 1000, 2000, False)
    assert b.lower <= 1000 <= b.upper


def test_chat_bounds_add_template_overhead_per_message() -> None:
    one = chat_bounds([{"role": "user", "content": "x" * 400}], None)
    two = chat_bounds(
        [{"role": "system", "content": ""}, {"role": "user", "content": "x" * 400}], None
    )
    assert two.upper > one.upper


class FakeCounter:
    tokens_per_message = 4
    tokens_per_reply = 2

    def count(self, text: str) -> int:
        return len(text.split())


def test_exact_counter_counts_completions_exactly_and_chat_within_one_per_message() -> None:
    assert completion_bounds("a b c d", FakeCounter()) == TokenBounds(4, 4, True, 4)
    b = chat_bounds([{"role": "user", "content": "a b c"}], FakeCounter())
    # role 1 + content 3 + 4 per message + 2 per reply = 10, +-1 for the one message
    assert (b.lower, b.upper) == (9, 11)


@pytest.mark.parametrize(
    "bad", [[], "hi", [{"role": 1, "content": "x"}], [{"role": "user", "content": 5}], ["x"]]
)
def test_malformed_messages_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        chat_bounds(bad, None)


# ---- planner ---------------------------------------------------------------------------


def make_pool(name: str, n: int, window: int = 8192, model: str = "m") -> PoolView:
    backends = {f"{name}-{i}": BackendState(f"{name}-{i}", name, model, 64) for i in range(n)}
    ring = PoolRing(((url, 1) for url in backends), 160)
    return PoolView(name, model, window, 100, ring, backends)


def facts(key: str = "k", prompt: int = 100, max_tokens: int | None = 100) -> RequestFacts:
    return RequestFacts("m", bounds(prompt), max_tokens, False, key)


def plan(pools: tuple[PoolView, ...], f: RequestFacts, pool: str | None = None):  # type: ignore[no-untyped-def]
    choice = PoolChoice(pool or pools[0].name, f.prompt.upper + (f.max_tokens or 100), "fits")
    return plan_route(f, choice, pools, PlannerSettings())


def test_the_key_owner_is_tried_first_and_every_backend_appears_once() -> None:
    pool = make_pool("p", 4)
    order = [b.url for b in plan((pool,), facts("session-1")).candidates]
    assert order[0] == pool.ring.owner("session-1")
    assert sorted(order) == sorted(pool.backends)


def test_an_idle_backend_always_qualifies_under_bounded_load() -> None:
    pool = make_pool("p", 4)
    assert bounded_load_cap(pool.backends, 1000, 1.25) == 1000.0


def test_an_owner_over_its_bounded_load_is_passed_over_but_kept_for_retries() -> None:
    pool = make_pool("p", 4)
    owner = pool.ring.owner("hot")
    pool.backends[owner].budget_in_flight = 50_000
    order = [b.url for b in plan((pool,), facts("hot")).candidates]
    assert order[0] != owner
    assert order[-1] == owner


def test_a_short_request_avoids_a_backend_with_a_long_prefill_pending() -> None:
    pool = make_pool("p", 3)
    owner = pool.ring.owner("chat")
    # the owner's load is within bounds (others carry budgets) but it is mid long-prefill
    pool.backends[owner].pending_prefill = 6000
    for url, b in pool.backends.items():
        if url != owner:
            b.budget_in_flight = 6000
    order = [b.url for b in plan((pool,), facts("chat", prompt=50)).candidates]
    assert order[0] != owner


def test_spill_goes_to_another_pool_that_holds_the_request_when_the_pool_is_saturated() -> None:
    short, long = make_pool("short", 2, 8192), make_pool("long", 2, 65536)
    for b in short.backends.values():
        b.in_flight = b.max_in_flight  # full
    order = plan((short, long), facts("x"), "short").candidates
    assert order[0].pool == "long"
    assert {b.pool for b in order[-2:]} == {"short"}


def test_a_long_request_never_spills_to_a_window_that_cannot_hold_it() -> None:
    short, long = make_pool("short", 2, 8192), make_pool("long", 2, 65536)
    order = plan((short, long), facts("x", prompt=20000), "long").candidates
    assert {b.pool for b in order} == {"long"}


def test_down_backends_come_last() -> None:
    pool = make_pool("p", 3)
    owner = pool.ring.owner("k")
    pool.backends[owner].up = False
    order = plan((pool,), facts("k")).candidates
    assert order[-1].url == owner
