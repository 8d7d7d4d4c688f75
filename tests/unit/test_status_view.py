"""``ctxroute status`` rendered at 80 columns: every line fits, nothing is cut, and two
backends never look the same."""

from __future__ import annotations

import io

from ctxroute.router.observe.status_view import render
from rich.console import Console


def _backend(port: int, **extra: object) -> dict[str, object]:
    backend: dict[str, object] = {
        "url": f"http://127.0.0.1:{port}", "up": True, "usable": True, "drained": False,
        "breaker": {"error": "closed", "memory": "closed", "openings": 0, "probe_in_s": None},
        "kv_cache_usage": 0.42, "requests_waiting": 1.0, "requests_running": 12.0,
        "in_flight": 13, "pending_prefill_tokens": 48_213, "long_prefills_pending": 1,
        "budget_in_flight_tokens": 1_234_567, "prefill_tokens_per_s": 35_120,
    }  # fmt: skip
    backend.update(extra)
    return backend


STATUS = {
    "pid": 4242,
    "store": {"kind": "redis", "up": True},
    "in_flight": 26,
    "admission": {
        "overload": {"shed_tiers": [], "loop_lag_ms": 1.2, "rss_mib": 60},
        "refused": {"deadline": 3},
        "pools": {
            name: {
                "waiting": {"high": 0, "normal": 4, "low": 12},
                "held_long": 2,
                "admitted_in_flight": {"high": 1, "normal": 20, "low": 5},
                "finished_per_s": 41.5,
                "standing_queue": {"short": True, "long": False},
            }
            for name in ("low-latency", "high-memory")
        },
    },
    "outcomes": {"success": 1200, "timeout": 2},
    "pools": [
        {"name": "low-latency", "model": "llama-3.1-8b", "max_context_tokens": 16384,
         "backends": [_backend(8101), _backend(8102, drained=True)]},
        {"name": "high-memory", "model": "llama-3.1-8b", "max_context_tokens": 131072,
         "backends": [_backend(8201, kv_cache_usage=0.93, breaker={
             "error": "open", "memory": "open", "openings": 2, "probe_in_s": 1.5}),
             _backend(8202, up=False)]},
    ],
}  # fmt: skip


def _text(status: dict[str, object], width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(render(status, "http://10.0.0.5:8080"))
    return out.getvalue()


def test_status_fits_80_columns_and_tells_backends_apart() -> None:
    text = _text(STATUS, 80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text  # nothing cut
    for port in (8101, 8102, 8201, 8202):
        rows = [line for line in lines if line.split()[:1] == [f":{port}"]]
        assert len(rows) == 1  # each backend its own row, by its own name
    assert "drained" in text and "open,kv-open" in text and "down" in text
    assert "93%" in text and "12/1" in text and "1.2M" in text
    assert "normal:4 low:12" in text


def test_backends_on_several_hosts_are_named_by_host_and_port() -> None:
    status = {**STATUS, "pools": [{**STATUS["pools"][0], "backends": [  # type: ignore[index]
        _backend(8000, url="http://vllm-a.internal:8000"),
        _backend(8000, url="http://vllm-b.internal:8000")]}]}  # fmt: skip
    text = _text(status, 80)
    assert "vllm-a.internal:8000" in text and "vllm-b.internal:8000" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_backend_without_kv_room_says_for_which_class() -> None:
    status = {**STATUS, "pools": [{**STATUS["pools"][0], "backends": [  # type: ignore[index]
        _backend(8101, kv_room_tokens={"long": -82, "short": 287}),
        _backend(8102, kv_room_tokens={"long": -9000, "short": 0}),
        _backend(8103, kv_room_tokens={"long": 5000, "short": 9000})]}]}  # fmt: skip
    rows = {line.split()[0]: line for line in _text(status, 80).splitlines()
            if line.split()[:1] and line.split()[0].startswith(":81")}  # fmt: skip
    assert "kv-long-full" in rows[":8101"]
    assert "kv-full" in rows[":8102"] and "kv-long-full" not in rows[":8102"]
    assert "kv-" not in rows[":8103"] and " ok " in f"{rows[':8103']} "


def test_a_backend_that_differs_from_its_pool_says_skew() -> None:
    status = {**STATUS, "pools": [{**STATUS["pools"][0], "backends": [  # type: ignore[index]
        _backend(8101, skew=["version 0.31.1 where the pool's others have 0.32.0"]),
        _backend(8102, skew=[])]}]}  # fmt: skip
    rows = {line.split()[0]: line for line in _text(status, 80).splitlines()
            if line.split()[:1] and line.split()[0].startswith(":81")}  # fmt: skip
    assert "skew" in rows[":8101"] and "skew" not in rows[":8102"]
