"""vLLM's wire formats: response bodies, SSE chunks and error bodies (vLLM 0.32).

The key sets here were captured from a real vLLM 0.32 CPU server; the e2e conformance
suite (tests/e2e/test_conformance.py) compares them against a live one.

Streaming chunks are built from per-request byte templates (``ChunkTemplates``) so that a
token costs one concatenation, not a JSON serialisation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import orjson

SYSTEM_FINGERPRINT = "vllm-0.32.0-simulated"
DONE = b"data: [DONE]\n\n"

# Words the simulated model "generates": pre-encoded as JSON string literals.
_WORDS = [
    "the",
    "model",
    "is",
    "a",
    "router",
    "of",
    "tokens",
    "and",
    "the",
    "cache",
    "holds",
    "every",
    "block",
    "it",
    "needs",
    "for",
    "the",
    "next",
    "request",
    "while",
    "the",
    "queue",
    "waits",
    "behind",
    "a",
    "long",
    "prefill",
    "that",
    "fills",
    "the",
    "window",
]
TOKEN_LITERALS: tuple[bytes, ...] = tuple(orjson.dumps(" " + w) for w in _WORDS)
# what a drifted backend (fault ``drift``) says instead: another vocabulary, as a model
# swapped, quantised too far or served with a broken template would
_DRIFT_WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing",
                "elit", "sed", "do", "eiusmod", "tempor", "incididunt", "ut", "labore"]  # fmt: skip
DRIFT_LITERALS: tuple[bytes, ...] = tuple(orjson.dumps(" " + w) for w in _DRIFT_WORDS)

_ids = itertools.count(1)


def request_id(prefix: str, client_id: str | None = None) -> str:
    """vLLM names a request after the client's X-Request-Id header when there is one."""
    return f"{prefix}-{client_id or format(next(_ids), '016x')}"


def error_body(message: str, err_type: str, param: str | None, code: int) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    )


def validation_error(kind: str, loc: str, msg: str, input_repr: str) -> bytes:
    """The 400 that vLLM's request validation (pydantic) produces."""
    detail = f"{{'type': '{kind}', 'loc': '{loc}', 'msg': '{msg}', 'input': '{input_repr}'}}"
    return error_body(f"1 validation error:\n  {detail}", "Bad Request", loc, 400)


def over_context_prompt(max_model_len: int, prompt_tokens: int) -> bytes:
    # vLLM stops tokenising at max_model_len + 1, hence "at least".
    n = min(prompt_tokens, max_model_len + 1)
    return error_body(
        f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
        f"contains at least {n} input tokens, which exceeds this limit even without any output "
        f"tokens. Please reduce the length of the input prompt. (parameter=input_tokens, "
        f"value={n})",
        "BadRequestError",
        "input_tokens",
        400,
    )


def max_tokens_over_window(max_tokens: int, max_model_len: int) -> bytes:
    return error_body(
        f"max_tokens={max_tokens} cannot be greater than max_model_len={max_model_len}. "
        f"Please request fewer output tokens. (parameter=max_tokens, value={max_tokens})",
        "BadRequestError",
        "max_tokens",
        400,
    )


def max_tokens_too_small(max_tokens: int) -> bytes:
    return error_body(
        f"max_tokens must be at least 1, got {max_tokens}. "
        f"(parameter=max_tokens, value={max_tokens})",
        "BadRequestError",
        "max_tokens",
        400,
    )


def missing_prompt() -> bytes:
    return error_body(
        "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)",
        "BadRequestError",
        "prompt",
        400,
    )


def model_not_found(model: str, served: str) -> bytes:
    return error_body(
        f"The model `{model}` does not exist. Valid aliases: {served}.",
        "NotFoundError",
        "model",
        404,
    )


def internal_error(message: str) -> bytes:
    return error_body(message, "InternalServerError", None, 500)


def output_text(offset: int, n: int, drifted: bool = False, lead: tuple[str, ...] = ()) -> str:
    """``n`` words from ``offset``: the ``lead`` words first (the leak_system fault's quote
    of the system message), then the vocabulary's."""
    words = _DRIFT_WORDS if drifted else _WORDS
    return "".join(" " + _word(words, lead, offset + i) for i in range(n))


