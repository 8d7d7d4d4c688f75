"""The capacity planner's arithmetic, without a GPU (and without torch: dtype sizes from
its table), against the figures measured on an H100 for Llama-3.1-8B."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ctxroute.backends.vllm.capacity import GIB, ModelShape, dtype_bytes, plan_capacity
from ctxroute.backends.vllm.engines import EngineError, PoolEngine

LLAMA_8B = ModelShape.from_ref("llama-3.1-8b")
H100 = int(79.2 * GIB)  # the device memory an H100 80GB reports


def test_llama_8b_has_its_published_parameter_count_and_128_kib_of_kv_per_token() -> None:
    assert abs(LLAMA_8B.params() - 8.03e9) / 8.03e9 < 0.005
    assert LLAMA_8B.kv_bytes_per_token() == 131_072
    assert LLAMA_8B.kv_bytes_per_token("fp8") == 65_536
    # tensor parallel splits the 8 KV heads: a quarter of them per GPU at TP 4
    assert LLAMA_8B.kv_bytes_per_token(tensor_parallel=4) == 131_072 // 4


def test_an_h100_at_0_9_leaves_the_kv_cache_measured_on_one() -> None:
    # measured: 15.0 GiB of weights, about 56 GiB and 460k tokens of KV (28,000 blocks)
    plan = plan_capacity(LLAMA_8B, PoolEngine(max_model_len=131072, max_num_seqs=32,
                                              max_num_batched_tokens=8192), H100)  # fmt: skip
    assert round(plan.weights_bytes / GIB, 1) == 15.0
    assert abs(plan.kv_tokens - 460_000) / 460_000 < 0.05
    assert plan.kv_tokens == plan.blocks * 16 and plan.kv_bytes >= plan.kv_tokens * 131_072
    assert plan.problems == []
    limits = plan.router_limits()
    assert limits == {"max_context_tokens": 131072, "kv_tokens": plan.kv_tokens,
                      "max_in_flight": 32}  # fmt: skip


def test_sequences_per_context_length_are_whole_blocks_capped_by_max_num_seqs() -> None:
    engine = PoolEngine(max_model_len=131072, max_num_seqs=32, max_num_batched_tokens=8192)
    plan = plan_capacity(LLAMA_8B, engine, H100, reserve_bytes=2 * GIB)
    lengths = [n for n, _ in plan.sequences]
    assert lengths[0] == 1024 and lengths[-1] == 131072 and lengths == sorted(lengths)
    for length, fits in plan.sequences:
        assert fits == min(32, plan.blocks // -(-length // 16))
    assert plan.sequences[-1][1] == 3  # three 128k conversations at once, as measured
    # more memory never means fewer tokens or sequences
    bigger = plan_capacity(LLAMA_8B, engine, H100 + 8 * GIB, reserve_bytes=2 * GIB)
    assert bigger.kv_tokens > plan.kv_tokens
    assert all(b >= a for (_, a), (_, b) in zip(plan.sequences, bigger.sequences, strict=True))


def test_an_engine_that_cannot_start_is_reported_not_planned() -> None:
    engine = PoolEngine(max_model_len=131072, max_num_seqs=32)
    small = plan_capacity(LLAMA_8B, engine, 24 * GIB, reserve_bytes=2 * GIB)
    assert "refuse to start" in small.problems[0] and small.kv_tokens < 131072
    none = plan_capacity(LLAMA_8B, engine, 16 * GIB)
    assert none.kv_tokens == 0 and "no room for a KV cache" in none.problems[0]


def test_a_config_json_gives_the_same_shape_as_its_preset(tmp_path: Path) -> None:
    config = {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
              "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
              "torch_dtype": "bfloat16"}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = ModelShape.from_ref(str(tmp_path))
    assert shape.params() == LLAMA_8B.params()
    assert shape.kv_bytes_per_token() == LLAMA_8B.kv_bytes_per_token()
    del config["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineError, match="hidden_size"):
        ModelShape.from_ref(str(tmp_path))
    with pytest.raises(EngineError, match="neither a preset"):
        ModelShape.from_ref("no-such-model")
    with pytest.raises(EngineError, match="unknown dtype"):
        dtype_bytes("int3")
