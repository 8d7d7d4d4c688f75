"""The simulator against real vLLM 0.32 (CPU): same requests, same answers' shape.

Every request below goes to both servers. Compared: status codes, the *shape* of every
JSON body and SSE chunk (keys, nesting and the JSON type of every value, so a ``null``
where vLLM has ``null`` counts), SSE framing, chunk counts, error bodies, usage numbers
(the simulator uses the model's own tokenizer and chat template, so prompt token counts
match exactly), ``/v1/models`` and the metric names.

Differences the simulator cannot avoid, and the only ones allowed:

* generated text (random weights there, a word list here) and therefore a few values
  derived from it: ``id``, ``created``, ``system_fingerprint``, ``root`` and permission id
  of /v1/models;
* timing (histogram values, ``created`` times);
* the wording of pydantic validation errors (bad JSON, wrong types): status, ``type`` and
  ``param`` are compared, the message text is not;
* batched prompts (a list of prompts) and ``n`` > 1: the simulator answers one choice per
  request and rejects these with a 400 naming the field;
* metrics: the simulator exposes the subset of vLLM's metric names that matter to serving
  (KV usage, queue, preemption, token counters, request outcomes, latency histograms);
  every name it exposes exists in vLLM with the same type and label names, and the
  names ctxroute reads are present in both.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import orjson
import pytest
from ctxroute.backends.simulator import Simulator
from ctxroute.backends.vllm.launch import VllmServer
from ctxroute.router.core.skew import skew
from ctxroute.router.fleet.identity import read_identity
from ctxroute.router.fleet.probe import parse_vllm_metrics
from ctxroute.router.model import Backend

from tests.fixtures.metrics import ROUTER_READS
from tests.fixtures.sse import parse_stream, split_events

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

Shape = Any


def shape(value: Any) -> Shape:
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "str"


async def both(
    vllm: VllmServer, sim: Simulator, path: str, body: Any, *, raw: bytes | None = None
) -> tuple[tuple[int, bytes, str], tuple[int, bytes, str]]:
    out = []
    data = raw if raw is not None else orjson.dumps(body)
    async with aiohttp.ClientSession() as s:
        for base in (vllm.url, sim.url):
            async with s.post(
                base + path, data=data, headers={"content-type": "application/json"}
            ) as r:
                out.append((r.status, await r.read(), r.headers.get("Content-Type", "")))
    return out[0], out[1]


def tokens_text(n: int) -> str:
    """Text that the tiny model's tokenizer turns into exactly n tokens (" the" x n)."""
    return " the" * n


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def chat(content: str = "hello router", **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **extra}


def completion(prompt: str = "hello router", **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": prompt, **extra}


UNARY_CASES = {
    "chat": (CHAT, chat(max_tokens=5, ignore_eos=True)),
    "chat max_completion_tokens": (CHAT, chat(max_completion_tokens=4, ignore_eos=True)),
    "chat max_tokens=1": (CHAT, chat(max_tokens=1)),
    "chat with system prompt": (
        CHAT,
        {
            "model": "tiny",
            "max_tokens": 3,
            "ignore_eos": True,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello"},
            ],
        },
    ),
    "completion": (COMPLETIONS, completion(max_tokens=5, ignore_eos=True)),
    "completion max_tokens=1": (COMPLETIONS, completion(max_tokens=1)),
    "completion without model": (
        COMPLETIONS,
        {"prompt": "hi", "max_tokens": 2, "ignore_eos": True},
    ),
}


@pytest.mark.parametrize("case", list(UNARY_CASES))
async def test_non_streaming_bodies_match(
    vllm_server: VllmServer, twin_sim: Simulator, case: str
) -> None:
    path, body = UNARY_CASES[case]
    (vs, vb, vt), (ss, sb, st) = await both(vllm_server, twin_sim, path, body)
    assert (vs, ss) == (200, 200)
    assert vt.split(";")[0] == st.split(";")[0] == "application/json"
    real, simulated = orjson.loads(vb), orjson.loads(sb)
    assert shape(simulated) == shape(real)
    assert simulated["usage"] == real["usage"]
    assert (
        simulated["choices"][0]["finish_reason"] == real["choices"][0]["finish_reason"] == "length"
    )


