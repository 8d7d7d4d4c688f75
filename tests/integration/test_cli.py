"""``ctxroute sim`` and ``ctxroute demo`` as a user runs them: real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from ctxroute.router.config import parse_config
from ctxroute.router.core.keys import digest

from tests.fixtures.demo import demo_banner
from tests.fixtures.servers import free_port, wait_for_port

CLI = [sys.executable, "-m", "ctxroute.router"]


def test_sim_command_serves_vllm_routes_and_stops_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "sim", "--profile", "tiny", "--port", str(port), "--model", "m"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port, 20.0, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models") as r:
            assert b'"id":"m"' in r.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert f"on http://127.0.0.1:{port}".encode() in out


def test_sim_command_rejects_a_bad_override_with_exit_code_2() -> None:
    proc = subprocess.run(
        [*CLI, "sim", "--set", "num_blocks=lots"], capture_output=True, timeout=30
    )
    assert proc.returncode == 2
    assert b"not a valid int" in proc.stdout + proc.stderr


def test_demo_routes_through_the_router_and_stops_cleanly_on_ctrl_c() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*CLI, "demo", "--free-ports"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    try:
        text, router = demo_banner(proc)
        assert "low-latency" in text and "high-memory" in text and "curl" in text
        body = b'{"model":"demo-model","messages":[{"role":"user","content":"hi"}],"max_tokens":4}'
        request = urllib.request.Request(
            router + "/v1/chat/completions", data=body, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request) as r:
            assert r.status == 200
            assert r.headers["x-ctxroute-pool"] == "low-latency"
            assert json.loads(r.read())["usage"]["completion_tokens"] == 4
            route = r.headers["x-ctxroute-route"]
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, rest
    assert b"stopped" in rest
    # the demo logs each request as one readable line, with the route the header gave
    (logged,) = [line for line in rest.decode().splitlines() if " 200 chat demo-model " in line]
    assert logged.endswith(f"[{route}]") and "-> low-latency http://" in logged


def test_demo_moves_to_free_ports_when_a_configured_port_is_taken() -> None:
    # hold the demo router's configured port (if something else holds it, so much the better)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with contextlib.suppress(OSError):
        holder.bind(("127.0.0.1", 8080))
        holder.listen()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*CLI, "demo"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    try:
        text, router = demo_banner(proc)
        assert "8080 is in use" in text and "--free-ports" in text, text
        assert not router.endswith(":8080")
        # the banner points at the other ways to look at it
        for what in (f"{router}/dashboard", f"{router}/metrics", f"status {router}"):
            assert what in text, what
        with urllib.request.urlopen(router + "/readyz") as r:
            assert r.status == 200
    finally:
        holder.close()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, rest


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(text)
    return path


def test_check_config_accepts_the_shipped_files() -> None:
    for name in ("config/router.yaml", "config/demo.yaml"):
        proc = subprocess.run([*CLI, "check-config", name], capture_output=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert b"ok (2 pools, 4 backends)" in proc.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pools: []\n", "pools: Tuple should have at least 1 item"),
        (
            "pools:\n  - name: a\n    model: m\n    max_context_tokens: 100\n"
            "    backends: [{url: 'ftp://x'}]\n",
            "pools.0.backends.0.url: must start with http",
        ),
        (
            "pools:\n  - name: a\n    model: m\n    max_context_tokens: many\n"
            "    backends: [{url: 'http://x'}]\n",
            "pools.0.max_context_tokens: Input should be a valid integer",
        ),
        ("listen: {port: 8080}\npools: [\n", "is not valid YAML"),
        (
            "pools:\n  - name: a\n    model: m\n    max_context_tokens: 1000\n    colour: red\n"
            "    backends: [{url: 'http://x'}]\n",
            "pools.0.colour: Extra inputs are not permitted",
        ),
        (
            "pools:\n  - name: a\n    model: m\n    max_context_tokens: 1000\n"
            "    backends: [{url: 'http://x:1'}]\nstore: {redis_url: 'http://r:6379'}\n",
            "store.redis_url: must start with redis://",
        ),
        (
            "pools:\n  - name: a\n    model: m\n    max_context_tokens: 1000\n"
            "    backends: [{url: 'http://x:1'}]\n"
            "breakers: {memory: {open_at: 0.8, close_below: 0.9}}\n",
            "breakers.memory: close_below must not be above open_at",
        ),
        (
            "pools:\n  - name: a\n    model: m\n    max_context_tokens: 1000\n"
            "    backends: [{url: 'http://x:1'}]\n"
            "routing: {kv_marks: {long: 0.95, short: 0.9}}\n",
            "routing.kv_marks: kv_marks.long must not be above kv_marks.short",
        ),
        (
            "pools:\n  - name: a\n    model: m\n    max_context_tokens: 1000\n"
            "    backends: [{url: 'http://x:1'}]\n"
            "routing: {kv_marks: {short: 1.5}}\n",
            "routing.kv_marks.short: Input should be less than or equal to 1",
        ),
    ],
)
def test_a_bad_config_names_the_key_and_exits_2(tmp_path: Path, text: str, message: str) -> None:
    proc = subprocess.run(
        [*CLI, "check-config", str(write(tmp_path, text))], capture_output=True, timeout=30
    )
    assert proc.returncode == 2
    assert message in proc.stderr.decode()
    assert "Traceback" not in proc.stderr.decode()


def test_serve_with_env_override_and_two_workers(tmp_path: Path) -> None:
    port = free_port()
    backend = free_port()  # nothing listens: the router still starts and answers 503
    path = write(
        tmp_path,
        f"""
