"""Version skew: a backend whose engine is not what its pool's others are.

Values in: what each backend says of itself (``/v1/models``, ``/version``, the labels of
``vllm:cache_config_info``), the pool's configured model and window. Out: for one backend,
why it differs, in words ("" for nothing). A backend is flagged when it does not serve
its pool's model, when its ``max_model_len`` is under the pool's ``max_context_tokens``
(requests the router sends it as fitting would be refused), or when a value the pool's
backends should share differs from the value most of them report (every backend of a
pool that disagrees without a strict majority is flagged: none can be called right).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

# the cache_config_info labels a pool's engines should share (num_gpu_blocks is left out:
# it follows each GPU's free memory at start-up and differs between healthy twins)
COMPARED_CACHE = ("block_size", "cache_dtype", "enable_prefix_caching", "gpu_memory_utilization")
_SHOWN = 64  # characters of a backend-reported value put in a reason


@dataclass(frozen=True, slots=True)
class Identity:
    """What a backend said of itself; None (or empty) where it has not said."""

    models: tuple[str, ...] | None = None  # /v1/models ids
    max_model_len: int | None = None  # /v1/models, for the pool's model
    version: str | None = None  # /version
    cache: tuple[tuple[str, str], ...] = ()  # COMPARED_CACHE labels it reported

    def value(self, name: str) -> str | None:
        if name == "version":
            return self.version
        if name == "max_model_len":
            return None if self.max_model_len is None else str(self.max_model_len)
        return dict(self.cache).get(name)


def skew(pool_model: str, pool_window: int, mine: Identity, pool: Sequence[Identity]
         ) -> tuple[str, ...]:  # fmt: skip
    """Why ``mine`` differs from its pool (``pool``: every backend's identity, its own
    included), most decisive first."""
    reasons = []
    if mine.models is not None and pool_model not in mine.models:
        served = ", ".join(m[:_SHOWN] for m in mine.models[:3]) or "no model"
        reasons.append(f"serves {served}, not the pool's {pool_model}")
    if mine.max_model_len is not None and mine.max_model_len < pool_window:
        reasons.append(f"max_model_len {mine.max_model_len} under the pool's "
                       f"max_context_tokens {pool_window}")  # fmt: skip
    for name in ("version", "max_model_len", *COMPARED_CACHE):
        value = mine.value(name)
        known = [v for v in (p.value(name) for p in pool) if v is not None]
        if value is None or len(set(known)) < 2:
            continue
        common, count = Counter(known).most_common(1)[0]
        if value != common or count * 2 <= len(known):
            others = sorted({v[:_SHOWN] for v in known if v != value})
            reasons.append(f"{name} {value[:_SHOWN]} where the pool's others have "
                           f"{', '.join(others)}")  # fmt: skip
    return tuple(reasons)