def _word(words: list[str], lead: tuple[str, ...], i: int) -> str:
    return lead[i] if i < len(lead) else words[i % len(words)]


def usage(prompt_tokens: int, completion_tokens: int, *, details: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }
    if details:
        out["prompt_tokens_details"] = None
        out["completion_tokens_details"] = None
    return out


def chat_completion(
    rid: str, created: int, model: str, text: str, finish: str, prompt: int, completion: int
) -> bytes:
    return orjson.dumps(
        {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "reasoning": None,
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": None,
                    "token_ids": None,
                    "routed_experts": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": usage(prompt, completion, details=True),
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


def text_completion(
    rid: str, created: int, model: str, text: str, finish: str, prompt: int, completion: int
) -> bytes:
    return orjson.dumps(
        {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": None,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "routed_experts": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": usage(prompt, completion, details=True),
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


@dataclass(slots=True)
class ChunkTemplates:
    """Byte templates of one request's SSE chunks; a token chunk is head + literal + tail."""

    head: bytes
    tail: bytes
    first: bytes  # emitted before the first token (the chat role chunk), may be empty
    rid: str
    created: int
    model: str
    chat: bool
    include_usage: bool
    drifted: bool = False  # the drift fault's vocabulary
    lead: tuple[str, ...] = ()  # the first words (the leak_system fault's quote)

    @classmethod
    def build(
        cls, *, chat: bool, rid: str, created: int, model: str, include_usage: bool,
        drifted: bool = False, lead: tuple[str, ...] = (),
    ) -> ChunkTemplates:  # fmt: skip
        model_json = orjson.dumps(model).decode()
        if chat:
            prefix = (
                f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{created},'
                f'"model":{model_json},"choices":[{{"index":0,'
            )
            first = (
                prefix + '"delta":{"role":"assistant","content":""},"logprobs":null,'
                '"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n'
            ).encode()
            head = (prefix + '"delta":{"content":').encode()
            tail = b'},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
        else:
            prefix = (
                f'data: {{"id":"{rid}","object":"text_completion","created":{created},'
                f'"model":{model_json},"choices":[{{"index":0,'
            )
            first = b""
            head = (prefix + '"text":').encode()
            tail = (
                b',"logprobs":null,"finish_reason":null,"stop_reason":null,'
                b'"prompt_token_ids":null,"token_ids":null}]}\n\n'
            )
        return cls(head, tail, first, rid, created, model, chat, include_usage, drifted, lead)

    def token(self, index: int) -> bytes:
        if index < len(self.lead):
            return self.head + orjson.dumps(" " + self.lead[index]) + self.tail
        literals = DRIFT_LITERALS if self.drifted else TOKEN_LITERALS
        return self.head + literals[index % len(literals)] + self.tail

    def final(self, index: int, finish: str, prompt: int, completion: int) -> list[bytes]:
        """The last token's event (with finish_reason), the usage event if asked, [DONE]:
        one item per SSE event (vLLM writes each as its own chunk)."""
        base: dict[str, Any] = {
            "id": self.rid,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
        }
        words = _DRIFT_WORDS if self.drifted else _WORDS
        literal = " " + _word(words, self.lead, index)
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": literal},
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
                "token_ids": None,
            }
        else:
            choice = {
                "index": 0,
                "text": literal,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
                "prompt_token_ids": None,
                "token_ids": None,
            }
        last = {**base, "choices": [choice]}
        parts = []
        if self.include_usage:
            parts.append(b"data: " + orjson.dumps(last) + b"\n\n")
            usage_chunk = {
                **base,
                "choices": [],
                "usage": usage(prompt, completion, details=False),
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
            parts.append(b"data: " + orjson.dumps(usage_chunk) + b"\n\n")
        else:
            last["system_fingerprint"] = SYSTEM_FINGERPRINT
            parts.append(b"data: " + orjson.dumps(last) + b"\n\n")
        parts.append(DONE)
        return parts
