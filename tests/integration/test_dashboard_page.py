"""``/dashboard`` in a real browser: headless Chromium (Debian's ``chromium`` package) loads
the page from a running router in front of simulators, one backend healthy, one with its
KV cache at 98% (memory breaker open at the high mark), one drained, one down; the test
reads the DOM the page's script rendered and saves a screenshot (to
``$CTXROUTE_ARTIFACTS`` too, when set). Skipped when no Chromium is installed (``.ci/run``
installs it)."""

from __future__ import annotations

import asyncio
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ctxroute.router.config import parse_config

from tests.conftest import SimFactory
from tests.fixtures.router import ADMIN

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)"
)


class Page(HTMLParser):
    """The rendered DOM: every element with a data-* attribute, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = {"tag": tag, **{k: v or "" for k, v in attrs}, "text": ""}
        if tag not in ("meta", "br", "img", "input"):
            self._open.append(element)
        self.elements.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element["text"] += data

    def find(self, **attrs: str) -> list[dict[str, Any]]:
        return [e for e in self.elements if all(e.get(k) == v for k, v in attrs.items())]


async def chromium(*args: str, profile: Path) -> bytes:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--window-size=1400,900",
        "--virtual-time-budget=5000", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


async def test_the_status_page_renders_pools_backends_breakers_kv_and_ttft(
    make_sim: SimFactory, make_router: Any, tmp_path: Path
) -> None:
    ok, full, drained, gone = [await make_sim(model="sim-model", seed=i) for i in range(4)]
    config = parse_config(
        {
            "pools": [
                {"name": "low-latency", "model": "sim-model", "max_context_tokens": 1024,
                 "backends": [{"url": ok.url}, {"url": full.url}]},
                {"name": "high-memory", "model": "sim-model", "max_context_tokens": 2048,
                 "backends": [{"url": drained.url}, {"url": gone.url}]},
            ],
            "probe": {"interval_s": 0.2},
            "log_requests": False,
        },
        environ={},
    )  # fmt: skip
    router = await make_router(config, probes=True)
    async with aiohttp.ClientSession() as s:
        for _ in range(3):  # answers for the recent TTFT figures
            body = {"model": "sim-model", "prompt": "hello", "max_tokens": 2}
            async with s.post(router.url + "/v1/completions", json=body) as r:
                assert r.status == 200
        async with s.post(full.url + "/sim/faults", json={"kv_usage_floor": 0.98}) as r:
            assert r.status == 200
        async with s.post(
            router.url + "/admin/drain", json={"backend": drained.url}, headers=ADMIN
        ) as r:
            assert r.status == 200
        await gone.stop()
        for _ in range(100):  # until the probes have seen the KV usage and the stop
            async with s.get(router.url + "/status") as r:
                backends = {b["url"]: b for p in (await r.json())["pools"] for b in p["backends"]}
            if backends[full.url]["breaker"]["memory"] == "open" and not backends[gone.url]["up"]:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the probes never saw the faults: {backends}")
        async with s.get(router.url + "/dashboard") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "connect-src 'self'" in r.headers["Content-Security-Policy"]

    dom = await chromium("--dump-dom", router.url + "/dashboard", profile=tmp_path / "p1")
    page = Page()
    page.feed(dom.decode())
    states = {e["data-backend"]: e["data-state"] for e in page.find(tag="tr")
              if "data-backend" in e}  # fmt: skip
    assert states == {ok.url: "ok", full.url: "memory", drained.url: "drained", gone.url: "down"}
    kv = {e["data-kv"] for e in page.find(tag="span") if e.get("data-kv")}
    assert "0.980" in kv  # the full engine's bar, at 98%
    assert [e["data-memory"] for e in page.find(tag="td") if "data-memory" in e].count("open") == 1
    # which rule keeps each backend from requests, in its own cell
    kept = {e["data-kept-from"] for e in page.find(tag="td") if "data-kept-from" in e}
    assert any(k.startswith("memory breaker: KV cache usage at the high mark") for k in kept)
    assert "drained" in kept and "" in kept  # the healthy one: kept from nothing
    low, high = (page.find(tag="section", **{"data-pool": name})[0]
                 for name in ("low-latency", "high-memory"))  # fmt: skip
    assert "low-latency" in low["text"] and "window 1,024 tokens" in low["text"]
    assert "high-memory" in high["text"] and "window 2,048 tokens" in high["text"]
    figures: dict[str, str] = {}  # the first pool's (pools are drawn in order)
    for e in page.find(tag="div"):
        if "data-figure" in e:
            figures.setdefault(e["data-figure"], e["text"])
    assert figures["answers"].startswith("3")  # its three answers' TTFT is shown in ms
    assert figures["ttft-p50"].endswith(" msTTFT p50")
    assert "queue depth" in figures["queue-depth"]
    assert "store memory (up)" in page.find(id="summary")[0]["text"]

    shot = tmp_path / "dashboard.png"
    await chromium(f"--screenshot={shot}", router.url + "/dashboard", profile=tmp_path / "p2")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    artifacts = os.environ.get("CTXROUTE_ARTIFACTS")
    if artifacts:
        os.makedirs(artifacts, exist_ok=True)
        shutil.copy(shot, os.path.join(artifacts, "dashboard.png"))
