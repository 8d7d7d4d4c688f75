"""Token bounds of a request's prompt: a fast estimate, or an exact count when configured.

Pure: a counter object is passed in (loaded by ``router.config.tokenizers``); nothing here reads
files or clocks.

Heuristic mode (no tokenizer configured for the model), on the UTF-8 byte count ``B``:

* estimate ``B / 4``: BPE vocabularies of 32k-200k entries average about 4 bytes per token
  on English prose, 3 on code (used for load accounting: pending prefill, "is it short");
* upper bound ``B / 2`` (used for routing: never send a request to a window it may
  exceed): holds unless text averages under 2 bytes per token, which only byte soup does
  (random binary as text, long runs of rare symbols);
* lower bound ``B / 10`` (used for rejection: never reject what would have fit): holds
  unless text averages over 10 bytes per token, which only long runs of one repeated
  character do.

Exact mode (a ``tokenizer.json`` or tiktoken encoding for the model): completions are
counted exactly; chat prompts are counted per message (content + role) plus the template's
overhead per message and per reply, which is exact up to a merge at each message boundary:
the bounds are the count +- 1 per message.

Measured against real vLLM 0.32's ``usage.prompt_tokens`` (tests/e2e/test_router_vllm.py,
the e2e tier's tiny model): exact mode matched every completion exactly and every chat
within its +-1 per message. The heuristic lower bound held on all of them. The heuristic
upper bound did NOT hold there (1.0-1.9 bytes per token): that tokenizer has a 2k-entry
vocabulary, far below the 32k-200k of served models. A fleet that serves a small or
unusual vocabulary must configure its tokenizer, or routing may pick a window that is too
small (the backend's own 400 then tells the client; nothing is truncated).
"""

from __future__ import annotations

from typing import Any, Protocol

from ctxroute.router.model import TokenBounds

UPPER_BYTES_PER_TOKEN = 2
LOWER_BYTES_PER_TOKEN = 10
ESTIMATE_BYTES_PER_TOKEN = 4
# chat template overhead when no tokenizer is configured (Llama 3's role headers)
HEURISTIC_TOKENS_PER_MESSAGE = 5
HEURISTIC_TOKENS_PER_REPLY = 3


class TokenCounter(Protocol):
    tokens_per_message: int
    tokens_per_reply: int

    def count(self, text: str) -> int: ...


class PromptShapeError(ValueError):
    """The prompt/messages field has a shape no backend accepts (answered with 400)."""


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise PromptShapeError("each content part must be an object")
            text = part.get("text")
            if isinstance(text, str):
                parts.append(text)
        return "".join(parts)
    raise PromptShapeError("message content must be a string or a list of content parts")


def _heuristic(nbytes: int, overhead: int) -> TokenBounds:
    return TokenBounds(
        lower=-(-nbytes // LOWER_BYTES_PER_TOKEN),
        upper=-(-nbytes // UPPER_BYTES_PER_TOKEN) + overhead,
        exact=False,
        estimate=-(-nbytes // ESTIMATE_BYTES_PER_TOKEN) + overhead,
    )


def _exact(n: int) -> TokenBounds:
    return TokenBounds(n, n, True, n)


def completion_bounds(prompt: Any, counter: TokenCounter | None) -> TokenBounds:
    if isinstance(prompt, str):  # the common case first
        if counter is not None:
            return _exact(counter.count(prompt))
        return _heuristic(len(prompt.encode()), 0)
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        # batched prompts: the longest one decides the window
        return max((completion_bounds(p, counter) for p in prompt), key=lambda b: b.upper)
    if isinstance(prompt, list) and prompt and all(_token_ids(p) for p in prompt):
        # a batch of token-id prompts: the longest decides the window, counted exactly
        return _exact(max(len(p) for p in prompt))
    if _token_ids(prompt):
        return _exact(len(prompt))  # token ids: the count is exact
    raise PromptShapeError(
        "'prompt' must be a string, a list of strings, a list of token ids (integers of 0 "
        "or more) or a list of such lists"
    )


def _token_ids(value: Any) -> bool:
    """A non-empty list of token ids, as vLLM takes them (ints, not bools, not negative)."""
    return isinstance(value, list) and bool(value) and all(type(t) is int and t >= 0 for t in value)


def chat_bounds(messages: Any, counter: TokenCounter | None, tools: Any = None) -> TokenBounds:
    if not isinstance(messages, list) or not messages:
        raise PromptShapeError("'messages' must be a non-empty list")
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            raise PromptShapeError("each message must be an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise PromptShapeError("each message needs a string 'role'")
        texts.append(role)
        texts.append(_content_text(message.get("content")))
    if tools is not None:
        texts.append(str(tools))  # templates render tool schemas into the prompt
    n = len(messages)
    if counter is not None:
        count = sum(counter.count(t) for t in texts if t)
        count += n * counter.tokens_per_message + counter.tokens_per_reply
        return TokenBounds(max(0, count - n), count + n, False, count)
    nbytes = sum(len(t.encode()) for t in texts)
    return _heuristic(nbytes, n * HEURISTIC_TOKENS_PER_MESSAGE + HEURISTIC_TOKENS_PER_REPLY)
