"""HTTP handlers: read and check the body once, route, forward; status endpoints."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import orjson
from aiohttp import web

from router.classify import choose_pool
from router.errors import BadRequest, ModelNotFound, PayloadTooLarge, RouterError
from router.model import RequestFacts
from router.planner import plan_route
from router.proxy import forward
from router.state import AppState
from router.tokens import PromptShapeError, chat_bounds, completion_bounds

log = logging.getLogger("ctxroute.handlers")

_JSON = "application/json"


def error_response(exc: RouterError, request_id: str | None = None) -> web.Response:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if request_id:
        headers["X-Request-ID"] = request_id
    return web.Response(status=exc.status, body=exc.body(), content_type=_JSON, headers=headers)


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer, got {type(value).__name__}", name)
    if value < 1:
        raise BadRequest(f"'{name}' must be at least 1, got {value}", name)
    return value


def _hash_key(request: web.Request, body: dict[str, Any], model: str, chat: bool,
              state: AppState) -> str:  # fmt: skip
    session = request.headers.get(state.routing.session_header)
    if session:
        return "s:" + session
    user = body.get("user")
    if isinstance(user, str) and user:
        return "u:" + user
    prefix = _leading_text(body, chat)[: state.routing.prefix_chars]
    digest = hashlib.blake2b((model + "\x00" + prefix).encode(), digest_size=8).hexdigest()
    return "p:" + digest


def _leading_text(body: dict[str, Any], chat: bool) -> str:
    """The part of the prompt that requests share, for the prefix hash.

    Chat: the leading system/developer messages (an application's shared system prompt),
    or the first message when there is none (a conversation keeps its first turn as it
    grows). Completions: the start of the prompt. Either way, requests that share it share
    vLLM's prefix cache on the backend it hashes to.
    """
    if not chat:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return prompt
        # token ids or a batch: the head of the list is the shared part (no repr of all of it)
        return repr(prompt[:512]) if isinstance(prompt, list) else repr(prompt)[:4096]
    messages = body.get("messages") or ()
    parts = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer"):
            break
        content = message.get("content")
        parts.append(content if isinstance(content, str) else repr(content))
    if not parts and messages:
        first = messages[0]
        content = first.get("content") if isinstance(first, dict) else first
        parts.append(content if isinstance(content, str) else repr(content))
    return "\x00".join(parts)


def read_facts(request: web.Request, body: Any, chat: bool, state: AppState) -> RequestFacts:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if model is None:
        if len(state.fleet.models) != 1:
            raise BadRequest("'model' is required: this router serves "
                             + ", ".join(state.fleet.models), "model")  # fmt: skip
        model = state.fleet.models[0]
    elif not isinstance(model, str):
        raise BadRequest("'model' must be a string", "model")
    if model not in state.fleet.by_model:
        raise ModelNotFound(
            f"The model `{model}` does not exist. Valid aliases: {', '.join(state.fleet.models)}.",
            "model",
        )
    counter = state.counters.get(model)
    try:
        if chat:
            if "messages" not in body:
                raise BadRequest("'messages' is required", "messages")
            prompt = chat_bounds(body["messages"], counter, body.get("tools"))
        else:
            if body.get("prompt") in (None, "", []):
                raise BadRequest("'prompt' is required and must not be empty", "prompt")
            prompt = completion_bounds(body["prompt"], counter)
    except PromptShapeError as exc:
        raise BadRequest(str(exc), "messages" if chat else "prompt") from None
    max_tokens = _optional_int(body, "max_completion_tokens") if chat else None
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", "stream")
    key = _hash_key(request, body, model, chat, state)
    return RequestFacts(model, prompt, max_tokens, stream, key)


async def _complete(request: web.Request, *, chat: bool, path: str) -> web.StreamResponse:
    state: AppState = request.app[AppState.KEY]
    request_id = request.headers.get("X-Request-ID") or os.urandom(12).hex()
    try:
        if request.content_length is not None and request.content_length > state.max_body_bytes:
            raise PayloadTooLarge(
                f"request body of {request.content_length} bytes is over the limit of "
                f"{state.max_body_bytes} bytes"
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(
                f"request body is over the limit of {state.max_body_bytes} bytes"
            ) from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from None
        try:
            facts = read_facts(request, body, chat, state)
            pools = state.fleet.by_model[facts.model]
            choice = choose_pool(facts.prompt, facts.max_tokens, pools)
            plan = plan_route(facts, choice, pools, state.fleet.settings)
        except RouterError:
            raise
        except Exception:
            # a bug on some input: answer in OpenAI's shape, keep serving, keep the trace
            log.exception("request %s: routing failed", request_id)
            raise RouterError(f"internal error while routing request {request_id}") from None
        return await forward(request, state.upstream, path, raw, facts, plan, request_id,
                             state.forward)  # fmt: skip
    except RouterError as exc:
        return error_response(exc, request_id)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, chat=True, path="/v1/chat/completions")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, chat=False, path="/v1/completions")


async def models(request: web.Request) -> web.Response:
    state: AppState = request.app[AppState.KEY]
    data = []
    for model, pools in state.fleet.by_model.items():
        data.append({
            "id": model,
            "object": "model",
            "created": state.started,
            "owned_by": "ctxroute",
            "root": model,
            "parent": None,
            "max_model_len": max(p.max_context_tokens for p in pools),
            "permission": [],
        })  # fmt: skip
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=_JSON)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    state: AppState = request.app[AppState.KEY]
    if state.fleet.ready():
        return web.Response(text="ready")
    down = [p.name for p in state.fleet.pools if not any(b.up for b in p.backends.values())]
    return web.Response(status=503, text="not ready: no backend up in pool " + ", ".join(down))


async def status(request: web.Request) -> web.Response:
    state: AppState = request.app[AppState.KEY]
    return web.Response(body=orjson.dumps(state.fleet.status()), content_type=_JSON)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