STREAM_CASES = {
    "chat": (CHAT, chat(max_tokens=4, ignore_eos=True, stream=True)),
    "chat include_usage": (
        CHAT,
        chat(max_tokens=4, ignore_eos=True, stream=True, stream_options={"include_usage": True}),
    ),
    "chat max_tokens=1": (CHAT, chat(max_tokens=1, stream=True)),
    "chat max_tokens=1 include_usage": (
        CHAT,
        chat(max_tokens=1, stream=True, stream_options={"include_usage": True}),
    ),
    "completion": (COMPLETIONS, completion(max_tokens=4, ignore_eos=True, stream=True)),
    "completion include_usage": (
        COMPLETIONS,
        completion(
            max_tokens=4, ignore_eos=True, stream=True, stream_options={"include_usage": True}
        ),
    ),
    "completion max_tokens=1": (COMPLETIONS, completion(max_tokens=1, stream=True)),
}


@pytest.mark.parametrize("case", list(STREAM_CASES))
async def test_streams_match_chunk_by_chunk(
    vllm_server: VllmServer, twin_sim: Simulator, case: str
) -> None:
    path, body = STREAM_CASES[case]
    # greedy: a sampled token that ends inside a UTF-8 character makes vLLM hold its text
    # back and send it with the next one (one chunk fewer); CI saw it once in many runs
    body = {**body, "temperature": 0}
    (vs, vb, vt), (ss, sb, st) = await both(vllm_server, twin_sim, path, body)
    assert (vs, ss) == (200, 200)
    assert vt == st == "text/event-stream; charset=utf-8"
    real, simulated = parse_stream(vb), parse_stream(sb)
    assert len(simulated) == len(real)
    for index, (r, s) in enumerate(zip(real, simulated, strict=True)):
        assert shape(s) == shape(r), f"chunk {index} differs"
        r_choices, s_choices = r["choices"], s["choices"]
        assert [c.get("finish_reason") for c in s_choices] == [
            c.get("finish_reason") for c in r_choices
        ]
        if "usage" in r:
            assert s["usage"] == r["usage"]


