"""The shipped alert rules (config/prometheus/alerts.yml): checked and unit-tested by
promtool, then evaluated by a real Prometheus scraping a real router in front of a
simulator whose KV cache fills. Debian's ``prometheus`` package provides both binaries;
without it these tests are skipped (CI installs it)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from ctxroute.backends.simulator import Simulator
from ctxroute.router.config import parse_config

from tests.fixtures.router import RunningRouter
from tests.fixtures.servers import free_port

RULES_DIR = Path(__file__).resolve().parents[2] / "config" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RouterFactory = Callable[..., Awaitable[RunningRouter]]


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install prometheus)")
    return path


def test_the_rules_are_valid_and_their_unit_tests_pass() -> None:
    promtool = _binary("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=RULES_DIR,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert unit.returncode == 0, unit.stdout + unit.stderr


def _rule(name: str) -> dict[str, Any]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                return dict(rule)
    raise AssertionError(f"no rule {name}")


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """Start Prometheus scraping a target every second: ``await start("host:port")``
    returns its base URL."""
    binary = _binary("prometheus")
    procs: list[asyncio.subprocess.Process] = []

    async def start(target: str) -> str:
        port = free_port()
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "ctxroute", "static_configs": [{"targets": [target]}]}],
        }))  # fmt: skip
        procs.append(await asyncio.create_subprocess_exec(
            binary, f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            for _ in range(300):
                try:
                    async with s.get(url + "/-/ready") as r:
                        if r.status == 200:
                            return url
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("prometheus did not become ready in 30 s")

    yield start
    for proc in procs:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def _query(s: aiohttp.ClientSession, url: str, expr: str) -> list[dict[str, Any]]:
    async with s.get(url + "/api/v1/query", params={"query": expr}) as r:
        data = await r.json()
    assert data["status"] == "success", data
    return list(data["data"]["result"])


async def test_real_prometheus_turns_the_kv_alert_on_when_an_engine_fills(
    make_sim: Callable[..., Awaitable[Simulator]],
    make_router: RouterFactory,
    prometheus: Callable[[str], Awaitable[str]],
) -> None:
    sims = [await make_sim(model="sim-model") for _ in range(2)]
    config = parse_config(
        {
            "pools": [
                {
                    "name": "long",
                    "model": "sim-model",
                    "max_context_tokens": 2048,
                    "backends": [{"url": sim.url} for sim in sims],
                }
            ],
            "probe": {"interval_s": 0.5},
        },
        environ={},
    )
    router = await make_router(config, probes=True)
    url = await prometheus(router.url.removeprefix("http://"))
    rule = _rule("CtxrouteBackendKVCacheHigh")
    async with aiohttp.ClientSession() as s:

        async def until(expr: str, want: int) -> list[dict[str, Any]]:
            for _ in range(150):
                result = await _query(s, url, expr)
                if len(result) == want:
                    return result
                await asyncio.sleep(0.2)
            raise AssertionError(f"{expr!r} never had {want} series, last {result}")

        # scraped, and every engine is empty: the alert's expression is false
        await until("ctxroute_backend_kv_cache_usage", 2)
        assert await _query(s, url, rule["expr"]) == []
        async with s.post(sims[0].url + "/sim/faults", json={"kv_usage_floor": 0.98}) as r:
            assert r.status == 200
        firing = await until(rule["expr"], 1)
        assert firing[0]["metric"]["backend"] == sims[0].url
        assert float(firing[0]["value"][1]) >= 0.98
        # Prometheus evaluates the shipped rule itself: pending until its `for` has passed
        pending = await until('ALERTS{alertname="CtxrouteBackendKVCacheHigh"}', 1)
        assert pending[0]["metric"]["alertstate"] == "pending"
        assert pending[0]["metric"]["backend"] == sims[0].url
