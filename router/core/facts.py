"""A parsed request body (and its session header) -> ``RequestFacts``, or a 4xx. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from ctxroute.router.core.tokens import (
    PromptShapeError,
    TokenCounter,
    chat_bounds,
    completion_bounds,
)
from ctxroute.router.errors import BadRequest, ModelNotFound
from ctxroute.router.model import RequestFacts


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer, got {type(value).__name__}", name)
    if value < 1:
        raise BadRequest(f"'{name}' must be at least 1, got {value}", name)
    return value


def leading_text(body: dict[str, Any], chat: bool) -> str:
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


def hash_key(body: dict[str, Any], model: str, chat: bool, session: str | None,
             prefix_chars: int) -> str:  # fmt: skip
    """The affinity key: the session header, else the body's ``user``, else the model and
    the shared start of the prompt; always as a fixed-size digest, since whatever a client
    sends here becomes a key of the hash ring's cache (a megabyte ``user`` must cost what
    a short one does)."""
    if session:
        return "s:" + _digest(session)
    user = body.get("user")
    if isinstance(user, str) and user:
        return "u:" + _digest(user)
    prefix = leading_text(body, chat)[:prefix_chars]
    return "p:" + _digest(model + "\x00" + prefix)


def _digest(text: str) -> str:
    # surrogateescape: header values that were not UTF-8 still hash, and hash apart
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def read_facts(
    body: Any,
    *,
    chat: bool,
    session: str | None,
    models: Sequence[str],
    counters: Mapping[str, TokenCounter],
    prefix_chars: int,
) -> RequestFacts:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if model is None:
        if len(models) != 1:
            raise BadRequest("'model' is required: this router serves " + ", ".join(models),
                             "model")  # fmt: skip
        model = models[0]
    elif not isinstance(model, str):
        raise BadRequest("'model' must be a string", "model")
    if model not in models:
        raise ModelNotFound(
            f"The model `{model}` does not exist. Valid aliases: {', '.join(models)}.", "model"
        )
    counter = counters.get(model)
    try:
        if chat:
            if "messages" not in body:
                raise BadRequest("'messages' is required", "messages")
            prompt = chat_bounds(body["messages"], counter, body.get("tools"))
        else:
            text = body.get("prompt")
            if text is None or (not text and isinstance(text, str | list)):
                raise BadRequest("'prompt' is required and must not be empty", "prompt")
            prompt = completion_bounds(text, counter)
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
    user = body.get("user")
    if user is not None and not isinstance(user, str):  # the affinity key; OpenAI's a string
        raise BadRequest("'user' must be a string", "user")
    key = hash_key(body, model, chat, session, prefix_chars)
    return RequestFacts(model, prompt, max_tokens, stream, key)


def priority_value(header: str | None, field: object) -> str | None:
    """The request's priority as sent: the header, else the body's ``priority`` (vLLM's own
    field, an integer, passed on unchanged; a name is accepted too). The tier it names is
    ``AdmissionSettings.tier_of``'s to decide."""
    if header is not None:
        return header
    if field is None:
        return None
    if isinstance(field, bool) or not isinstance(field, int | str):
        raise BadRequest("'priority' must be an integer or a tier name", "priority")
    return str(field)


def timeout_s(header: str) -> float:
    """``X-Request-Timeout``: seconds the client will wait for the request to start."""
    try:
        value = float(header)
    except ValueError:
        value = float("nan")
    if not 0 < value < 86_400:
        raise BadRequest(f"X-Request-Timeout must be a number of seconds above 0 and below "
                         f"86400, got {header[:40]!r}")  # fmt: skip
    return value
