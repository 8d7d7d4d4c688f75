"""Incremental scan of a relayed response for what metrics need. Pure, bytes only.

The relay never parses or re-serialises a chunk: the scanner looks at the raw bytes for
``"finish_reason":"`` and ``"usage":{`` (rare: the last chunks only) and reads the values
next to them. A short tail of the previous read is kept so a marker split across two
reads is still found.
"""

from __future__ import annotations

import re

import orjson

_FINISH = b'"finish_reason":"'
_USAGE = b'"usage":{'
_PROMPT = re.compile(rb'"prompt_tokens":(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens":(\d+)')
_TAIL = 128

DONE = b"data: [DONE]\n\n"


class StreamScanner:
    __slots__ = (
        "_tail",
        "bytes_seen",
        "completion_tokens",
        "done",
        "finish_reason",
        "prompt_tokens",
    )

    def __init__(self) -> None:
        self.bytes_seen = 0
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.done = False  # saw data: [DONE]
        self._tail = b""

    def feed(self, data: bytes) -> None:
        self.bytes_seen += len(data)
        buf = self._tail + data if self._tail else data
        if _FINISH in buf:
            self._read_finish(buf)
        if _USAGE in buf:
            self._read_usage(buf)
        if b"[DONE]" in buf:
            self.done = True
        self._tail = buf[-_TAIL:]

    def _read_finish(self, buf: bytes) -> None:
        start = buf.rfind(_FINISH) + len(_FINISH)
        end = buf.find(b'"', start)
        if end != -1:
            self.finish_reason = buf[start:end].decode(errors="replace")

    def _read_usage(self, buf: bytes) -> None:
        at = buf.rfind(_USAGE)
        prompt = _PROMPT.search(buf, at)
        completion = _COMPLETION.search(buf, at)
        if prompt is not None:
            self.prompt_tokens = int(prompt.group(1))
        if completion is not None:
            self.completion_tokens = int(completion.group(1))


def error_event(message: str, error_type: str = "BadGatewayError", code: int = 502) -> bytes:
    """An in-stream error, as vLLM sends one, followed by the stream terminator."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n" + DONE
