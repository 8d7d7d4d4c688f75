"""core/skew.py: which backend of a pool differs, and why, from what each says of itself."""

from __future__ import annotations

from ctxroute.router.core.skew import Identity, skew

SAME = Identity(("m",), 8192, "0.32.0", (("block_size", "16"), ("cache_dtype", "auto")))


def test_twins_are_not_flagged_and_unknowns_decide_nothing() -> None:
    unknown = Identity()
    pool = [SAME, SAME, unknown]
    assert skew("m", 8192, SAME, pool) == ()
    assert skew("m", 8192, unknown, pool) == ()


def test_a_backend_serving_another_model_or_a_smaller_window_is_flagged() -> None:
    other = Identity(("llama-70b",), 8192, "0.32.0")
    assert skew("m", 8192, other, [SAME, other]) == ("serves llama-70b, not the pool's m",)
    small = Identity(("m",), 4096, "0.32.0", SAME.cache)
    reasons = skew("m", 8192, small, [SAME, SAME, small])
    assert reasons[0] == "max_model_len 4096 under the pool's max_context_tokens 8192"
    assert "max_model_len 4096 where the pool's others have 8192" in reasons
    assert skew("m", 8192, SAME, [SAME, SAME, small]) == ()  # the majority is not flagged


def test_the_odd_one_out_of_a_majority_is_flagged_and_a_tie_flags_both() -> None:
    old = Identity(("m",), 8192, "0.31.1", (("block_size", "32"), ("cache_dtype", "auto")))
    pool = [SAME, SAME, old]
    assert skew("m", 8192, old, pool) == (
        "version 0.31.1 where the pool's others have 0.32.0",
        "block_size 32 where the pool's others have 16",
    )
    assert skew("m", 8192, SAME, pool) == ()
    tie = [SAME, old]
    assert skew("m", 8192, SAME, tie) and skew("m", 8192, old, tie)


def test_what_a_backend_says_is_shown_bounded() -> None:
    hostile = Identity(("x" * 10_000,), 8192, "v" * 10_000)
    reasons = skew("m", 8192, hostile, [SAME, SAME, hostile])
    assert reasons and all(len(r) < 300 for r in reasons)
