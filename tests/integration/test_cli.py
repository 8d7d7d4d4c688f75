"""``ctxroute sim`` and ``ctxroute demo`` as a user runs them: real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

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


def test_demo_starts_pools_prints_a_curl_line_and_stops_cleanly_on_ctrl_c() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*CLI, "demo", "--base-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.decode())
            if "Ctrl-C" in lines[-1]:
                break
        text = "".join(lines)
        assert "curl" in text and "low-latency" in text and "high-memory" in text
        url = next(w for w in text.split() if w.startswith("http://"))
        with urllib.request.urlopen(url + "/health") as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, rest
    assert b"stopped" in rest
