"""The router at the edge, over loopback: keys (401/403, tier ceilings, a keys file read
again), the admin surface (admin key, JSON only, its own address), what clients are told
of backends, and hostile input answered in OpenAI's shape (404/405/408/413/431)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from ctxroute.backends.simulator import Simulator
from ctxroute.router.config import RouterConfig, parse_config
from ctxroute.router.core.keys import digest, new_key
from ctxroute.router.run.server import exposure_problem

from tests.conftest import SimFactory
from tests.fixtures.router import ADMIN
from tests.integration.test_breakers import RouterFactory, one_pool

CHAT = "/v1/chat/completions"
BODY = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
KEY, OTHER = new_key(), new_key()


def keyed(sims: list[Simulator], *entries: dict[str, Any], **extra: Any) -> RouterConfig:
    keys = list(entries) or [{"sha256": digest(KEY), "tenant": "acme"}]
    return one_pool(sims, auth={"keys": keys, **extra.pop("auth", {})}, **extra)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post(s: aiohttp.ClientSession, url: str, body: Any = BODY,
               **kw: Any) -> tuple[int, Any, Any]:  # fmt: skip
    async with s.post(url, json=body, **kw) as r:
        text = await r.read()
        return r.status, r.headers, orjson.loads(text) if text[:1] == b"{" else text


async def test_keys_401_403_and_the_key_never_echoed(
    sim: Simulator, make_router: RouterFactory
) -> None:
    only_m2 = {"sha256": digest(OTHER), "tenant": "globex", "models": ["sim-model-2"]}
    # a key limited to a model no pool serves is a configuration error, said at load
    with pytest.raises(Exception, match="no pool serves sim-model-2"):
        keyed([sim], only_m2)
    router = await make_router(keyed([sim]))
    async with aiohttp.ClientSession() as s:
        status, _, body = await post(s, router.url + CHAT)
        assert status == 401 and body["error"]["type"] == "AuthenticationError"
        assert "Authorization: Bearer" in body["error"]["message"]
        wrong = "sk-ctx-<script>alert(1)</script>" + "x" * 40
        status, headers, body = await post(s, router.url + CHAT, headers=bearer(wrong))
        assert status == 401 and headers["x-ctxroute-reject"] == "unauthorized"
        assert "script" not in json.dumps(body) and "sk-ctx" not in json.dumps(body)
        status, headers, body = await post(s, router.url + CHAT, headers=bearer(KEY))
        assert status == 200, body
        # a body that is not even JSON is refused for its missing key first (cheap)
        async with s.post(router.url + CHAT, data=b"{nope") as r:
            assert r.status == 401


async def test_a_key_may_use_only_its_models(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    a = await make_sim(model="sim-model")
    b = await make_sim(model="other-model")
    pool = {"max_context_tokens": 1024, "default_max_tokens": 16}
    data = {
        "pools": [
            {**pool, "name": "only", "model": "sim-model", "backends": [{"url": a.url}]},
            {**pool, "name": "other", "model": "other-model", "backends": [{"url": b.url}]},
        ],
        "auth": {"keys": [{"sha256": digest(KEY), "tenant": "acme", "models": ["sim-model"]}]},
    }
    router = await make_router(parse_config(data, environ={}))
    async with aiohttp.ClientSession() as s:
        status, _, _ = await post(s, router.url + CHAT, headers=bearer(KEY))
        assert status == 200
        status, _, body = await post(s, router.url + CHAT, {**BODY, "model": "other-model"},
                                     headers=bearer(KEY))  # fmt: skip
        assert status == 403 and "acme may not use" in body["error"]["message"]
        assert KEY not in json.dumps(body)


async def test_a_request_asking_more_than_its_ceiling_gets_the_ceiling(
    sim: Simulator, make_router: RouterFactory
) -> None:
    log = io.BytesIO()
    router = await make_router(keyed([sim]), log_stream=log)  # ceiling: the default tier
    async with aiohttp.ClientSession() as s:
        for headers in ({"X-Priority": "high"}, {}):
            status, _, _ = await post(s, router.url + CHAT, {**BODY, "priority": 0},
                                      headers={**bearer(KEY), **headers})  # fmt: skip
            assert status == 200
    router.ctx.request_log.flush()  # type: ignore[union-attr]
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(x["tier"], x["tenant"]) for x in lines] == [("normal", "acme")] * 2
    assert KEY not in log.getvalue().decode()
    # and the body's own priority (vLLM's) did not reach the backend
    assert isinstance(sim.last_body, dict) and "priority" not in sim.last_body


async def test_a_keys_file_is_read_again_when_it_changes(
    sim: Simulator, make_router: RouterFactory, tmp_path: Path
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"- {{sha256: {digest(KEY)}, tenant: acme}}\n")
    router = await make_router(one_pool([sim], auth={"keys_file": str(path), "reload_s": 0.05}))
    async with aiohttp.ClientSession() as s:
        assert (await post(s, router.url + CHAT, headers=bearer(KEY)))[0] == 200
        assert (await post(s, router.url + CHAT, headers=bearer(OTHER)))[0] == 401
        path.write_text(f"keys:\n  - {{sha256: {digest(OTHER)}, tenant: globex}}\n")
        for _ in range(100):
            await asyncio.sleep(0.05)
            if (await post(s, router.url + CHAT, headers=bearer(OTHER)))[0] == 200:
                break
        else:
            pytest.fail("the new keys file was not loaded")
        assert (await post(s, router.url + CHAT, headers=bearer(KEY)))[0] == 401  # revoked
        path.write_text("- {sha256: nothex, tenant: x}\n")  # broken: the keys in force stay
        await asyncio.sleep(0.3)
        assert (await post(s, router.url + CHAT, headers=bearer(OTHER)))[0] == 200


def test_keys_from_the_environment(sim: Simulator) -> None:
    from ctxroute.router.api.auth import Gatekeeper

    cfg = one_pool([sim], auth={"keys_env": "MY_KEYS"})
    gate = Gatekeeper(cfg, {"MY_KEYS": f"[{{sha256: {digest(KEY)}, tenant: envy}}]"})
    assert gate.ring.tenant_of(KEY) is not None
    assert gate.ring.tenant_of(KEY).name == "envy"  # type: ignore[union-attr]


async def test_admin_needs_the_admin_key_and_a_json_body(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(keyed([sim]))
    drain = router.url + "/admin/drain"
    async with aiohttp.ClientSession() as s:
        assert (await post(s, drain, {"backend": "only-1"}))[0] == 401
        assert (await post(s, drain, {"backend": "only-1"}, headers=bearer(KEY)))[0] == 401
        # a form post, as a cross-site page can send without a preflight
        async with s.post(drain, data="backend=only-1", headers={
            **ADMIN, "Content-Type": "application/x-www-form-urlencoded"}) as r:  # fmt: skip
            assert r.status == 415
        status, _, body = await post(s, drain, {"backend": "only-1"}, headers=ADMIN)
        assert status == 200 and body["drained"] is True


async def test_without_admin_keys_the_admin_routes_are_off(sim: Simulator) -> None:
    from ctxroute.router.api.app import create_app, make_runner, start_sites

    config = one_pool([sim])
    runner = make_runner(create_app(config, probes=False))
    await runner.setup()
    try:
        url, _ = await start_sites(runner, config, host="127.0.0.1", port=0)
        async with aiohttp.ClientSession() as s:
            status, _, body = await post(s, url + "/admin/drain", {"backend": "only-1"},
                                         headers=ADMIN)  # fmt: skip
            assert status == 403 and "no admin key is configured" in body["error"]["message"]
    finally:
        await runner.cleanup()


async def test_the_admin_address_and_page_access(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(
        keyed([sim], admin={"listen": {"host": "127.0.0.1", "port": 0}, "metrics": "key"})
    )
    assert router.admin_url is not None
    async with aiohttp.ClientSession() as s:
        status, _, _ = await post(s, router.url + "/admin/drain", {"backend": "only-1"},
                                  headers=ADMIN)  # fmt: skip
        assert status == 404  # not on the clients' address
        async with s.get(router.url + "/status") as r:
            assert r.status == 404  # 'admin' by default once there is an admin address
        async with s.get(router.admin_url + "/status") as r:
            assert r.status == 200
        async with s.get(router.url + "/metrics") as r:
            assert r.status == 401
        async with s.get(router.url + "/metrics", headers=ADMIN) as r:
            assert r.status == 200
        status, _, _ = await post(s, router.admin_url + "/admin/drain", {"backend": "only-1"},
                                  headers=ADMIN)  # fmt: skip
        assert status == 200


async def test_clients_see_backend_names_not_urls(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    sim = await make_sim(model="sim-model")
    for expose in (False, True):
        router = await make_router(one_pool([sim], expose_backends=expose))
        async with aiohttp.ClientSession() as s:
            status, headers, _ = await post(s, router.url + CHAT)
            assert status == 200
            assert headers["x-ctxroute-backend"] == (sim.url if expose else "only-1")
    gone = await make_sim(model="sim-model")
    await gone.stop()
    router = await make_router(one_pool([gone], expose_backends=False))
    async with aiohttp.ClientSession() as s:
        status, _, body = await post(s, router.url + CHAT)
        assert status == 503
        message = body["error"]["message"]
        port = gone.url.rsplit(":", 1)[1]
        assert "only-1" in message and port not in message, message


async def test_unknown_routes_and_methods_in_openai_shape(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(one_pool([sim]))
    async with aiohttp.ClientSession() as s:
        async with s.get(router.url + "/v1/nothing/<script>") as r:
            body = await r.json()
            assert r.status == 404 and body["error"]["code"] == 404
            assert "<script>" not in json.dumps(body)
        async with s.get(router.url + CHAT) as r:
            assert r.status == 405 and r.headers["Allow"] == "POST"
            assert (await r.json())["error"]["code"] == 405
        async with s.post(router.url + CHAT, data=io.BytesIO(b"x" * (9 * 1024 * 1024))) as r:
            assert r.status == 413 and (await r.json())["error"]["code"] == 413
        async with s.get(router.url + "/openapi.json") as r:
            doc = await r.json()
            assert CHAT in doc["paths"] and "/admin/drain" in doc["paths"]
        status, _, _ = await post(s, router.url + CHAT)
        assert status == 200  # and it keeps serving


async def test_headers_over_the_bound_get_431(sim: Simulator, make_router: RouterFactory) -> None:
    router = await make_router(one_pool([sim], limits={"max_header_bytes": 4096}))
    async with aiohttp.ClientSession() as s:
        headers = {f"X-Pad-{i}": "v" * 1000 for i in range(5)}
        status, resp_headers, body = await post(s, router.url + CHAT, headers=headers)
        assert status == 431 and body["error"]["code"] == 431
        assert resp_headers.get("Connection", "").lower() == "close"
    async with aiohttp.ClientSession() as s:
        assert (await post(s, router.url + CHAT))[0] == 200


async def _raw(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library would send these); the answer parsed."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # the router closes after it
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


async def test_what_the_http_parser_refuses_is_answered_in_openai_shape(
    sim: Simulator, make_router: RouterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    router = await make_router(one_pool([sim]))
    # one header line over aiohttp's own line limit (64 KiB): past the router's middleware
    line = b"X-Junk: <script>" + b"x" * 70_000 + b"\r\n"
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n"
    status, headers, body = await _raw(router.url, request)
    assert status == 431 and headers["content-type"].startswith("application/json")
    error = orjson.loads(body)["error"]
    assert error["code"] == 431 and "over" in error["message"]
    assert b"script" not in body and b"xxxx" not in body  # nothing of what it sent
    # (and the connection closed: _raw read the answer to its end)
    # bytes that are not HTTP at all (a TLS hello on the plain port)
    status, headers, body = await _raw(router.url, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert status == 400 and orjson.loads(body)["error"]["type"] == "BadRequestError"
    # answered without a traceback in the log, and the router serves on
    assert not [r for r in caplog.records if r.levelno >= 40 and r.name.startswith("aiohttp")]
    async with aiohttp.ClientSession() as s:
        assert (await post(s, router.url + CHAT))[0] == 200


async def test_a_body_that_does_not_arrive_gets_408_and_the_connection_closed(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(one_pool([sim], limits={"body_timeout_s": 0.3}))
    host, port = router.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"mo")  # fmt: skip
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=5)  # read() ends: it closed
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["code"] == 408


async def test_token_id_prompts_are_counted_exactly(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(one_pool([sim]))
    url = router.url + "/v1/completions"
    async with aiohttp.ClientSession() as s:
        for prompt in ([1, 2, 3], [[1, 2, 3, 4]]):  # (the simulator takes batches of one)
            status, headers, body = await post(s, url, {"prompt": prompt, "max_tokens": 4})
            assert status == 200, body
            assert "exact" in headers["x-ctxroute-route"]
        status, _, body = await post(s, url, {"prompt": [0] * 1100, "max_tokens": 4})
        assert status == 400 and "maximum context length" in body["error"]["message"]
        for bad in ([1, -2], [1, True], [[1], "a"], [[]]):
            status, _, body = await post(s, url, {"prompt": bad})
            assert status == 400 and body["error"]["param"] == "prompt"


def test_serve_refuses_an_open_router_on_a_reachable_address(sim: Simulator) -> None:
    assert exposure_problem(one_pool([sim])) is None  # loopback
    assert exposure_problem(one_pool([sim], listen={"host": "::1"})) is None
    problem = exposure_problem(one_pool([sim], listen={"host": "0.0.0.0"}))
    assert problem is not None and "auth: {mode: none}" in problem
    assert (
        exposure_problem(one_pool([sim], listen={"host": "0.0.0.0"}, auth={"mode": "none"})) is None
    )
    assert exposure_problem(keyed([sim], listen={"host": "0.0.0.0"})) is None


async def test_rate_limited_keys_get_429_and_openai_headers(
    sim: Simulator, make_router: RouterFactory
) -> None:
    entry = {"sha256": digest(KEY), "tenant": "acme", "rpm": 60, "tpm": 100_000}
    auth = {"burst_s": 2.0, "limit_headers": "always"}
    router = await make_router(keyed([sim], entry, auth=auth))
    async with aiohttp.ClientSession() as s:
        statuses = []
        for _ in range(5):
            status, headers, body = await post(s, router.url + CHAT, headers=bearer(KEY))
            statuses.append(status)
            if status == 200:
                assert headers["x-ratelimit-limit-requests"] == "60"
                assert headers["x-ratelimit-limit-tokens"] == "100000"
                assert int(headers["x-ratelimit-remaining-requests"]) >= 0
                assert headers["x-ratelimit-reset-requests"].endswith("s")
        assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429
        assert headers["x-ctxroute-reject"] == "rate_limited"
        assert int(headers["Retry-After"]) >= 1
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert "acme" in body["error"]["message"] and body["error"]["type"] == "RateLimitError"


async def test_tenant_metrics_name_tenants_never_keys(
    sim: Simulator, make_router: RouterFactory, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    filed, late = new_key(), new_key()
    path = tmp_path / "keys.yaml"
    path.write_text(f"- {{sha256: {digest(filed)}, tenant: filed}}\n")
    entry = {"sha256": digest(KEY), "tenant": "acme", "rpm": 60}
    config = keyed([sim], entry, auth={"keys_file": str(path), "reload_s": 0.05, "burst_s": 1.0})
    router = await make_router(config)
    async with aiohttp.ClientSession() as s:
        acme = [(await post(s, router.url + CHAT, headers=bearer(KEY)))[0] for _ in range(4)]
        assert acme.count(200) >= 1 and acme.count(429) >= 1
        assert (await post(s, router.url + CHAT, headers=bearer(filed)))[0] == 200
        too_long = {**BODY, "max_tokens": 10**6}
        assert (await post(s, router.url + CHAT, too_long, headers=bearer(filed)))[0] == 400
        # a tenant whose key a reload adds: counted as "other" (the labels are fixed at start)
        path.write_text(f"- {{sha256: {digest(late)}, tenant: late}}\n")
        for _ in range(100):
            await asyncio.sleep(0.05)
            if (await post(s, router.url + CHAT, headers=bearer(late)))[0] == 200:
                break
        else:
            pytest.fail("the new keys file was not loaded")
        async with s.get(router.url + "/metrics") as r:
            text = await r.text()
    for key in (KEY, filed, late):
        assert key not in text and digest(key) not in text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("ctxroute_tenant")
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    req = "ctxroute_tenant_requests_total"
    assert value(req, tenant="acme", status_class="2xx") == acme.count(200)
    assert value(req, tenant="acme", status_class="4xx") == acme.count(429)
    assert value("ctxroute_tenant_rate_limited_total", tenant="acme") == acme.count(429)
    assert value(req, tenant="filed", status_class="2xx") == 1
    assert value(req, tenant="filed", status_class="4xx") == 1
    assert value(req, tenant="other", status_class="2xx") == 1
    assert value("ctxroute_tenant_tokens_total", tenant="filed", kind="completion") == 4
    assert value("ctxroute_tenant_tokens_total", tenant="filed", kind="prompt") > 0
    assert not [k for k in samples if ("tenant", "late") in k[1]]


async def test_by_default_the_ratelimit_headers_come_with_refusals_only(
    sim: Simulator, make_router: RouterFactory
) -> None:
    entry = {"sha256": digest(KEY), "tenant": "acme", "rpm": 60}
    router = await make_router(keyed([sim], entry, auth={"burst_s": 1.0}))
    async with aiohttp.ClientSession() as s:
        answers = [await post(s, router.url + CHAT, headers=bearer(KEY)) for _ in range(4)]
    ok = [h for status, h, _ in answers if status == 200]
    refused = [h for status, h, _ in answers if status == 429]
    assert ok and refused
    assert not [k for h in ok for k in h if k.lower().startswith("x-ratelimit")]
    assert all(h["x-ratelimit-limit-requests"] == "60" for h in refused)
    assert all(h["x-ratelimit-remaining-requests"] == "0" for h in refused)
