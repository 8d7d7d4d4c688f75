"""Importing and running another checkout of ctxroute: for the benchmarks that compare two
builds in the same run (``--baseline DIR``), and for a Python that has not installed it
(vLLM's own environment, in the e2e tier)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path


def installs_as_ctxroute(root: Path) -> bool:
    """Whether the checkout installs its folders as one ``ctxroute`` namespace (its
    pyproject.toml's package-dir); older ones were the top-level package ``router``."""
    return '"ctxroute.router" = "router"' in (root / "pyproject.toml").read_text()


def import_path(root: Path, tmp: Path) -> str:
    """A ``PYTHONPATH`` entry under which ``import ctxroute.router`` imports the checkout
    at ``root``: a tree of links named as the installed package (the folders of the
    checkout keep their own names), so that no installed ctxroute is imported instead."""
    root = root.resolve()
    tree = tmp / ("pkg-" + hashlib.sha1(str(root).encode()).hexdigest()[:12])
    package = tree / "ctxroute"
    package.mkdir(parents=True, exist_ok=True)
    for name in ("router", "backends", "bench", "config"):
        link = package / name
        if not link.exists():
            link.symlink_to(root / name)
    return str(tree)


def router_command(root: Path, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """The command and the environment that run the router of the checkout at ``root``."""
    if not installs_as_ctxroute(root):
        return [sys.executable, "-m", "router"], {"PYTHONPATH": str(root.resolve())}
    return [sys.executable, "-m", "ctxroute.router"], {"PYTHONPATH": import_path(root, tmp)}