listen: {{host: 127.0.0.1, port: 1}}
pools:
  - name: only
    model: m
    max_context_tokens: 4096
    backends: [{{url: "http://127.0.0.1:{backend}"}}]
""",
    )
    env = {**os.environ, "CTXROUTE__LISTEN__PORT": str(port)}
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(path), "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port, 20.0, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions",
            data=b'{"prompt":"x","max_tokens":1}',
            headers={"content-type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request)
        with info.value:
            assert info.value.code == 503
            assert info.value.headers["Retry-After"] == "1"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert out.count(b"ctxroute listening on") == 2


def _stop(router: subprocess.Popen[bytes], sim: subprocess.Popen[bytes]) -> None:
    """Stop ``serve`` the way an operator does (SIGTERM: a clean exit), then its backend."""
    router.send_signal(signal.SIGTERM)
    router.communicate(timeout=15)
    sim.terminate()
    sim.wait(10)


def _sim(port: int, token_ms: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "sim", "--profile", "tiny", "--port", str(port), "--model", "m",
         "--set", f"weights_floor_ms={token_ms}"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return cast(dict[str, Any], json.loads(r.read()))


async def test_workers_share_one_view_of_load(tmp_path: Path) -> None:
    # 6 streams held open on a slow backend through 2 workers: whichever worker answers
    # /status sees all 6 (each worker alone would see about half)
    sim_port, port = free_port(), free_port()
    sim = _sim(sim_port, 300.0)
    path = write(tmp_path, ROUTER_FOR_SIM.format(port=port, backend=sim_port))
    # the router under test, outside this test's event loop (nothing here awaits it)
    proc = subprocess.Popen([*CLI, "serve", "--config", str(path), "--workers", "2"],  # noqa: ASYNC220
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for_port("127.0.0.1", sim_port, 20.0, sim)
        wait_for_port("127.0.0.1", port, 20.0, proc)
        body = {"model": "m", "prompt": "hi", "max_tokens": 40, "stream": True, "ignore_eos": True}
        streams = []
        for _ in range(6):
            # a session (a connection) each: the kernel spreads them over the workers
            s = aiohttp.ClientSession()
            r = await s.post(f"http://127.0.0.1:{port}/v1/completions", json=body)
            assert r.status == 200
            await r.content.readany()  # started
            streams.append((s, r))
        seen = {}
        for _ in range(20):
            status = await asyncio.to_thread(_status, port)
            seen[status["pid"]] = status["in_flight"]
        for s, r in streams:
            r.close()
            await s.close()
        assert len(seen) == 2, f"only one worker answered /status: {seen}"
        assert set(seen.values()) == {6}, seen
    finally:
        _stop(proc, sim)
    assert proc.returncode == 0


def test_a_worker_killed_by_a_signal_is_replaced_and_the_exit_status_says_so(
    tmp_path: Path,
) -> None:
    port = free_port()
    path = write(tmp_path, ROUTER_FOR_SIM.format(port=port, backend=free_port()))
    proc = subprocess.Popen([*CLI, "serve", "--config", str(path), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, 20.0, proc)
        time.sleep(5.5)  # past the start-up window: a death now is a crash, not a bad start
        victim = _status(port)["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        pids: set[int] = set()
        while time.monotonic() < deadline and (len(pids) < 2 or victim in pids):
            with contextlib.suppress(OSError):
                pids.add(_status(port)["pid"])
            pids.discard(victim)
            time.sleep(0.05)
        assert len(pids) == 2, "the killed worker was not replaced"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    text = out.decode()
    assert proc.returncode == 1, text
    assert "killed by SIGKILL" in text and "restarting it" in text


ROUTER_FOR_SIM = """
listen: {{host: 127.0.0.1, port: {port}}}
pools:
  - name: only
    model: m
    max_context_tokens: 2048
    backends: [{{url: "http://127.0.0.1:{backend}"}}]
