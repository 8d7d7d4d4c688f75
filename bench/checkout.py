"""Running the router of another checkout of ctxroute, for the benchmarks that compare two
builds in the same run (``--baseline DIR``)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path


def router_command(root: Path, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """The command and the environment that run the router of the checkout at ``root``.

    A checkout that installs its folders as one ``ctxroute`` namespace (pyproject.toml's
    package-dir) is run through a tree of links named as the installed package, so that
    this interpreter's own installation is not the one imported; an older checkout ran
    as the top-level package ``router``."""
    root = root.resolve()
    if '"ctxroute.router" = "router"' not in (root / "pyproject.toml").read_text():
        return [sys.executable, "-m", "router"], {"PYTHONPATH": str(root)}
    tree = tmp / ("pkg-" + hashlib.sha1(str(root).encode()).hexdigest()[:12])
    package = tree / "ctxroute"
    package.mkdir(parents=True, exist_ok=True)
    for name in ("router", "backends", "bench", "config"):
        link = package / name
        if not link.exists():
            link.symlink_to(root / name)
    return [sys.executable, "-m", "ctxroute.router"], {"PYTHONPATH": str(tree)}
