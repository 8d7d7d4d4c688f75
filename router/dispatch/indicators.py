"""Prompt-injection indicators at the door and on the answer: the rules (``core/
indicators.py``, ``core/leakage.py``) with each rule's action from the config.

``monitor`` counts the hit (metrics by model, pool and tenant) and names it in the request's
log line; ``flag`` also tells the client (``x-ctxroute-indicators``; a leak found mid-stream,
after the headers left: an SSE comment line); ``block`` refuses the request (400, before
any backend sees it) or ends a leaking answer (a stream: an SSE error event instead of the
chunk that completed the quote; a whole answer: a 400 instead of it).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from aiohttp import web
from ctxroute.router.config import IndicatorsConfig
from ctxroute.router.core.answertext import answer_text
from ctxroute.router.core.indicators import scan, scan_request, system_texts
from ctxroute.router.core.leakage import LeakGuard, LeakWatch, SystemNgrams
from ctxroute.router.errors import Blocked, error_body
from ctxroute.router.model import INPUT_RULES, LEAK_RULE, RULES
from ctxroute.router.observe.record import RequestRecord

HEADER = "x-ctxroute-indicators"
_CACHED_TEXTS = 4096  # recent texts whose hits are kept
_CACHED_CHARS = 2048  # the longest text kept (at most 8M characters in all)


class Indicators:
    """The configured rules, made once per app."""

    def __init__(self, config: IndicatorsConfig) -> None:
        self.actions = {rule: config.action(rule) for rule in RULES}
        self.input_on = any(self.actions[r] != "off" for r in INPUT_RULES)
        self.leak_action = self.actions[LEAK_RULE]
        self.words = config.leak_words
        self.ngrams = SystemNgrams(self.words) if self.leak_action != "off" else None
        # what each recent text tripped: a chat sends its whole history with every turn,
        # so each message is read once, not once per turn (short texts only: the cache is
        # bounded in entries and in the size of each)
        self._scanned: OrderedDict[str, frozenset[str]] = OrderedDict()

    def _scan(self, text: str) -> set[str] | frozenset[str]:
        if len(text) > _CACHED_CHARS:
            return scan(text)
        cache = self._scanned
        found = cache.get(text)
        if found is None:
            found = cache[text] = frozenset(scan(text))
            if len(cache) > _CACHED_TEXTS:
                cache.popitem(last=False)
        return found

    def screen(self, body: Any, chat: bool, record: RequestRecord) -> tuple[tuple[str, str], ...]:
        """The input rules on a (validated) request: hits recorded, a ``block`` raised, the
        header of the ``flag`` ones returned."""
        if not self.input_on:
            return ()
        found = scan_request(body, chat, scan=self._scan)
        if not found:
            return ()
        actions = self.actions
        hits = tuple(r for r in found if actions[r] != "off")
        if not hits:
            return ()
        record.indicators = hits
        blocked = [r for r in hits if actions[r] == "block"]
        if blocked:
            record.blocked = blocked[0]
            raise Blocked(f"the request was refused by the router's prompt-injection rule "
                          f"{', '.join(blocked)}", "messages" if chat else "prompt")  # fmt: skip
        flagged = [r for r in hits if actions[r] == "flag"]
        return ((HEADER, ",".join(flagged)),) if flagged else ()

    def watch(self, body: Any, chat: bool, stream: bool) -> LeakWatch | None:
        """A leak watch for the answer of a chat request with a system message long enough
        to quote; none for a stream of several choices (their words interleave)."""
        if self.ngrams is None or not chat or (stream and body.get("n", 1) != 1):
            return None
        texts = system_texts(body)
        if not texts:
            return None
        quoted = self.ngrams.of(texts)
        return LeakWatch(quoted, self.words) if quoted.grams else None

    def stream_guard(self, watch: LeakWatch | None, chat: bool) -> LeakGuard | None:
        return None if watch is None else LeakGuard(watch, chat, self.leak_action)

    def checked(self, watch: LeakWatch, answer: Any, body: bytes, headers: list[tuple[str, str]],
                chat: bool, record: RequestRecord) -> web.Response:  # fmt: skip
        """A whole answer read for a quote of its system message, and what the rule's action
        makes of it: the answer as it came, flagged, or a 400 in its place."""
        watch.feed(answer_text(answer, chat))
        if not watch.end():
            return web.Response(status=200, body=body, headers=headers)
        action = self.leak_action
        leaked(record, action == "block")
        if action == "block":
            record.status = 400
            error = error_body(LeakGuard.message_for(watch), "BadRequestError", None, 400)
            kept = [(k, v) for k, v in headers if k.lower() != "content-type"]
            kept.append(("Content-Type", "application/json"))
            return web.Response(status=400, body=error, headers=kept)
        if action == "flag":
            headers.append((HEADER, LEAK_RULE))
        return web.Response(status=200, body=body, headers=headers)


def leaked(record: RequestRecord, blocked: bool) -> None:
    """The answer quoted its system message: in the record (its log line and metrics)."""
    record.indicators = (*record.indicators, LEAK_RULE)
    if blocked:
        record.blocked = LEAK_RULE
