"""The built wheel, installed (not editable) in a fresh environment and run from a
directory outside the checkout, as a user who ran ``pip install ctxroute`` would: the
demo serves, ``bench`` runs on a shipped fleet, ``check-config`` reads a copy of a
shipped configuration, and nothing is installed under a generic top-level name."""

from __future__ import annotations

import os
import signal
import site
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.demo import demo_banner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel built from this checkout; its dependencies are
    this environment's (a path entry, not an install: the test stays offline and quick)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                    str(tmp / "dist"), str(ROOT)], check=True, timeout=300)  # fmt: skip
    (wheel,) = (tmp / "dist").glob("ctxroute-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    # this environment's packages as a plain path: its .pth files (an editable ctxroute)
    # are not read from there
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    subprocess.run([*pip, "install", "--no-deps", "--quiet", str(wheel)], check=True, timeout=300)
    return venv


def run(
    venv: Path, cwd: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / "ctxroute"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_the_wheel_puts_nothing_at_generic_top_level_names(installed: Path) -> None:
    (purelib,) = (installed / "lib").glob("python3*/site-packages")
    top = {p.name for p in purelib.iterdir()}
    assert "ctxroute" in top
    assert not top & {"router", "backends", "bench", "config", "tests"}


def test_the_installed_commands_work_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    shown = run(installed, tmp_path, "demo", "--print-config")
    assert shown.returncode == 0, shown.stderr
    (tmp_path / "mine.yaml").write_text(shown.stdout)
    checked = run(installed, tmp_path, "check-config", "mine.yaml")
    assert checked.returncode == 0, checked.stderr
    assert "mine.yaml: ok (2 pools, 4 backends)" in checked.stdout
    bench = run(installed, tmp_path, "bench", "--fleet", "one-pool", "--rate", "2", "--duration",
                "2", "--no-pin", "--json", "r.json", timeout=300)  # fmt: skip
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert "TTFT ms p50/p95/p99" in bench.stdout and (tmp_path / "r.json").exists()


def test_the_installed_demo_serves(installed: Path, tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONUNBUFFERED": "1"}
    demo = subprocess.Popen([str(installed / "bin" / "ctxroute"), "demo", "--free-ports"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    try:
        _, router = demo_banner(demo)
        body = b'{"model":"demo-model","messages":[{"role":"user","content":"hi"}],"max_tokens":4}'
        request = urllib.request.Request(router + "/v1/chat/completions", data=body,
                                         headers={"content-type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request) as r:
            assert r.status == 200
        with urllib.request.urlopen(router + "/dashboard") as r:
            assert b"<html" in r.read().lower()
    finally:
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=15)
    assert demo.returncode == 0
