"""GPU capacity planning for a pool's vLLM engines: KV tokens, concurrent sequences per
context length, and the router limits that follow. ``ctxroute capacity POOL``.

vLLM sizes its KV cache at start-up as

    KV bytes = GPU memory x gpu_memory_utilization - weights - peak activations - overhead

(it measures the activations with a profiling forward pass of ``max_num_batched_tokens``;
this planner estimates them, and ``--reserve-gib`` replaces the estimate with a measured
figure: vLLM logs "Available KV cache memory" at start-up). Each token of context holds a
key and a value per layer and KV head:

    bytes per token = 2 x layers x KV heads x head_dim x bytes of the KV dtype

(Llama-3.1-8B in bfloat16: 2 x 32 x 8 x 128 x 2 = 128 KiB), stored in blocks of
``block_size`` tokens, so a sequence of L tokens takes ceil(L / block) blocks.

torch is used when it is installed (vLLM's environment): the GPU's memory from
``torch.cuda.mem_get_info`` when a GPU is present, and dtype sizes from torch itself. Without
it (the router's environment, CI) the GPU's memory is given as a number and dtype sizes
come from a table; the arithmetic is the same, which is what the unit tests check.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctxroute.backends.vllm.engines import EngineError, PoolEngine

GIB = 1024**3
DEFAULT_BLOCK_SIZE = 16  # vLLM's default on GPUs (its CPU build uses 128)
OVERHEAD_BYTES = 1 * GIB  # CUDA graphs, the CUDA context's share not counted by torch, NCCL

# model shapes of the Hugging Face config.json fields the planner reads
PRESETS: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {
        "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
    "llama-3.1-70b": {
        "num_hidden_layers": 80, "hidden_size": 8192, "num_attention_heads": 64,
        "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 128256,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
    "qwen2.5-7b": {
        "num_hidden_layers": 28, "hidden_size": 3584, "num_attention_heads": 28,
        "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
}  # fmt: skip

_DTYPE_BYTES = {
    "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
}  # fmt: skip
_TORCH_NAMES = {"float": "float32", "half": "float16", "fp8": "float8_e4m3fn",
                "fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}  # fmt: skip


def dtype_bytes(name: str) -> int:
    """Bytes per element of a dtype, from torch when it is installed."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        dtype = getattr(torch, _TORCH_NAMES.get(name, name), None)
        if isinstance(dtype, torch.dtype):
            return int(torch.empty((), dtype=dtype).element_size())
    try:
        return _DTYPE_BYTES[name]
    except KeyError:
        raise EngineError(f"unknown dtype {name!r} (known: {', '.join(_DTYPE_BYTES)})") from None


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    dtype: str

    @classmethod
    def from_config(cls, name: str, config: dict[str, Any]) -> ModelShape:
        """From a Hugging Face ``config.json`` (Llama-style decoder fields)."""
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            return cls(
                name=name,
                layers=int(config["num_hidden_layers"]),
                hidden=hidden,
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                intermediate=int(config["intermediate_size"]),
                vocab=int(config["vocab_size"]),
                tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                dtype=str(config.get("torch_dtype") or "bfloat16"),
            )
        except KeyError as exc:
            raise EngineError(f"model config {name}: no {exc.args[0]!r} field") from None

    @classmethod
    def from_ref(cls, ref: str) -> ModelShape:
        """A preset name, or a path to a config.json (or to the directory holding one)."""
        if ref in PRESETS:
            return cls.from_config(ref, PRESETS[ref])
        path = Path(ref)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise EngineError(f"model config {ref!r} is neither a preset "
                              f"({', '.join(PRESETS)}) nor a config.json")  # fmt: skip
        return cls.from_config(str(path), json.loads(path.read_text()))

    def params(self) -> int:
        """Parameters of a Llama-style decoder: embeddings, attention, gated MLP, norms."""
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        per_layer = attention + mlp + 2 * self.hidden
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.vocab * self.hidden + self.layers * per_layer + self.hidden + head

    def kv_bytes_per_token(self, kv_dtype: str | None = None, tensor_parallel: int = 1) -> int:
        """KV cache bytes per token of context on one GPU of a tensor-parallel group (KV
        heads are split across the group, each GPU holds at least one)."""
        kv_heads = max(1, self.kv_heads // tensor_parallel)
        width = dtype_bytes(kv_dtype or self.dtype)
        return 2 * self.layers * kv_heads * self.head_dim * width


@dataclass(frozen=True)
class CapacityPlan:
    model: str
    gpu_bytes: int
    gpu_source: str
    requested_bytes: int
    weights_bytes: int
    reserve_bytes: int  # activations + overhead
    kv_bytes: int
    bytes_per_token: int
    block_size: int
    blocks: int
    kv_tokens: int
    max_model_len: int
    max_num_seqs: int
    sequences: list[tuple[int, int]]  # (context length, concurrent sequences that fit)
    problems: list[str] = field(default_factory=list)

    def router_limits(self) -> dict[str, int]:
        """What the router's pool config should say about these engines."""
        return {
            "max_context_tokens": self.max_model_len,
            "kv_tokens": self.kv_tokens,
            "max_in_flight": self.max_num_seqs,
        }


def gpu_memory() -> tuple[int, str] | None:
    """(total bytes, what) of GPU 0, from torch; None without torch or a GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    _free, total = torch.cuda.mem_get_info(0)
    return int(total), f"torch: {torch.cuda.get_device_name(0)}"


def plan_capacity(
    shape: ModelShape,
    engine: PoolEngine,
    gpu_bytes: int,
    *,
    gpu_source: str = "given",
    reserve_bytes: int | None = None,
) -> CapacityPlan:
    """The KV cache ``engine``'s settings leave on a GPU of ``gpu_bytes``. ``reserve_bytes``:
    activations + overhead as measured; estimated when None."""
    tp = engine.tensor_parallel_size or 1
    dtype = engine.dtype if engine.dtype not in (None, "auto") else shape.dtype
    width = dtype_bytes(dtype)
    weights = shape.params() * width // tp
    if reserve_bytes is None:
        # vLLM's profiling pass: a batch of max_num_batched_tokens through the widest
        # layer (the gated MLP's two projections and the residual stream), plus float32
        # logits for every sequence the sampler may see at once
        tokens = engine.max_num_batched_tokens or max(engine.max_model_len, 2048)
        activations = tokens * (2 * shape.intermediate + 4 * shape.hidden) * width // tp
        logits = engine.max_num_seqs * shape.vocab * 4
        reserve_bytes = activations + logits + OVERHEAD_BYTES
    requested = int(gpu_bytes * engine.gpu_memory_utilization)
    kv_bytes = max(0, requested - weights - reserve_bytes)
    kv_dtype = engine.kv_cache_dtype if engine.kv_cache_dtype not in (None, "auto") else dtype
    per_token = shape.kv_bytes_per_token(kv_dtype, tp)
    block = engine.block_size or DEFAULT_BLOCK_SIZE
    blocks = kv_bytes // (per_token * block)
    kv_tokens = blocks * block
    lengths = []
    length = 1024
    while length < engine.max_model_len:
        lengths.append(length)
        length *= 2
    lengths.append(engine.max_model_len)
    sequences = [(n, min(engine.max_num_seqs, blocks // math.ceil(n / block))) for n in lengths]
    problems = []
    if kv_bytes == 0:
        problems.append(f"the weights ({weights / GIB:.1f} GiB) and activations "
                        f"({reserve_bytes / GIB:.1f} GiB) leave no room for a KV cache in "
                        f"{requested / GIB:.1f} GiB: use more GPUs or a larger "
                        f"gpu_memory_utilization")  # fmt: skip
    elif kv_tokens < engine.max_model_len:
        problems.append(f"vLLM will refuse to start: max_model_len {engine.max_model_len} "
                        f"is over the KV cache's {kv_tokens} tokens (lower max_model_len, "
                        f"or raise gpu_memory_utilization)")  # fmt: skip
    return CapacityPlan(shape.name, gpu_bytes, gpu_source, requested, weights, reserve_bytes,
                        kv_bytes, per_token, block, blocks, kv_tokens, engine.max_model_len,
                        engine.max_num_seqs, sequences, problems)  # fmt: skip


def describe(plan: CapacityPlan, pool: str) -> str:
    """The plan as the lines ``ctxroute capacity`` prints."""
    lines = [
        f"pool {pool}, model {plan.model}: {plan.bytes_per_token:,} bytes of KV per token",
        f"GPU {plan.gpu_bytes / GIB:.1f} GiB ({plan.gpu_source}) x utilisation = "
        f"{plan.requested_bytes / GIB:.1f} GiB: weights {plan.weights_bytes / GIB:.1f} GiB, "
        f"activations and overhead {plan.reserve_bytes / GIB:.1f} GiB",
        f"KV cache {plan.kv_bytes / GIB:.1f} GiB = {plan.kv_tokens:,} tokens "
        f"({plan.blocks:,} blocks of {plan.block_size})",
        f"concurrent sequences by context length (max_num_seqs {plan.max_num_seqs}):",
    ]
    for length, fits in plan.sequences:
        lines.append(f"  {length:>8,} tokens: {fits}")
    lines.append("router limits for this pool (router.yaml):")
    for key, value in plan.router_limits().items():
        lines.append(f"  {key}: {value}")
    lines.append("  (kv_tokens is the KV budget admission holds long work against; "
                 "max_in_flight = max_num_seqs: more would wait in vLLM's queue, where the "
                 "router can neither reorder nor shed it)")  # fmt: skip
    lines += [f"PROBLEM: {p}" for p in plan.problems]
    return "\n".join(lines)
