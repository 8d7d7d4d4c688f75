"""The README as a newcomer reads it: a front page whose first screen holds the two
commands, and whose every command works as written. The quick ones are run here, the
tour against a live demo; the long-running ones (serve, bench, compose, kubectl, the
install lines) are checked for what they name (files, folders, subcommands)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.demo import demo_banner

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
VENV_CTXROUTE = ROOT / ".venv" / "bin" / "ctxroute"


def shell_commands() -> list[str]:
    """Every command line of the README's ``sh`` blocks (continuations joined, comments
    dropped)."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def argv(command: str) -> list[str]:
    """The command as typed; ``.venv/bin/ctxroute`` is this interpreter's when the
    checkout has no .venv of its own (tests run from another environment)."""
    words = shlex.split(command)
    if words[0] == ".venv/bin/ctxroute" and not VENV_CTXROUTE.exists():
        return [sys.executable, "-m", "ctxroute.router", *words[1:]]
    return words


def test_the_readme_is_a_front_page_with_the_two_commands_on_its_first_screen() -> None:
    lines = README.splitlines()
    assert len(lines) <= 300
    first_screen = "\n".join(lines[:45])
    assert ".venv/bin/ctxroute demo" in first_screen
    assert ".venv/bin/pytest" in first_screen
    assert "Python 3.11" in first_screen


def test_every_ctxroute_command_is_shown_as_it_runs_from_a_fresh_clone() -> None:
    for command in shell_commands():
        for word in shlex.split(command):
            if word.endswith("ctxroute") and "/" not in word.removesuffix("ctxroute"):
                assert word == ".venv/bin/ctxroute", command  # no bare `ctxroute`


def test_every_file_and_folder_a_command_names_exists() -> None:
    for command in shell_commands():
        for word in shlex.split(command):
            if re.fullmatch(r"(config|bench|k8s|backends|tests)/[\w./-]+", word):
                assert (ROOT / word).exists(), f"{command}: no {word}"


def test_the_quick_commands_work_as_written() -> None:
    quick = [c for c in shell_commands() if c.startswith(".venv/bin/ctxroute check-config")]
    assert quick
    for command in quick:
        done = subprocess.run(argv(command), cwd=ROOT, capture_output=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
    bench = [c for c in shell_commands() if c.startswith(".venv/bin/ctxroute bench")]
    for command in bench:  # too long to run here: its arguments must parse
        words = argv(command)
        done = subprocess.run([*words[: words.index("bench") + 1], "--help"], cwd=ROOT,
                              capture_output=True, timeout=60)  # fmt: skip
        assert done.returncode == 0
        for flag in (w for w in words if w.startswith("--")):
            assert flag.encode() in done.stdout, f"{command}: no {flag}"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_the_tour_works_against_the_demo_as_written() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    demo = subprocess.Popen([*argv(".venv/bin/ctxroute demo"), "--free-ports"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        _, router = demo_banner(demo)
        tour = [c for c in shell_commands() if "http://127.0.0.1:8080" in c]
        assert len(tour) >= 4
        for command in tour:
            done = subprocess.run(argv(command.replace("http://127.0.0.1:8080", router)),
                                  cwd=ROOT, capture_output=True, timeout=60)  # fmt: skip
            assert done.returncode == 0, (command, done.stderr)
            assert done.stdout, command
            if "chat/completions" in command:
                assert b"x-ctxroute-route: preferred=low-latency (fits)" in done.stdout
    finally:
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=15)
