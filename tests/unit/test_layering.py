"""The layering of router/ (docs/architecture.md "Layout"), checked on the source.

- router/core/ (with model.py and errors.py) is pure: no I/O library, no event loop, no
  clock, and it imports nothing from the router outside the pure set.
- router/upstream/ is the transport: it knows neither the handlers nor the planner.
- each folder of router/ imports only from its own layer and the layers below it
  (``LAYERS``): the core none of the edges, the HTTP face (router/api/) nothing but the
  process that runs it.
- nothing in router/ imports vllm or torch, or reaches into aiohttp's private attributes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROUTER = Path(__file__).resolve().parents[2] / "router"
PURE = sorted(
    [p for p in (ROUTER / "core").rglob("*.py")] + [ROUTER / "model.py", ROUTER / "errors.py"]
)
# import names: router/ is installed as ctxroute.router (pyproject.toml)
PURE_MODULES = {"ctxroute." + ".".join(p.relative_to(ROUTER.parent).with_suffix("").parts)
                for p in PURE}  # fmt: skip
FORBIDDEN = {"aiohttp", "redis", "asyncio", "time", "datetime", "os", "socket", "uvloop",
             "vllm", "torch", "random", "httptools", "multiprocessing", "mmap"}  # fmt: skip


def _name(path: Path) -> str:
    return str(path.relative_to(ROUTER.parent))


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imports(path)}


def test_the_pure_set_is_what_the_layout_says() -> None:
    names = {p.stem for p in PURE}
    assert {"classify", "facts", "hashring", "planner", "sse", "tokens", "model"} <= names


@pytest.mark.parametrize("path", PURE, ids=_name)
def test_pure_modules_import_no_io_loop_or_clock(path: Path) -> None:
    bad = roots(path) & FORBIDDEN
    assert not bad, f"{_name(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", PURE, ids=_name)
def test_pure_modules_import_only_pure_modules_of_the_router(path: Path) -> None:
    for name in imports(path):
        if not name.startswith("ctxroute.router."):
            continue
        # "from router.core import planner" names router.core.planner; either form is fine
        ok = name in PURE_MODULES or any(name.startswith(m + ".") for m in PURE_MODULES)
        ok = ok or name == "ctxroute.router.core"
        assert ok, f"{_name(path)} imports {name}"


def test_the_transport_knows_nothing_of_routing_or_handlers() -> None:
    allowed = PURE_MODULES | {"ctxroute.router.upstream"}
    for path in (ROUTER / "upstream").glob("*.py"):
        for name in imports(path):
            if name.startswith("ctxroute.router."):
                ok = any(name == m or name.startswith(m + ".") for m in allowed)
                assert ok, f"{_name(path)} imports {name}"


def test_router_never_imports_vllm_or_torch() -> None:
    for path in ROUTER.rglob("*.py"):
        bad = roots(path) & {"vllm", "torch"}
        assert not bad, f"{_name(path)} imports {sorted(bad)}"


def _private_attributes(path: Path) -> list[str]:
    """Attribute reads like ``x._foo`` where ``x`` is not self/cls: in a module that talks
    to aiohttp these are how private aiohttp state leaks in (writer.chunked's cousins)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or attr.startswith("__"):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in {"self", "cls"}:
            continue
        found.append(f"{_name(path)}:{node.lineno} .{attr}")
    return found


def test_no_private_aiohttp_attributes() -> None:
    # aiohttp is pinned below 4; this keeps us on its public API inside that range
    offenders = []
    for path in ROUTER.rglob("*.py"):
        if "aiohttp" in roots(path):
            offenders += _private_attributes(path)
    assert not offenders, offenders


# bottom first: a module may import from its own layer and the ones below it, never above
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"router.model", "router.errors", "router.config"}),
    frozenset({"router.core"}),
    frozenset({"router.aio", "router.upstream", "router.store"}),
    frozenset({"router.fleet"}),
    frozenset({"router.observe"}),
    frozenset({"router.dispatch"}),
    frozenset({"router.api"}),
    frozenset({"router.run", "router.cli", "router.__main__"}),
)


def _layer(module: str) -> int:
    """The layer of ``router.x.y`` (or of ``router.x``, with or without the ``ctxroute.``
    of its import name); -1 for ``router`` itself."""
    parts = module.removeprefix("ctxroute.").split(".")
    if len(parts) < 2:
        return -1
    top = ".".join(parts[:2])
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS")


ALL = sorted(ROUTER.rglob("*.py"))


@pytest.mark.parametrize("path", ALL, ids=_name)
def test_a_module_imports_only_its_own_layer_and_those_below(path: Path) -> None:
    module = ".".join(path.relative_to(ROUTER.parent).with_suffix("").parts)
    mine = _layer(module.removesuffix(".__init__"))
    for name in imports(path):
        if name.startswith("ctxroute.router."):
            assert _layer(name) <= mine, f"{_name(path)} imports {name}, a layer above it"


def test_every_folder_of_the_router_says_what_it_is_for() -> None:
    for folder in [p for p in ROUTER.iterdir() if p.is_dir() and p.name != "__pycache__"]:
        if not any(folder.glob("*.py")):
            continue  # static files
        init = folder / "__init__.py"
        assert init.exists(), f"{folder.name}/ has no __init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{folder.name}/ says nothing"
