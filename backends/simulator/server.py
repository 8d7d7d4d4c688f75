"""The simulator's HTTP server: vLLM's OpenAI-compatible routes over the simulated engine.

Routes (as vLLM 0.32): ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions``, ``GET /metrics``. Simulator-only admin routes:
``GET|POST|DELETE /sim/faults`` and ``GET /sim/stats`` (``POST /sim/stats/reset``).

In-process use (tests, demo, benchmarks)::

    async with Simulator(SimConfig(model="m", profile=PROFILES["tiny"])) as sim:
        ...  # sim.url is bound and serving when the block starts: no sleeps needed
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from ctxroute.backends.simulator import responses as R
from ctxroute.backends.simulator.engine import EngineCore, SimRequest, Status
from ctxroute.backends.simulator.faults import Faults
from ctxroute.backends.simulator.metrics import VllmMetrics
from ctxroute.backends.simulator.profiles import PROFILES, Profile, validate
from ctxroute.backends.simulator.prompt import (
    ByteTokenizer,
    HFTokenizer,
    PromptError,
    Tokenizer,
    completion_text,
    render_chat,
)
from ctxroute.backends.simulator.runner import EngineRunner
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

_JSON = "application/json"
_MAX_IDS = 100_000
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}
_TRUE = {"true", "1", "yes", "on", "y", "t"}
_FALSE = {"false", "0", "no", "off", "n", "f"}


@dataclass(slots=True)
class SimConfig:
    model: str = "sim-model"
    profile: Profile = field(default_factory=lambda: PROFILES["tiny"])
    host: str = "127.0.0.1"
    port: int = 0
    speed: float = 1.0
    seed: int = 0
    tokenizer: str | None = None  # a tokenizer.json for exact counts; default: 4 bytes/token
    faults: Faults = field(default_factory=Faults)
    max_body_bytes: int = 64 * 1024 * 1024
    version: str = "0.32.0"  # what GET /version says (vLLM's own version there)


# the drift fault: answers this share of their usual length, this share of them cut by
# max_tokens, in another vocabulary (responses.DRIFT_LITERALS)
_DRIFT_LENGTH = 0.35
_DRIFT_CUT = 0.3


class _BadRequest(Exception):
    def __init__(self, body: bytes, status: int = 400) -> None:
        super().__init__(status)
        self.body = body
        self.status = status


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=_JSON)


def _int_field(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value.strip())
    raise _BadRequest(
        R.validation_error(
            "int_parsing",
            f"body.{name}",
            "Input should be a valid integer, unable to parse string as an integer",
            str(value),
        )
    )


def _bool_field(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _BadRequest(
        R.validation_error(
            "bool_parsing", f"body.{name}", "Input should be a valid boolean", str(value)
        )
    )


def _describe(value: object) -> str:
    """pydantic's short description of an input: ``<list of 2 items>``."""
    size = len(value) if isinstance(value, list | dict | str) else 1
    return f"<{type(value).__name__} of {size} items>"


