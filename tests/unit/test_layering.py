"""The pure core stays pure: no I/O libraries, no event loop, no clock (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROUTER = Path(__file__).resolve().parents[2] / "router"
PURE = ["model", "errors", "tokens", "classify", "hashring", "planner", "sse"]
FORBIDDEN = {"aiohttp", "redis", "asyncio", "time", "datetime", "os", "socket", "uvloop",
             "vllm", "torch", "random"}  # fmt: skip


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io_loop_or_clock(module: str) -> None:
    bad = imported_roots(ROUTER / f"{module}.py") & FORBIDDEN
    assert not bad, f"router/{module}.py imports {sorted(bad)}"


def test_router_never_imports_vllm_or_torch() -> None:
    for path in ROUTER.rglob("*.py"):
        bad = imported_roots(path) & {"vllm", "torch"}
        assert not bad, f"{path} imports {sorted(bad)}"


def test_pure_modules_import_only_pure_modules_of_the_router() -> None:
    for module in PURE:
        tree = ast.parse((ROUTER / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("router."):
                target = (node.module or "").split(".")[1]
                assert target in PURE, f"router/{module}.py imports router.{target}"
