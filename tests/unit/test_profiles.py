from __future__ import annotations

import pytest
from ctxroute.backends.simulator.profiles import PROFILES, parse_overrides, validate


def test_overrides_are_typed() -> None:
    out = parse_overrides(["num_blocks=512", "enable_prefix_caching=false", "step_overhead_ms=3"])
    assert out == {"num_blocks": 512, "enable_prefix_caching": False, "step_overhead_ms": 3.0}


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("num_blocks", "expected key=value"),
        ("bogus=1", "unknown key 'bogus'"),
        ("num_blocks=many", "not a valid int"),
        ("enable_prefix_caching=maybe", "not a valid bool"),
    ],
)
def test_bad_overrides_name_the_problem(pair: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_overrides([pair])


def test_a_window_larger_than_the_kv_cache_is_refused_like_vllm_does() -> None:
    with pytest.raises(ValueError, match="larger than the KV cache"):
        validate(PROFILES["tiny"].replace(num_blocks=8))


def test_every_named_profile_is_valid() -> None:
    for profile in PROFILES.values():
        validate(profile)