"""


def test_the_redis_url_comes_from_the_environment_too() -> None:
    config = parse_config(
        {"pools": [{"name": "a", "model": "m", "max_context_tokens": 1000,
                    "backends": [{"url": "http://x:1"}]}]},
        environ={"CTXROUTE__STORE__REDIS_URL": "redis://cache:6380/2"},
    )  # fmt: skip
    assert config.store.redis_url == "redis://cache:6380/2"
    assert config.store.key_prefix == "ctxroute" and config.store.timeout_ms == 100


def _metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_every_worker_answers_metrics_for_all_of_them(tmp_path: Path) -> None:
    # 12 requests over separate connections reach both workers; a scrape of either one
    # counts all 12 (within a flush interval), and the finish reasons with them
    sim_port, port = free_port(), free_port()
    sim = _sim(sim_port, 5.0)
    path = write(tmp_path, ROUTER_FOR_SIM.format(port=port, backend=sim_port))
    proc = subprocess.Popen([*CLI, "serve", "--config", str(path), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for_port("127.0.0.1", sim_port, 20.0, sim)
        wait_for_port("127.0.0.1", port, 20.0, proc)
        body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 2, "ignore_eos": True})
        for _ in range(12):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions",
                                             data=body.encode(),
                                             headers={"content-type": "application/json",
                                                      "connection": "close"})  # fmt: skip
            with urllib.request.urlopen(request, timeout=10) as r:
                assert r.status == 200
        time.sleep(1.5)  # each worker writes its row at least once a second
        pids = {_status(port)["pid"] for _ in range(20)}
        assert len(pids) == 2, f"only one worker answered: {pids}"
        counts, lengths = [], []
        for _ in range(20):  # new connections: the kernel spreads them over both workers
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            counts.append(_metric(text, "ctxroute_requests_total", pool="only",
                                  status_class="2xx"))  # fmt: skip
            lengths.append(_metric(text, "ctxroute_finish_reason_total", pool="only",
                                   reason="length"))  # fmt: skip
        assert set(counts) == {12.0}, counts
        assert set(lengths) == {12.0}, lengths
    finally:
        _stop(proc, sim)
    assert proc.returncode == 0


async def test_a_drain_through_one_worker_reaches_every_worker(tmp_path: Path) -> None:
    # no Redis: the workers share their drains through the load board's shared memory, so
    # a drain made through whichever worker answered /admin/drain is obeyed by all
    sim_port, port = free_port(), free_port()
    sim = _sim(sim_port, 1.0)
    admin_key = "sk-ctx-cli-admin-0123456789abcdefghijklmnopqrstuvwxyzAB"
    config = ROUTER_FOR_SIM.format(port=port, backend=sim_port) + (
        f"admin: {{keys: [{digest(admin_key)}]}}\n"
    )
    path = write(tmp_path, config)
    proc = subprocess.Popen([*CLI, "serve", "--config", str(path), "--workers", "2"],  # noqa: ASYNC220
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port("127.0.0.1", sim_port, 20.0, sim)
        wait_for_port("127.0.0.1", port, 20.0, proc)
        headers = {"Authorization": f"Bearer {admin_key}"}
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/admin/drain", json={"backend": "only-1"},
                              headers=headers) as r:  # fmt: skip
                assert r.status == 200, await r.text()
        await asyncio.sleep(0.3)
        seen: dict[int, bool] = {}
        for _ in range(30):  # a connection each: the kernel spreads them over the workers
            status = await asyncio.to_thread(_status, port)
            seen[status["pid"]] = status["pools"][0]["backends"][0]["drained"]
        assert len(seen) == 2, f"only one worker answered /status: {seen}"
        assert all(seen.values()), seen
    finally:
        _stop(proc, sim)
    assert proc.returncode == 0
