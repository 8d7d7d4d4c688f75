"""The generated text of an answer, for the output indicators (``core/leakage.py``). Pure.

A stream's text is read from the raw bytes the relay already holds, without parsing an
event into objects: each complete line's ``"content":"..."`` (chat) or ``"text":"..."``
(completions) JSON string is found by one regular expression and unescaped only when it
holds an escape (by orjson: one string, the JSON decoder's own rules). A line split
between two reads is carried to the next (at most ``MAX_CARRY`` bytes of it: vLLM's lines
are a few hundred bytes; a longer one is dropped, not buffered without end). A whole
answer's text is read from the answer the router parsed once already.

Only vLLM's own serialisation is assumed: a key and its string with no space between
(``"content":"``), as orjson, vLLM's and the simulator's serialisers all write it; the
fuzz test checks the reader against ``orjson.loads`` of every event.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

MAX_CARRY: Final = 256 * 1024
# the unrolled form of "(?:[^"\\]|\\.)*": one step per run of plain characters
_CHAT = re.compile(rb'"content":"([^"\\]*(?:\\.[^"\\]*)*)"')
_TEXT = re.compile(rb'"text":"([^"\\]*(?:\\.[^"\\]*)*)"')


def _unescaped(raw: bytes) -> str:
    if b"\\" not in raw:
        return raw.decode(errors="replace")
    try:
        text: str = orjson.loads(b'"' + raw + b'"')
    except orjson.JSONDecodeError:
        return ""
    return text


class StreamText:
    """Feed a stream's raw body bytes as they come; get the text each piece completes."""

    __slots__ = ("_carry", "_pattern")

    def __init__(self, chat: bool) -> None:
        self._pattern = _CHAT if chat else _TEXT
        self._carry = b""

    def feed(self, data: bytes) -> str:
        if self._carry:
            data = self._carry + data
        end = data.rfind(b"\n") + 1
        carry = data[end:]
        self._carry = carry if len(carry) <= MAX_CARRY else b""
        if not end:
            return ""
        found = self._pattern.findall(data, 0, end)
        if not found:
            return ""
        # escaped JSON strings joined are one escaped JSON string: unescaped once
        return _unescaped(found[0] if len(found) == 1 else b"".join(found))


def answer_text(answer: Any, chat: bool) -> str:
    """The text of a whole answer (parsed): every choice's, one after another."""
    if not isinstance(answer, dict):
        return ""
    choices = answer.get("choices")
    if not isinstance(choices, list):
        return ""
    texts = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if chat:
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = choice.get("text")
        if isinstance(text, str):
            texts.append(text)
    return "\n\n".join(texts)
