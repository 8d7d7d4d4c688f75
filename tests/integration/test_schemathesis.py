"""schemathesis against a live router, from the router's own /openapi.json: every operation,
its documented and its out-of-schema inputs (the coverage and fuzzing phases), with the
checks a client would hold the router to. The router runs with API keys on: client routes
are fuzzed with a client key, admin routes and the operator's pages with the admin key,
and schemathesis also sends each without the header it requires (and expects 401)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import aiohttp
import pytest
from ctxroute.backends.simulator import PROFILES, SimConfig, Simulator
from ctxroute.router.config import parse_config
from ctxroute.router.core.keys import digest

from tests.fixtures.router import ADMIN_KEY, RunningRouter, start_router

CLIENT_KEY = "sk-ctx-schemathesis-client-0123456789abcdefghijklmnopq"

# checks whose premise this API does not meet, each for a reason:
# - positive_data_acceptance: the schema describes the bodies' shape, while the router also
#   bounds values against the pool (a prompt over the window, max_tokens past it, an unknown
#   model): schema-valid bodies are rightly refused with 400/404
# - use_after_free, ensure_resource_availability: stateful checks for APIs that create and
#   delete resources; this one has none
EXCLUDED = "positive_data_acceptance,use_after_free,ensure_resource_availability"


def _schemathesis() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    return found


async def _run(router: RunningRouter, key: str, include: str, max_examples: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        _schemathesis(), "run", router.url + "/openapi.json",
        "--checks", "all", "--exclude-checks", EXCLUDED,
        "--include-path-regex", include,
        "-H", f"Authorization: Bearer {key}",
        "--max-examples", str(max_examples), "--workers", "1",
        "--request-timeout", "20", "--seed", "20261202",
        "--suppress-health-check", "all",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
    )  # fmt: skip
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert " passed" in text and "generated" in text, text[-2000:]


@pytest.mark.timeout(300)
async def test_schemathesis_finds_nothing_against_a_live_router() -> None:
    sim = Simulator(SimConfig(model="sim-model", profile=PROFILES["tiny"]))
    await sim.start()
    config = parse_config(
        {
            "pools": [{"name": "only", "model": "sim-model", "max_context_tokens": 1024,
                       "default_max_tokens": 16, "backends": [{"url": sim.url}]}],
            "auth": {"keys": [{"sha256": digest(CLIENT_KEY), "tenant": "fuzz"}]},
            "admin": {"keys": [digest(ADMIN_KEY)], "status": "key", "metrics": "key",
                      "dashboard": "key"},
            "log_requests": False,
        },
        environ={},
    )  # fmt: skip
    router = await start_router(config)
    try:
        await _run(router, CLIENT_KEY, "^/(v1|healthz|readyz|openapi)", 40)
        # the operator's pages ask for the admin key (``key`` access), as the admin routes do
        await _run(router, ADMIN_KEY, "^/(admin|status|metrics|dashboard)", 40)
        # and it still serves (undrained first, in case the fuzzer guessed the backend's name)
        async with aiohttp.ClientSession() as s:
            async with s.post(router.url + "/admin/undrain", json={"backend": "only-1"},
                              headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as r:  # fmt: skip
                assert r.status == 200, await r.text()
            hello = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(router.url + "/v1/chat/completions", json=hello,
                              headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as r:  # fmt: skip
                assert r.status == 200, await r.text()
    finally:
        await router.stop()
        await sim.stop()