ERROR_CASES = {
    "prompt over the window": (COMPLETIONS, completion(tokens_text(2100), max_tokens=1)),
    "chat prompt over the window": (CHAT, chat(tokens_text(2100), max_tokens=1)),
    "prompt exactly the window": (COMPLETIONS, completion(tokens_text(2048), max_tokens=1)),
    "max_tokens over the window": (COMPLETIONS, completion(max_tokens=5000)),
    "max_tokens over the window, streaming": (CHAT, chat(max_tokens=5000, stream=True)),
    "max_tokens zero": (COMPLETIONS, completion(max_tokens=0)),
    "missing prompt": (COMPLETIONS, {"model": "tiny"}),
    "empty prompt": (COMPLETIONS, completion("", max_tokens=1)),
    "unknown model": (CHAT, {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
async def test_error_bodies_match_exactly(
    vllm_server: VllmServer, twin_sim: Simulator, case: str
) -> None:
    path, body = ERROR_CASES[case]
    (vs, vb, _), (ss, sb, _) = await both(vllm_server, twin_sim, path, body)
    assert vs == ss and vs in (400, 404)
    assert orjson.loads(sb) == orjson.loads(vb)


VALIDATION_CASES = {
    "malformed JSON": (CHAT, b'{"model":'),
    "not an object": (COMPLETIONS, b"[1, 2]"),
    "missing messages": (CHAT, b'{"model":"tiny"}'),
    "messages not a list": (CHAT, b'{"model":"tiny","messages":"hi"}'),
    "max_tokens not an integer": (COMPLETIONS, b'{"model":"tiny","prompt":"x","max_tokens":"x"}'),
}


@pytest.mark.parametrize("case", list(VALIDATION_CASES))
async def test_validation_errors_match_in_status_type_and_param(
    vllm_server: VllmServer, twin_sim: Simulator, case: str
) -> None:
    path, raw = VALIDATION_CASES[case]
    (vs, vb, _), (ss, sb, _) = await both(vllm_server, twin_sim, path, None, raw=raw)
    assert vs == ss == 400
    real, simulated = orjson.loads(vb)["error"], orjson.loads(sb)["error"]
    assert shape(simulated) == shape(real)
    assert (simulated["type"], simulated["code"]) == (real["type"], real["code"])
    # pydantic reports the byte offset of a JSON error in param ("body.9"): compare the kind
    assert re.sub(r"\d+", "N", simulated["param"]) == re.sub(r"\d+", "N", real["param"])


async def test_prompt_plus_max_tokens_over_the_window_is_clamped_by_both(
    vllm_server: VllmServer, twin_sim: Simulator
) -> None:
    body = completion(tokens_text(1000), max_tokens=1500, ignore_eos=True)
    (vs, vb, _), (ss, sb, _) = await both(vllm_server, twin_sim, COMPLETIONS, body)
    assert vs == ss == 200
    real, simulated = orjson.loads(vb), orjson.loads(sb)
    assert real["usage"]["total_tokens"] == 2048
    assert simulated["usage"] == real["usage"]
    assert (
        simulated["choices"][0]["finish_reason"] == real["choices"][0]["finish_reason"] == "length"
    )


async def test_models_and_health_match(vllm_server: VllmServer, twin_sim: Simulator) -> None:
    async with aiohttp.ClientSession() as s:
        bodies, health = [], []
        for base in (vllm_server.url, twin_sim.url):
            async with s.get(base + "/v1/models") as r:
                bodies.append(await r.json())
            async with s.get(base + "/health") as r:
                health.append((r.status, await r.read()))
    real, simulated = bodies
    assert shape(simulated) == shape(real)
    assert simulated["data"][0]["id"] == real["data"][0]["id"] == "tiny"
    assert simulated["data"][0]["max_model_len"] == real["data"][0]["max_model_len"] == 2048
    assert health[0] == health[1] == (200, b"")


async def test_the_router_reads_the_same_identity_from_both(
    vllm_server: VllmServer, twin_sim: Simulator
) -> None:
    # what the version-skew check reads (fleet/identity.py): a twin of the real engine is
    # not flagged against it on model, window or cache settings
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        identities = []
        for base in (vllm_server.url, twin_sim.url):
            async with s.get(base + "/metrics") as r:
                cache = parse_vllm_metrics(await r.text()).cache
            backend = Backend(0, base, "p", "tiny", "127.0.0.1", 0, 8)
            identities.append(await read_identity(s, backend, cache))
    real, simulated = identities
    assert real.models == simulated.models == ("tiny",)
    assert real.max_model_len == simulated.max_model_len == 2048
    assert real.version is not None and simulated.version is not None  # both have /version
    assert dict(real.cache).keys() == dict(simulated.cache).keys() >= {"block_size"}
    assert dict(real.cache)["block_size"] == dict(simulated.cache)["block_size"]
    pool = [real, simulated]
    differ = {k for k in ("version", *dict(real.cache))
              if real.value(k) != simulated.value(k)}  # fmt: skip
    for mine in pool:  # flagged on what truly differs (the sim's settings are its own)
        named = {r.split()[0] for r in skew("tiny", 2048, mine, pool)}
        assert named == differ, (named, differ)


def metric_families(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, label names) from Prometheus text."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    labels: dict[str, set[str]] = {}
    for name, label_text in re.findall(r"^([a-zA-Z_:][\w:]*)\{([^}]*)\}", text, re.M):
        labels.setdefault(name, set()).update(re.findall(r'(\w+)="', label_text))
    out = {}
    for name, kind in types.items():
        if not name.startswith("vllm:") or name.endswith("_created"):
            continue
        sample = name + ("_bucket" if kind == "histogram" else "")
        names = labels.get(sample, labels.get(name + "_total", set())) - {"le"}
        out[name] = (kind, frozenset(names))
    return out


async def test_metric_names_types_and_labels_match(
    vllm_server: VllmServer, twin_sim: Simulator
) -> None:
    await both(vllm_server, twin_sim, CHAT, chat(max_tokens=2))  # populate every family
    async with aiohttp.ClientSession() as s:
        texts = []
        for base in (vllm_server.url, twin_sim.url):
            async with s.get(base + "/metrics") as r:
                texts.append(await r.text())
    real, simulated = metric_families(texts[0]), metric_families(texts[1])
    assert set(simulated) <= set(real), sorted(set(simulated) - set(real))
    for name, (kind, labels) in simulated.items():
        assert real[name] == (kind, labels), name
    assert set(simulated) >= set(ROUTER_READS)
    assert set(real) >= set(ROUTER_READS)


def _peaks(readings: list[dict[str, float]]) -> dict[str, float]:
    names = ("vllm:kv_cache_usage_perc", "vllm:num_requests_waiting")
    return {n: max((r.get(n, 0.0) for r in readings), default=0.0) for n in names}


def _under_pressure(readings: list[dict[str, float]]) -> bool:
    """The readings showed the KV cache over 90% full, and requests waiting."""
    peaks = _peaks(readings)
    return peaks["vllm:kv_cache_usage_perc"] > 0.9 and peaks["vllm:num_requests_waiting"] > 0


async def test_memory_pressure_is_visible_the_same_way_on_both(
    vllm_server: VllmServer, twin_sim: Simulator
) -> None:
    """8 x (100 prompt + 1,700 output) tokens on 48 blocks of 128: usage, waiting, preemption.

    The state is a moment, and a gauge read every few milliseconds can miss it on a slow
    host: the engine is driven into it again (up to ``rounds`` batches) until the readings
    have shown the cache over 90% full and requests waiting."""
    import asyncio

    rounds = 4
    body = completion(tokens_text(100), max_tokens=1700, ignore_eos=True)
    for server in (vllm_server, twin_sim):
        seen: list[dict[str, float]] = []
        async with aiohttp.ClientSession() as s:

            async def one(url: str = server.url) -> int:
                async with s.post(url + COMPLETIONS, json=body) as r:
                    return r.status

            async def scrape(url: str = server.url) -> dict[str, float]:
                async with s.get(url + "/metrics") as r:
                    text = await r.text()
                return {
                    n: float(v) for n, v in re.findall(r"^(vllm:\w+)\{[^}]*\} (\S+)$", text, re.M)
                }

            for _ in range(rounds):
                tasks = [asyncio.create_task(one()) for _ in range(8)]
                while not all(t.done() for t in tasks):
                    seen.append(await scrape())
                    await asyncio.sleep(0.01)
                assert [t.result() for t in tasks] == [200] * 8
                if _under_pressure(seen):
                    break
            final = await scrape()
        assert _under_pressure(seen), (server.url, _peaks(seen))
        assert final["vllm:num_preemptions_total"] > 0, server.url
        assert final["vllm:num_requests_running"] == 0 and final["vllm:kv_cache_usage_perc"] == 0


async def test_sse_framing_is_identical_bytes_apart_from_content(
    vllm_server: VllmServer, twin_sim: Simulator
) -> None:
    body = chat(max_tokens=3, ignore_eos=True, stream=True)
    (_, vb, _), (_, sb, _) = await both(vllm_server, twin_sim, CHAT, body)
    # same number of events, each "data: " + one line + blank line, same terminator
    assert len(split_events(vb)) == len(split_events(sb))
    assert vb.endswith(b"data: [DONE]\n\n") and sb.endswith(b"data: [DONE]\n\n")
