"""``ctxroute sim`` and ``ctxroute demo`` as a user runs them: real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.servers import free_port, wait_for_port

CLI = [sys.executable, "-m", "router"]


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
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.decode())
            if "Ctrl-C" in lines[-1]:
                break
        text = "".join(lines)
        assert "low-latency" in text and "high-memory" in text and "curl" in text
        router = text.split("router on ", 1)[1].split()[0]
        body = b'{"model":"demo-model","messages":[{"role":"user","content":"hi"}],"max_tokens":4}'
        request = urllib.request.Request(
            router + "/v1/chat/completions", data=body, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request) as r:
            assert r.status == 200
            assert r.headers["x-ctxroute-pool"] == "low-latency"
            assert json.loads(r.read())["usage"]["completion_tokens"] == 4
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, rest
    assert b"stopped" in rest


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
