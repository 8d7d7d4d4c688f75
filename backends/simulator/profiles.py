"""Named latency/memory profiles of the simulated engine.

A profile is a plain frozen value: the engine limits (KV block pool, max_num_seqs, step
token budget, max_model_len) and the coefficients of the step-time model
(``timing.step_ms``). Every field can be overridden on the command line
(``ctxroute sim --set num_blocks=2048``) or by keyword in tests (``profile.replace(...)``).

``h100-8b`` follows ../shared/GPU_PROFILE.md (an 8B Llama on one H100 80GB, measured):
  * KV: 131,072 bytes per token; 28,000 blocks of 16 tokens at gpu_memory_utilization 0.9;
  * prefill: ``tokens / 42.0 + 4.4e-7 * tokens**2`` ms (the quadratic term is attention);
  * decode step: ``6.2 + 0.34 * KV gigabytes read`` ms (6.2 ms is reading 16 GB of weights);
  * plus a scheduling/sampling overhead per step that the kernel timings do not include.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    # engine limits (vLLM engine arguments of the same meaning)
    block_size: int
    num_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    # step-time model, all in milliseconds
    weights_floor_ms: float = 6.2
    prefill_tokens_per_ms: float = 42.0
    prefill_quadratic_ms: float = 4.4e-7
    kv_read_ms_per_gb: float = 0.34
    kv_bytes_per_token: int = 131_072
    step_overhead_ms: float = 2.0
    # output length when the client does not force max_tokens (ignore_eos): a seeded draw
    # around this mean, capped by max_tokens
    mean_output_tokens: int = 200

    def replace(self, **changes: Any) -> Profile:
        return dataclasses.replace(self, **changes)

    @property
    def kv_capacity_tokens(self) -> int:
        return self.block_size * self.num_blocks


PROFILES: dict[str, Profile] = {
    # An 8B Llama on one H100 80GB (GPU_PROFILE.md).
    "h100-8b": Profile(
        name="h100-8b",
        block_size=16,
        num_blocks=28_000,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        max_model_len=65_536,
    ),
    # A 1B model on a small, fast inference GPU (24 GB class): light weights, cheap KV
    # (32 KiB per token), short window; for the low-latency pool of demos.
    "l4-1b": Profile(
        name="l4-1b",
        block_size=16,
        num_blocks=8_192,
        max_num_seqs=128,
        max_num_batched_tokens=4096,
        max_model_len=8192,
        weights_floor_ms=4.0,
        prefill_tokens_per_ms=30.0,
        prefill_quadratic_ms=1.0e-6,
        kv_read_ms_per_gb=3.3,
        kv_bytes_per_token=32_768,
        step_overhead_ms=1.0,
        mean_output_tokens=120,
    ),
    # Small and quick, for tests: a KV pool that fills with a handful of requests.
    "tiny": Profile(
        name="tiny",
        block_size=16,
        num_blocks=256,
        max_num_seqs=16,
        max_num_batched_tokens=512,
        max_model_len=2048,
        weights_floor_ms=2.0,
        prefill_tokens_per_ms=200.0,
        prefill_quadratic_ms=0.0,
        kv_read_ms_per_gb=0.0,
        kv_bytes_per_token=4096,
        step_overhead_ms=0.5,
        mean_output_tokens=32,
    ),
}


def profile_field_types() -> dict[str, type]:
    """Field name -> Python type, for parsing ``--set key=value`` overrides."""
    return {f.name: type(getattr(PROFILES["tiny"], f.name)) for f in dataclasses.fields(Profile)}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["num_blocks=512", "enable_prefix_caching=false"]`` -> typed dict; clear errors."""
    types = profile_field_types()
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"override {pair!r}: expected key=value")
        if key not in types or key == "name":
            known = ", ".join(sorted(k for k in types if k != "name"))
            raise ValueError(f"override {pair!r}: unknown key {key!r} (known: {known})")
        kind = types[key]
        try:
            if kind is bool:
                lowered = raw.strip().lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(raw)
                out[key] = lowered in ("1", "true", "yes", "on")
            else:
                out[key] = kind(raw)
        except ValueError:
            raise ValueError(f"override {pair!r}: {raw!r} is not a valid {kind.__name__}") from None
    return out


def validate(profile: Profile) -> None:
    """The checks vLLM itself makes at start-up, with its reasons."""
    for name in ("block_size", "num_blocks", "max_num_seqs", "max_num_batched_tokens"):
        if getattr(profile, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(profile, name)}")
    if profile.max_model_len > profile.kv_capacity_tokens:
        raise ValueError(
            f"max_model_len {profile.max_model_len} is larger than the KV cache can hold "
            f"({profile.num_blocks} blocks x {profile.block_size} = "
            f"{profile.kv_capacity_tokens} tokens)"
        )
    if (
        not profile.enable_chunked_prefill
        and profile.max_num_batched_tokens < profile.max_model_len
    ):
        raise ValueError(
            "without chunked prefill, max_num_batched_tokens must be >= max_model_len "
            f"({profile.max_num_batched_tokens} < {profile.max_model_len})"
        )
