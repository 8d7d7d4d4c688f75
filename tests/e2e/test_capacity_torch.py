"""The capacity planner in vLLM's own environment, where torch is installed: dtype sizes
come from torch, agree with the table the router's environment uses, and the plan is the
same either way; with no GPU, torch finds none and the CLI asks for --gpu-gib."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from ctxroute.backends.vllm.capacity import GIB, ModelShape, plan_capacity
from ctxroute.backends.vllm.engines import load_engines
from ctxroute.backends.vllm.launch import vllm_python
from ctxroute.bench.checkout import import_path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, torch
from ctxroute.backends.vllm.capacity import GIB, ModelShape, dtype_bytes, gpu_memory, plan_capacity
from ctxroute.backends.vllm.engines import load_engines
engine = load_engines().pool("high-memory")
plan = plan_capacity(ModelShape.from_ref("llama-3.1-8b"), engine, 80 * GIB)
print(json.dumps({
    "torch": torch.__version__,
    "sizes": {d: dtype_bytes(d) for d in ("bfloat16", "float16", "float32", "fp8")},
    "gpu": gpu_memory(),
    "kv_tokens": plan.kv_tokens,
    "per_token": plan.bytes_per_token,
}))
"""


@pytest.mark.e2e
def test_the_planner_under_torch_agrees_with_the_planner_without_it(tmp_path: Path) -> None:
    python = vllm_python()
    assert python is not None, "no vLLM CPU venv: run backends/vllm/install_cpu_venv.sh"
    # vLLM's environment has not installed ctxroute: this checkout, importable as it
    env = {"PYTHONPATH": import_path(ROOT, tmp_path)}
    out = subprocess.run([str(python), "-c", SCRIPT], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch"]  # torch answered the dtype sizes
    assert result["sizes"] == {"bfloat16": 2, "float16": 2, "float32": 4, "fp8": 1}
    assert result["gpu"] is None  # a CPU-only machine: no GPU through torch
    here = plan_capacity(ModelShape.from_ref("llama-3.1-8b"), load_engines().pool("high-memory"),
                         80 * GIB)  # fmt: skip
    assert (result["kv_tokens"], result["per_token"]) == (here.kv_tokens, here.bytes_per_token)
