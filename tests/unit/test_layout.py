"""The size of router/'s parts, checked on the source: few modules at its root, none over
400 lines, no function over 60 (a nested function counts inside its parent too). A part
that grows past these is split where it has two jobs; an exception is listed here with its
reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROUTER = Path(__file__).resolve().parents[2] / "router"
MODULES = sorted(ROUTER.rglob("*.py"))
MAX_ROOT_MODULES = 8
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# "path:function" -> why it may be longer
EXCEPTIONS: dict[str, str] = {}


def _name(path: Path) -> str:
    return str(path.relative_to(ROUTER.parent))


def test_the_root_of_the_router_holds_few_modules() -> None:
    root = sorted(p.name for p in ROUTER.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_module_is_over_400_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES or _name(path) in EXCEPTIONS, f"{_name(path)}: {lines}"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_function_is_over_60_lines(path: Path) -> None:
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES and f"{_name(path)}:{node.name}" not in EXCEPTIONS:
                long.append(f"{node.name} ({length} lines)")
    assert not long, f"{_name(path)}: {', '.join(long)}"
