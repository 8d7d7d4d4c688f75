"""The real-vLLM tier: one vLLM CPU server on the tiny model, and a simulator beside it.

vLLM missing is a failure, not a skip: this tier exists to prove the simulator against the
real engine. Install it with ``backends/vllm/install_cpu_venv.sh`` (``.ci/run`` does), or
point ``CTXROUTE_VLLM_PYTHON`` at a python that can import vllm.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from ctxroute.backends.simulator import PROFILES, SimConfig, Simulator
from ctxroute.backends.vllm.launch import VllmServer, vllm_python
from ctxroute.backends.vllm.tiny_model import write_tiny_model

from tests.fixtures.servers import free_port

MODEL = "tiny"
MAX_MODEL_LEN = 2048
# A small KV pool (48 blocks of 128 tokens) so that memory pressure is reachable.
VLLM_ARGS = ["--num-gpu-blocks-override", "48", "--max-num-seqs", "32"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def vllm_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    python = vllm_python()
    if python is None:
        pytest.fail(
            "real vLLM is not installed: run backends/vllm/install_cpu_venv.sh "
            "or set CTXROUTE_VLLM_PYTHON",
            pytrace=False,
        )
    server = VllmServer(
        tiny_model_dir,
        free_port(),
        MODEL,
        MAX_MODEL_LEN,
        extra_args=VLLM_ARGS,
        log_path=tmp_path_factory.mktemp("vllm-log") / "vllm.log",
    )
    # the engine's compute threads on one core, the tests and the router on the other:
    # otherwise vLLM's CPU engine takes both cores while it generates, and whatever the
    # tests measure meanwhile (a router probing /metrics every 50 ms) gets a slice a second
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")
    server.start(python)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def twin_sim(tiny_model_dir: Path) -> AsyncIterator[Simulator]:
    """A simulator configured like the vLLM server: same name, window, tokenizer."""
    profile = PROFILES["tiny"].replace(
        max_model_len=MAX_MODEL_LEN, block_size=128, num_blocks=48, max_num_seqs=32
    )
    sim = Simulator(
        SimConfig(model=MODEL, profile=profile, tokenizer=str(tiny_model_dir / "tokenizer.json"))
    )
    await sim.start()
    yield sim
    await sim.stop()
