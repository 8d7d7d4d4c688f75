"""What a relayed response says about itself, read from its raw bytes. Pure.

The relay never parses or re-serialises a chunk. Per chunk, the scanner only counts bytes
and keeps a reference to the chunk in a short ring; everything it reports (finish_reason,
usage, whether ``data: [DONE]`` came) is in the last few events of an answer, so it is
read once, from the ring, when the answer ends (``summary()``). Chunks may carry any
framing (chunked transfer coding included): only byte markers are searched, the
terminator only at the start of a line.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

import orjson

_FINISH = re.compile(rb'"finish_reason":"([^"]*)"')
_DONE_MARK = b"data: [DONE]"
_USAGE = re.compile(rb'"usage":\{[^}]*\}')
_PROMPT = re.compile(rb'"prompt_tokens":(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens":(\d+)')
# the final token chunk, the usage chunk and [DONE] are the last events of an answer: the
# scanner keeps at least this many of the last bytes (references to the chunks, no copy)
_KEEP_BYTES = 16 * 1024

DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class StreamSummary:
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    done: bool  # saw data: [DONE]


class StreamScanner:
    __slots__ = ("_kept", "_recent", "bytes_seen")

    def __init__(self) -> None:
        self.bytes_seen = 0
        self._recent: deque[bytes] = deque()
        self._kept = 0

    def feed(self, data: bytes) -> None:
        size = len(data)
        self.bytes_seen += size
        recent = self._recent
        recent.append(data)
        self._kept += size
        if self._kept - len(recent[0]) >= _KEEP_BYTES:
            self._kept -= len(recent.popleft())

    def ends_event(self) -> bool:
        """The bytes relayed so far end at an event boundary (a blank line)."""
        return not self._recent or self._recent[-1].endswith(b"\n\n")

    def summary(self) -> StreamSummary:
        tail = b"".join(self._recent)
        finish = None
        for match in _FINISH.finditer(tail):
            finish = match.group(1).decode(errors="replace")
        prompt = completion = None
        usages = _USAGE.findall(tail)
        if usages:
            text = usages[-1]
            p = _PROMPT.search(text)
            c = _COMPLETION.search(text)
            prompt = int(p.group(1)) if p else None
            completion = int(c.group(1)) if c else None
        return StreamSummary(finish, prompt, completion, _ends_done(tail))


def _ends_done(tail: bytes) -> bool:
    """Whether the answer's last ``data: [DONE]`` is the terminator: at the start of a
    line and ending one. Inside an event's JSON, model output that says those words never
    starts a line (JSON escapes newlines); and the real terminator is the last event, so
    the last occurrence is the one to judge. (``rfind``, not a regular expression: this
    reads up to 16 KiB per stream, where a pattern anchored at each line costs 30x.)"""
    i = tail.rfind(_DONE_MARK)
    if i < 0 or (i > 0 and tail[i - 1] != 0x0A):
        return False
    after = tail[i + len(_DONE_MARK) : i + len(_DONE_MARK) + 2]
    return after[:1] == b"\n" or after == b"\r\n"


def error_event(message: str, error_type: str = "BadGatewayError", code: int = 502) -> bytes:
    """An in-stream error, as vLLM sends one, followed by the stream terminator."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n" + DONE
