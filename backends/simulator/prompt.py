"""Turn an OpenAI request body into what the engine needs: a token count and block hashes.

Two tokenizers:

* ``ByteTokenizer`` (default): one token per 4 bytes of UTF-8, rounded up. Cheap, close to
  real BPE vocabularies on English text, and stable, so tests can reason about counts.
* ``HFTokenizer``: an exact count with a ``tokenizer.json`` (the ``tokenizers`` library),
  the same file the router can be configured with.

Chat requests are rendered with a fixed template (role markers around each message, an
assistant turn opened at the end), like vLLM's chat template, so the same system prompt
gives the same leading blocks and hits the prefix cache.
"""

from __future__ import annotations

from typing import Any, Protocol

_HASH_MASK = (1 << 62) - 1


class PromptError(ValueError):
    """The request's prompt/messages field is malformed (answered with 400)."""


class Tokenizer(Protocol):
    def count_and_hash(self, text: str, block_size: int) -> tuple[int, tuple[int, ...]]: ...


def _chain(blocks: list[Any]) -> tuple[int, ...]:
    out: list[int] = []
    prev = 0
    for block in blocks:
        prev = hash((prev, block)) & _HASH_MASK
        out.append(prev)
    return tuple(out)


class ByteTokenizer:
    bytes_per_token = 4

    def count_and_hash(self, text: str, block_size: int) -> tuple[int, tuple[int, ...]]:
        data = text.encode()
        count = -(-len(data) // self.bytes_per_token)
        span = block_size * self.bytes_per_token
        full = len(data) // span
        return count, _chain([data[i * span : (i + 1) * span] for i in range(full)])


class HFTokenizer:
    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer as _Tok

        self._tok = _Tok.from_file(path)

    def count_and_hash(self, text: str, block_size: int) -> tuple[int, tuple[int, ...]]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        full = len(ids) // block_size
        return len(ids), _chain(
            [tuple(ids[i * block_size : (i + 1) * block_size]) for i in range(full)]
        )


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise PromptError("only text content parts are supported")
            text = part.get("text")
            if not isinstance(text, str):
                raise PromptError("a text content part needs a string 'text'")
            parts.append(text)
        return "".join(parts)
    raise PromptError("message content must be a string or a list of content parts")


def render_chat(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise PromptError("'messages' must be a non-empty list")
    out = []
    for message in messages:
        if not isinstance(message, dict):
            raise PromptError("each message must be an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise PromptError("each message needs a string 'role'")
        out.append(f"<|start|>{role}\n{_content_text(message.get('content'))}<|end|>\n")
    out.append("<|start|>assistant\n")
    return "".join(out)


def completion_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        return completion_text(prompt[0])
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        return " ".join(f"<{t}>" for t in prompt)  # token ids: a word each, as text
    raise PromptError("'prompt' must be a string or token ids (batched prompts are not simulated)")
