"""``ctxroute serve`` stopped as Kubernetes stops it (SIGTERM), a real process: /readyz
answers 503 at once, new requests get 503 ``shutting_down``, the answers in flight finish
within ``shutdown.grace_s``, and a stream still running when the grace runs out ends with
an SSE error event, not mid-chunk; none of it is logged as a client disconnect."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from ctxroute.backends.simulator import Simulator

from tests.conftest import SimFactory
from tests.fixtures.servers import free_port, wait_for_port

CLI = [sys.executable, "-m", "ctxroute.router"]


async def _serve(
    tmp_path: Path, sim: Simulator, grace_s: float
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = tmp_path / "router.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"shutdown: {{grace_s: {grace_s}}}\n"
        "pools:\n  - {name: only, model: sim-model, max_context_tokens: 4096,\n"
        f"     backends: [{{url: '{sim.url}'}}]}}\n"
    )
    proc = subprocess.Popen([*CLI, "serve", "--config", str(config)],  # noqa: ASYNC220
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 20.0, proc)
    return proc, f"http://127.0.0.1:{port}"


async def _slow_tokens(s: aiohttp.ClientSession, sim: Simulator, ms: float) -> None:
    async with s.post(sim.url + "/sim/faults", json={"slow_token_ms": ms}) as r:
        assert r.status == 200


STREAM = {"model": "sim-model", "prompt": "hello", "stream": True, "ignore_eos": True}


@pytest.mark.timeout(60)
async def test_sigterm_lets_answers_in_flight_finish_and_refuses_new_ones(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    sim = await make_sim(model="sim-model")
    proc, url = await _serve(tmp_path, sim, grace_s=20)
    try:
        async with aiohttp.ClientSession() as s:
            await _slow_tokens(s, sim, 100)  # 20 tokens: about 2 s
            async with s.post(url + "/v1/completions", json={**STREAM, "max_tokens": 20}) as r:
                assert r.status == 200
                first = await r.content.readany()
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                async with aiohttp.ClientSession() as other:  # new connections meanwhile
                    async with other.get(url + "/readyz") as ready:
                        assert ready.status == 503 and "shutting down" in await ready.text()
                    async with other.post(url + "/v1/completions",
                                          json={**STREAM, "max_tokens": 2}) as refused:  # fmt: skip
                        assert refused.status == 503
                        assert refused.headers["x-ctxroute-reject"] == "shutting_down"
                        assert refused.headers["Retry-After"] == "1"
                rest = await r.read()
            body = first + rest
            assert body.endswith(b"data: [DONE]\n\n") and b'"error"' not in body
            assert body.count(b'"text"') >= 20  # every token came
        _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    log = err.decode()
    assert "client_gone" not in log and "every answer in flight finished" in log


@pytest.mark.timeout(60)
async def test_when_the_grace_runs_out_a_stream_ends_with_an_error_event(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    sim = await make_sim(model="sim-model")
    proc, url = await _serve(tmp_path, sim, grace_s=0.5)
    try:
        async with aiohttp.ClientSession() as s:
            await _slow_tokens(s, sim, 100)  # 200 tokens: about 20 s, far past the grace
            async with s.post(url + "/v1/completions", json={**STREAM, "max_tokens": 200}) as r:
                assert r.status == 200
                first = await r.content.readany()
                proc.send_signal(signal.SIGTERM)
                body = first + await asyncio.wait_for(r.read(), 10)
        _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    error = json.loads(events[-2].removeprefix(b"data: "))["error"]
    assert "shutting down" in error["message"] and error["code"] == 503
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("logger") == "ctxroute.request"]
    assert len(requests) == 1 and requests[0]["outcome"] != "client_gone", requests
