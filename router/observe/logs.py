"""Log lines: one per request (``RequestLog``), and the format of every other line.

Each request that reaches a completion endpoint is logged once, at its end, from its
``RequestRecord``: who asked for what (request id, endpoint, model, tier), where it went
and why (the ``x-ctxroute-route`` line and the planner's phrases), what came of it
(status, the router's refusal reason, tokens, finish reason, TTFT, latency, time held).
Nothing sensitive: no prompt or answer text, no header but the request id, no key.

Two forms: ``json`` (one object per line, for a log pipeline; the default) and ``text``
(one readable line, what ``ctxroute demo`` prints). Levels: a request answered 5xx by the
router (no backend, overload, a broken upstream) is a warning, every other one is info,
so ``log_level: warning`` keeps only the failures.

The request line does not go through the logging module: lines are buffered and written
every ``flush_s`` (or at 256 pending, or at shutdown) in one ``write``, so a request costs
no system call for its log line (why: docs/architecture.md, "Performance budget").
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import BinaryIO, Literal

import orjson
from ctxroute.router.observe.record import RequestRecord

LogFormat = Literal["json", "text"]
_INFO = logging.INFO
_WARNING = logging.WARNING
_MAX_PENDING = 256
_dumps = orjson.dumps
_NEWLINE = orjson.OPT_APPEND_NEWLINE
_PIPE_BUF = 4096  # POSIX: a write to a pipe up to this size is never split


_MILLIS = [f"{ms:03d}" for ms in range(1000)]  # a table: a format spec per line costs 3x


class _Clock:
    """``2026-11-23T10:00:01.123Z`` for a wall-clock time; the part up to the second is
    formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def iso(self, wall: float) -> str:
        second = int(wall)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{_MILLIS[int((wall - second) * 1000)]}Z"


class RequestLog:
    """Writes each request's line to ``stream`` (bytes), buffered as described above."""

    def __init__(self, stream: BinaryIO, *, level: int = _INFO, form: LogFormat = "json",
                 flush_s: float = 0.2) -> None:  # fmt: skip
        self.stream = stream
        self.level = level
        self.form = form
        self.flush_s = flush_s
        self._pending: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._clock = _Clock()

    def write(self, record: RequestRecord, now: float) -> None:
        """``now``: the monotonic time the request ended (``record.arrived`` is one too)."""
        # a prompt-injection indicator is worth a warning: it shows at log_level warning
        level = _WARNING if record.status >= 500 or record.indicators else _INFO
        if level < self.level:
            return
        wall = time.time()
        line = self._json(record, now, wall, level) if self.form == "json" else \
            self._text(record, now, wall, level)  # fmt: skip
        pending = self._pending
        pending.append(line)
        if len(pending) >= _MAX_PENDING:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.flush_s, self.flush)
            except RuntimeError:  # no loop (a caller outside the server): write at once
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending = self._pending
        if not pending:
            return
        # whole lines, at most PIPE_BUF bytes per write: a pipe (docker, systemd, serve
        # --workers sharing one stderr) then never interleaves two processes' lines
        chunks: list[bytes] = []
        size = 0
        try:
            for line in pending:
                if size + len(line) > _PIPE_BUF and chunks:
                    self._write(b"".join(chunks))
                    chunks.clear()
                    size = 0
                chunks.append(line)
                size += len(line)
            self._write(b"".join(chunks))
        except (OSError, ValueError):  # stderr closed or full: never fail a request for it
            pass
        finally:
            pending.clear()

    def _write(self, data: bytes) -> None:
        self.stream.write(data)
        self.stream.flush()

    def _json(self, record: RequestRecord, now: float, wall: float, level: int) -> bytes:
        # milliseconds to 0.1 as int(x * 10000) / 10: round(x, 1) costs 4x as much
        arrived = record.arrived
        first = record.first_byte_at
        plan = record.plan
        return _dumps({
            "ts": self._clock.iso(wall),
            "level": "warning" if level == _WARNING else "info",
            "logger": "ctxroute.request",
            "request_id": record.request_id,
            "endpoint": record.endpoint,
            "model": record.model,
            "stream": record.stream,
            "tier": record.tier,
            "tenant": record.tenant or None,
            "status": record.status,
            "outcome": _outcome(record),
            "reject": record.reject,
            "pool": record.pool,
            "backend": record.backend,
            "attempts": record.attempts,
            "held_ms": int(record.queued_s * 10_000) / 10,
            "ttft_ms": None if first is None else int((first - arrived) * 10_000) / 10,
            "latency_ms": int((now - arrived) * 10_000) / 10,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "finish_reason": record.finish_reason,
            "budget": record.budget or None,
            "window": record.window or None,
            "route": record.route or None,
            "indicators": list(record.indicators) or None,
            "blocked": record.blocked,
            "why": None if plan is None else plan.reason,
        }, option=_NEWLINE)  # fmt: skip

    def _text(self, record: RequestRecord, now: float, wall: float, level: int) -> bytes:
        first = record.first_byte_at
        ttft = "-" if first is None else f"{(first - record.arrived) * 1000:.0f}ms"
        where = f"{record.pool} {record.backend}" if record.backend else (record.pool or "-")
        tokens = ""
        if record.completion_tokens is not None:
            tokens = (f" tokens {record.prompt_tokens}+{record.completion_tokens}"
                      f" ({record.finish_reason or '?'})")  # fmt: skip
        outcome = _outcome(record)
        said = record.route or (record.plan.reason if record.plan is not None else "")
        text = (f"{time.strftime('%H:%M:%S', time.localtime(wall))} "
                f"{'WARN' if level == _WARNING else 'info'} {record.status or '---'} "
                f"{record.endpoint} {record.model or '?'}"
                f"{' (' + record.tenant + ')' if record.tenant else ''}"
                f" -> {where}{tokens} ttft {ttft} "
                f"total {(now - record.arrived) * 1000:.0f}ms"
                f"{'' if outcome == 'success' else ' ' + outcome}"
                f"{' [' + said + ']' if said else ''}{_indicated(record)}\n")  # fmt: skip
        return text.encode("utf-8", "replace")


def _indicated(record: RequestRecord) -> str:
    if not record.indicators:
        return ""
    blocked = f" blocked={record.blocked}" if record.blocked else ""
    return f" indicators={','.join(record.indicators)}{blocked}"


def _outcome(record: RequestRecord) -> str:
    if record.client_gone:
        return "client_gone"
    if record.reject is not None:
        return "rejected:" + record.reject
    status = record.status
    if status < 400:
        return "success"
    return "client_error" if status < 500 else "error"


class JsonFormatter(logging.Formatter):
    """Every other log line as one JSON object, in the request lines' shape."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": self._clock.iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def setup_logging(level: str, form: LogFormat) -> None:
    """The process's log lines to stderr, in ``form``, from ``level`` up."""
    handler = logging.StreamHandler()
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