class Simulator:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        validate(self.config.profile)
        self.profile = self.config.profile
        self.faults = self.config.faults
        self.core = EngineCore(self.profile)
        self.metrics = VllmMetrics(self.core, self.profile, self.config.model, self.kv_usage)
        self.received = 0  # completion requests received, whatever became of them
        # how many times each X-Request-Id came (the chaos suite's ledger joins it with the
        # router's request log); bounded: cleared past _MAX_IDS distinct ids
        self.received_ids: Counter[str] = Counter()
        self.last_body: object = None  # the last completion request's body, parsed (tests)
        # the last one's W3C traceparent: vLLM's own spans would be its children (tests)
        self.last_traceparent: str | None = None
        self.tokenizer: Tokenizer = (
            HFTokenizer(self.config.tokenizer) if self.config.tokenizer else ByteTokenizer()
        )
        self._rng = random.Random(self.config.seed)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._engine: EngineRunner | None = None
        self._refuse_task: asyncio.Task[None] | None = None
        self.port = self.config.port

    # ---- lifecycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/version", self._version)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/sim/faults", self._get_faults)
        app.router.add_post("/sim/faults", self._post_faults)
        app.router.add_delete("/sim/faults", self._delete_faults)
        app.router.add_get("/sim/stats", self._stats)
        app.router.add_post("/sim/stats/reset", self._reset_stats)
        return app

    async def start(self) -> Simulator:
        self._engine = EngineRunner(self.core, self.metrics, speed=self.config.speed)
        self._engine.start()
        self._runner = web.AppRunner(
            self.make_app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await self._listen(self.config.port)
        if self.faults.refuse_for_s:
            await self._refuse(self.faults.refuse_for_s)
        return self

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.config.host, port, reuse_address=True)
        await self._site.start()
        server = self._site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._refuse_task is not None:
            self._refuse_task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._engine is not None:
            await self._engine.stop()

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- faults -----------------------------------------------------------------------

    async def set_faults(self, **changes: Any) -> None:
        refuse = changes.get("refuse_for_s")
        self.faults.update(changes)
        self.core.extra_step_ms = float(self.faults.slow_token_ms)
        if refuse:
            await self._refuse(float(refuse))
        elif refuse is not None and self._site is None:
            await self._listen(self.port)

    async def clear_faults(self) -> None:
        self.faults.clear()
        self.core.extra_step_ms = 0.0
        if self._refuse_task is not None:
            self._refuse_task.cancel()
            self._refuse_task = None
        if self._site is None and self._runner is not None:
            await self._listen(self.port)

    async def _refuse(self, seconds: float) -> None:
        """Close the listening socket: new connections are refused (ECONNREFUSED)."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if seconds > 0:
            self._refuse_task = asyncio.get_running_loop().create_task(self._reopen(seconds))

    async def _reopen(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.faults.refuse_for_s = 0.0
        self._refuse_task = None
        if self._site is None and self._runner is not None:
            await self._listen(self.port)

    def stats(self) -> dict[str, Any]:
        core = self.core
        lag = self._engine.lag if self._engine else None
        return {
            "model": self.config.model,
            "profile": self.profile.name,
            "running": len(core.running),
            "waiting": len(core.waiting),
            "kv_cache_usage": self.kv_usage(),
            "received": self.received,
            "steps": core.counters.steps,
            "prompt_tokens": core.counters.prompt_tokens,
            "generation_tokens": core.counters.generation_tokens,
            "preemptions": core.counters.preemptions,
            "prefix_cache_hits": core.counters.prefix_cache_hits,
            "step_lag_p50_ms": lag.percentile(0.5) * 1000 if lag else 0.0,
            "step_lag_p99_ms": lag.percentile(0.99) * 1000 if lag else 0.0,
            "step_lag_max_ms": lag.max_lag_s * 1000 if lag else 0.0,
        }

    # ---- plain routes -----------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if self.faults.engine_dead else 200)

    async def _version(self, request: web.Request) -> web.Response:
        return _json(orjson.dumps({"version": self.config.version}))

    async def _models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        return _json(
            orjson.dumps(
                {
                    "object": "list",
                    "data": [
                        {
                            "id": self.config.model,
                            "object": "model",
                            "created": created,
                            "owned_by": "vllm",
                            "root": self.config.model,
                            "parent": None,
                            "max_model_len": self.profile.max_model_len,
                            "permission": [
                                {
                                    "id": R.request_id("modelperm"),
                                    "object": "model_permission",
                                    "created": created,
                                    "allow_create_engine": False,
                                    "allow_sampling": True,
                                    "allow_logprobs": True,
                                    "allow_search_indices": False,
                                    "allow_view": True,
                                    "allow_fine_tuning": False,
                                    "organization": "*",
                                    "group": None,
                                    "is_blocking": False,
                                }
                            ],
                        }
                    ],
                }
            )
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _get_faults(self, request: web.Request) -> web.Response:
        return _json(orjson.dumps(self.faults.as_dict()))

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of fault fields")
            refuse = changes.pop("refuse_for_s", None)
            if refuse is not None and (
                isinstance(refuse, bool) or not isinstance(refuse, int | float) or refuse < 0
            ):
                raise ValueError("fault 'refuse_for_s' must be a positive number of seconds")
            await self.set_faults(**changes)
        except (ValueError, orjson.JSONDecodeError) as exc:
            return _json(R.error_body(str(exc), "BadRequestError", None, 400), 400)
        if refuse:
            # answer first, then stop listening (this connection stays open until it is done)
            self.faults.refuse_for_s = float(refuse)
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(self._refuse(float(refuse)))
            )
        return _json(orjson.dumps(self.faults.as_dict()))

    async def _delete_faults(self, request: web.Request) -> web.Response:
        await self.clear_faults()
        return _json(orjson.dumps(self.faults.as_dict()))

    async def _stats(self, request: web.Request) -> web.Response:
        return _json(orjson.dumps(self.stats()))

    async def _reset_stats(self, request: web.Request) -> web.Response:
        if self._engine is not None:
            self._engine.lag.reset()
        return _json(orjson.dumps(self.stats()))

    # ---- generation -------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    def _parse(self, raw: bytes, chat: bool) -> tuple[dict[str, Any], str]:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _BadRequest(
                R.validation_error(
                    "json_invalid", f"body.{exc.pos}", "JSON decode error", "<dict of 0 items>"
                )
            ) from None
        if not isinstance(body, dict):
            raise _BadRequest(
                R.validation_error(
                    "model_attributes_type",
                    "body",
                    "Input should be a valid dictionary or object to extract fields from",
                    _describe(body),
                )
            )
        model = body.get("model")
        if model is not None and model != self.config.model:
            if not isinstance(model, str):
                raise _BadRequest(
                    R.validation_error(
                        "string_type", "body.model", "Input should be a valid string", str(model)
                    )
                )
            raise _BadRequest(R.model_not_found(model, self.config.model), 404)
        key = "messages" if chat else "prompt"
        if not chat and body.get("prompt") in (None, "", []):
            raise _BadRequest(R.missing_prompt())
        if key not in body:
            raise _BadRequest(
                R.validation_error(
                    "missing", f"body.{key}", "Field required", f"<dict of {len(body)} items>"
                )
            )
        try:
            text = render_chat(body[key]) if chat else completion_text(body[key])
        except PromptError as exc:
            kind = "list_type" if chat and not isinstance(body[key], list) else "value_error"
            raise _BadRequest(
                R.validation_error(kind, f"body.{key}", str(exc), str(body[key])[:40])
            ) from None
        return body, text

    def _admit(
        self, body: dict[str, Any], text: str, chat: bool, now: float, client_id: str | None
    ) -> tuple[SimRequest, bool, bool]:
        profile = self.profile
        max_tokens = _int_field(body, "max_completion_tokens") if chat else None
        if max_tokens is None:
            max_tokens = _int_field(body, "max_tokens")
        stream = _bool_field(body, "stream")
        options = body.get("stream_options")
        include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        ignore_eos = _bool_field(body, "ignore_eos")
        n = _int_field(body, "n")
        if n is not None and n != 1:
            raise _BadRequest(
                R.error_body(
                    "the simulator generates one choice (n=1) only", "BadRequestError", "n", 400
                )
            )
        if max_tokens is not None and max_tokens > profile.max_model_len:
            raise _BadRequest(R.max_tokens_over_window(max_tokens, profile.max_model_len))
        if max_tokens is not None and max_tokens < 1:
            raise _BadRequest(R.max_tokens_too_small(max_tokens))
        prompt_tokens, hashes = self.tokenizer.count_and_hash(text, profile.block_size)
        if prompt_tokens > profile.max_model_len:
            raise _BadRequest(R.over_context_prompt(profile.max_model_len, prompt_tokens))
        room = profile.max_model_len - prompt_tokens
        if room < 1:
            raise _BadRequest(R.max_tokens_too_small(0))
        # vLLM 0.32 clamps max_tokens to the room left in the window (finish_reason "length")
        max_tokens = room if max_tokens is None else min(max_tokens, room)
        seed = _int_field(body, "seed")
        rng = random.Random(seed) if seed is not None else self._rng
        mean = profile.mean_output_tokens
        drift = self.faults.drift and not ignore_eos
        if drift:  # shorter answers, and a share of them cut by max_tokens
            mean = max(1, round(mean * _DRIFT_LENGTH))
        stop_after = max_tokens if ignore_eos else 1 + int(rng.expovariate(1.0 / mean))
        if drift and rng.random() < _DRIFT_CUT:
            max_tokens = min(max_tokens, stop_after)  # finish_reason "length"

        req = SimRequest(
            request_id=R.request_id("chatcmpl" if chat else "cmpl", client_id),
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            stop_after=stop_after,
            arrival=now,
            block_hashes=hashes,
        )
        return req, stream, include_usage

    def kv_usage(self) -> float:
        """The engine's KV cache usage, or the ``kv_usage_floor`` fault if higher."""
        return max(self.core.kv_usage(), self.faults.kv_usage_floor)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        self.received += 1
        loop = asyncio.get_running_loop()
        try:
            body, text = self._parse(await request.read(), chat)
            self.last_body = body
            self.last_traceparent = request.headers.get("traceparent")
            client_id = request.headers.get("X-Request-Id")
            if client_id is not None:
                if len(self.received_ids) >= _MAX_IDS:
                    self.received_ids.clear()
                self.received_ids[client_id] += 1
            req, stream, include_usage = self._admit(body, text, chat, loop.time(), client_id)
        except _BadRequest as exc:
            return _json(exc.body, exc.status)
        faults = self.faults
        if faults.engine_dead:
            return _json(
                R.internal_error(
                    "EngineCore encountered an issue. See stack trace for the root cause."
                ),
                500,
            )
        if faults.burst_5xx > 0:
            faults.burst_5xx -= 1
            return _json(R.internal_error("simulated 5xx burst"), faults.burst_status)
        if faults.error_rate and self._rng.random() < faults.error_rate:
            return _json(R.internal_error("simulated internal error"), 500)
        engine = self._engine
        assert engine is not None
        lead = self._lead(body, chat)
        if stream and not faults.json_to_streams:
            return await self._stream(request, req, engine, chat, include_usage, lead)
        return await self._unary(req, engine, chat, lead)

    def _lead(self, body: dict[str, Any], chat: bool) -> tuple[str, ...]:
        """Under the leak_system fault, a chat answer's first words: its system message's."""
        if not (self.faults.leak_system and chat):
            return ()
        words: list[str] = []
        for message in body.get("messages") or ():
            if isinstance(message, dict) and message.get("role") == "system":
                content = message.get("content")
                if isinstance(content, str):
                    words += content.split()
        return tuple(words)

    async def _hang(self) -> None:
        hang = self.faults.hang_before_first_token
        if hang < 0:
            await asyncio.Event().wait()  # until the client leaves
        elif hang > 0:
            await asyncio.sleep(hang)

    async def _unary(self, req: SimRequest, engine: EngineRunner, chat: bool,
                     lead: tuple[str, ...] = ()) -> web.Response:  # fmt: skip
        created = int(time.time())  # as vLLM: when the request arrived
        done = asyncio.get_running_loop().create_future()

        def on_progress() -> None:
            if req.status is Status.FINISHED and not done.done():
                done.set_result(None)

        req.on_progress = on_progress
        submitted = False
        try:
            await self._hang()
            engine.submit(req)
            submitted = True
            await done
        finally:
            if submitted and req.status is not Status.FINISHED:
                engine.abort(req)
        build = R.chat_completion if chat else R.text_completion
        text = R.output_text(0, req.output_tokens, self.faults.drift, lead)
        return _json(
            build(
                req.request_id,
                created,
                self.config.model,
                text,
                req.finish_reason or "stop",
                req.prompt_tokens,
                req.output_tokens,
            )
        )

    async def _stream(
        self,
        request: web.Request,
        req: SimRequest,
        engine: EngineRunner,
        chat: bool,
        include_usage: bool,
        lead: tuple[str, ...] = (),
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        resp.enable_chunked_encoding()
        tpl = R.ChunkTemplates.build(
            chat=chat,
            rid=req.request_id,
            created=int(time.time()),  # as vLLM: when the request arrived
            model=self.config.model,
            include_usage=include_usage,
            drifted=self.faults.drift,
            lead=lead,
        )
        event = asyncio.Event()
        req.on_progress = event.set
        sent = 0
        submitted = False
        try:
            await resp.prepare(request)
            await self._hang()
            engine.submit(req)
            submitted = True
            while True:
                await event.wait()
                event.clear()
                produced = req.output_tokens
                finished = req.status is Status.FINISHED
                cut = self.faults.cut_after_tokens
                if cut and produced >= cut:
                    await self._cut(request, resp, tpl, sent, cut)
                    return resp
                parts: list[bytes] = []
                if sent == 0 and produced and tpl.first:
                    parts.append(tpl.first)
                last_plain = produced - 1 if finished else produced
                parts.extend(tpl.token(i) for i in range(sent, last_plain))
                if finished:
                    parts.extend(
                        tpl.final(
                            produced - 1, req.finish_reason or "stop", req.prompt_tokens, produced
                        )
                    )
                sent = produced
                # one write, so one HTTP chunk, per SSE event, as vLLM's server does: a
                # proxy in front sees the same framing it will see in production
                for part in parts:
                    await resp.write(part)
                if finished:
                    break
            await resp.write_eof()
            return resp
        except ConnectionResetError:
            # the client left mid-stream (aiohttp's ClientConnectionResetError): vLLM aborts
            # the request and logs no traceback; the finally below aborts it here too
            return resp
        finally:
            if submitted and req.status is not Status.FINISHED:
                engine.abort(req)

    async def _cut(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        tpl: R.ChunkTemplates,
        sent: int,
        cut: int,
    ) -> None:
        """Write up to ``cut`` tokens, then drop the connection: no final chunk, no [DONE]."""
        parts = [tpl.first] if sent == 0 and tpl.first else []
        parts.extend(tpl.token(i) for i in range(sent, cut))
        for part in parts:
            await resp.write(part)
        transport = request.transport
        if transport is not None:
            transport.abort()
