"""backends/vllm/engines.yaml is the one source of each pool's vLLM arguments:
compose.gpu.yaml and the Kubernetes manifests pass exactly what ``ctxroute vllm-args``
prints, and the router configs shipped beside them agree with the engines (windows,
in-flight limits).
Also ``ctxroute vllm-args`` and ``ctxroute capacity`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ctxroute.backends.vllm.engines import load_engines

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "ctxroute.router"]
ENGINES = load_engines()
POOL_OF_SERVICE = {"short": "low-latency", "long": "high-memory"}


def ctxroute(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_vllm_args_prints_each_pools_flags_for_a_shell_and_as_json() -> None:
    out = ctxroute("vllm-args", "high-memory")
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith("vllm serve --model meta-llama/Llama-3.1-8B-Instruct ")
    assert "--max-model-len 131072" in line and "--enable-chunked-prefill" in line
    as_json = json.loads(ctxroute("vllm-args", "low-latency", "--format", "json").stdout)
    assert as_json == ENGINES.args("low-latency")
    assert "--enable-chunked-prefill" not in as_json  # false: left out
    bad = ctxroute("vllm-args", "no-such-pool")
    assert bad.returncode == 2
    assert "no pool 'no-such-pool'" in bad.stderr and "low-latency, high-memory" in bad.stderr


@pytest.mark.parametrize("kind", ["short", "long"])
def test_compose_passes_exactly_the_engines_files_arguments(kind: str) -> None:
    compose = yaml.safe_load((ROOT / "compose.gpu.yaml").read_text())  # the GPU stack's
    assert compose[f"x-vllm-{kind}-args"] == ENGINES.args(POOL_OF_SERVICE[kind])
    for name in (f"vllm-{kind}-1", f"vllm-{kind}-2"):
        assert compose["services"][name]["command"] == ENGINES.args(POOL_OF_SERVICE[kind])


@pytest.mark.parametrize("kind", ["short", "long"])
def test_the_kubernetes_statefulsets_pass_exactly_the_engines_files_arguments(kind: str) -> None:
    docs = list(yaml.safe_load_all((ROOT / "k8s/base" / f"vllm-{kind}.yaml").read_text()))
    (workload,) = [d for d in docs if d and d["kind"] in ("StatefulSet", "Deployment")]
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ENGINES.args(POOL_OF_SERVICE[kind])


def _router_configs() -> list[tuple[str, dict[str, Any]]]:
    names = ("config/router.yaml", "k8s/base/router-config.yaml")  # the k8s ConfigMap's file
    return [(name, yaml.safe_load((ROOT / name).read_text())) for name in names]


def test_the_shipped_router_configs_agree_with_the_engines_they_front() -> None:
    for name, config in _router_configs():
        for pool in config["pools"]:
            engine = ENGINES.pool(pool["name"])
            # the router's window is the engine's: smaller wastes it, larger gets vLLM's 400s
            assert pool["max_context_tokens"] == engine.max_model_len, name
            assert pool["model"] == ENGINES.served_model_name, name
            for backend in pool["backends"]:
                # never more in flight than the engine runs at once
                assert backend.get("max_in_flight", 64) <= engine.max_num_seqs, name


def test_capacity_prints_kv_tokens_sequences_and_router_limits() -> None:
    out = ctxroute("capacity", "high-memory", "--gpu-gib", "80")
    assert out.returncode == 0, out.stderr
    assert "131,072 bytes of KV per token" in out.stdout
    assert "max_context_tokens: 131072" in out.stdout and "max_in_flight: 32" in out.stdout
    plan = json.loads(ctxroute("capacity", "high-memory", "--gpu-gib", "80", "--json").stdout)
    assert plan["router_limits"]["kv_tokens"] == plan["kv_tokens"] > 400_000
    assert plan["sequences"][-1] == [131072, 3]
    # a GPU too small for a 128k window: a non-zero exit, and why
    small = ctxroute("capacity", "high-memory", "--gpu-gib", "24")
    assert small.returncode == 1 and "PROBLEM: vLLM will refuse to start" in small.stdout


def test_capacity_without_a_gpu_or_a_number_says_what_to_pass() -> None:
    # the router's environment has no torch (and this machine no GPU)
    out = ctxroute("capacity", "low-latency")
    assert out.returncode == 2
    assert "pass --gpu-gib" in out.stderr
