"""Pure core: token bounds and which pools can hold a request."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from ctxroute.router.core.classify import eligible_pools
from ctxroute.router.core.tokens import chat_bounds, completion_bounds
from ctxroute.router.errors import ContextTooLong
from ctxroute.router.model import TokenBounds


@dataclass(frozen=True)
class Window:
    name: str
    max_context_tokens: int
    default_max_tokens: int = 100


POOLS = (Window("short", 8192), Window("long", 65536))


def bounds(n: int) -> TokenBounds:
    return TokenBounds(n, n, True, n)


def names(e) -> list[str]:  # type: ignore[no-untyped-def]
    return [POOLS[i].name for i in e.pools]


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "pools"),
    [
        (100, None, ["short", "long"]),
        (8000, 192, ["short", "long"]),
        (8000, 193, ["long"]),
        (60000, 500, ["long"]),
    ],
)
def test_every_window_that_holds_the_budget_is_eligible_smallest_first(
    prompt: int, max_tokens: int | None, pools: list[str]
) -> None:
    assert names(eligible_pools(bounds(prompt), max_tokens, POOLS)) == pools


def test_routing_uses_the_likely_count_not_the_upper_bound() -> None:
    # 5,011 tokens likely, 10,000 at most: the 8k window is preferred (a 400 from it would
    # send the request on to the larger window); the upper bound no longer decides
    e = eligible_pools(TokenBounds(2000, 10000, False, 5011), 32, POOLS)
    assert names(e) == ["short", "long"]
    assert e.budgets == (5043, 5043)


def test_rejection_uses_the_lower_bound() -> None:
    # the likely count fits no window but the lower bound fits the largest: the backend decides
    e = eligible_pools(TokenBounds(60000, 200000, False, 100000), 100, POOLS)
    assert names(e) == ["long"]
    assert "largest window decides" in e.reason
    with pytest.raises(ContextTooLong) as info:
        eligible_pools(TokenBounds(70000, 200000, False, 100000), 100, POOLS)
    assert "maximum context length is 65536 tokens" in info.value.message
    assert info.value.param == "input_tokens"


def test_explicit_max_tokens_over_the_window_is_rejected_with_both_numbers() -> None:
    with pytest.raises(ContextTooLong) as info:
        eligible_pools(bounds(60000), 10000, POOLS)
    assert "you requested 10000 output tokens" in info.value.message
    assert "total of at least 70000 tokens" in info.value.message


def test_an_absent_max_tokens_is_a_hint_not_a_demand() -> None:
    # 65,500 prompt tokens + default 100 does not fit; one output token does
    assert names(eligible_pools(bounds(65500), None, POOLS)) == ["long"]


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


def test_affinity_keys_are_fixed_size_digests_whatever_the_client_sends() -> None:
    from ctxroute.router.core.facts import hash_key

    huge = "u" * 1_000_000
    keys = {
        hash_key({"user": huge}, "m", True, None, 256),
        hash_key({}, "m", True, huge, 256),
        hash_key({"user": huge + "!"}, "m", True, None, 256),
        hash_key({}, "m", True, "\udcff", 256),  # a header value that was not UTF-8
    }
    assert len(keys) == 4  # each input its own key
    assert all(len(k) <= 20 for k in keys)
    assert hash_key({}, "m", True, "sess-1", 256) == hash_key({}, "m", True, "sess-1", 256)
