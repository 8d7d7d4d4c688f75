"""Each backend's recent answers, for drift (``core/drift.py``): one bounded window per
backend, appended to once per answered request (a tuple, no parsing: the record already
holds the counts), scored when /status or /metrics asks, at most once a second.

Only short requests' answers count: the router places long documents on purpose (away
from the backend kept for short work, on the lightest in long work), so backends see
different shares of them, and their answers (longer, another output-per-prompt ratio)
would make healthy backends look unlike one another."""

from __future__ import annotations

from dataclasses import dataclass, field

from ctxroute.router.core.drift import Answer, Window, baseline_scores, fleet_scores
from ctxroute.router.fleet.topology import Fleet
from ctxroute.router.observe.record import RequestRecord

_CACHE_S = 1.0


@dataclass(frozen=True, slots=True)
class DriftView:
    """One backend's drift, as scored last: per signal, the higher of its score against
    its peers and against its own baseline (``scores``), the baseline's alone, and the
    share of its recent answers cut by ``max_tokens``."""

    scores: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    length_share: float | None = None


NO_DRIFT = DriftView()


class DriftWatch:
    def __init__(self, fleet: Fleet) -> None:
        self.by_url = fleet.by_url
        self.models = {b.index: fleet.pool_named[b.pool].model for b in fleet.backends}
        self.windows = {b.index: Window.new() for b in fleet.backends}
        self.work = fleet.work
        self._scored: dict[int, DriftView] = {}
        self._scored_at = float("-inf")

    def observe(self, record: RequestRecord, now: float) -> None:
        """A request ended: its answer joins its backend's window if it was one whole."""
        completion = record.completion_tokens
        if record.status != 200 or completion is None or record.finish_reason is None:
            return
        backend = self.by_url.get(record.backend)
        prompt = record.prompt_tokens or 0
        if backend is None or self.work.is_long(prompt):
            return
        rate = None
        first = record.first_byte_at
        if record.stream and first is not None and completion > 1 and now > first:
            rate = (completion - 1) / (now - first)
        self.windows[backend.index].add(
            Answer(completion, record.finish_reason == "length", rate, completion / max(1, prompt))
        )

    def views(self, now: float) -> dict[int, DriftView]:
        if now - self._scored_at >= _CACHE_S:
            peers = fleet_scores(self.models, self.windows)
            views = {}
            for i, window in self.windows.items():
                own = baseline_scores(window)
                merged = dict(peers.get(i, {}))
                for signal, score in own.items():
                    merged[signal] = max(score, merged.get(signal, 0.0))
                views[i] = DriftView(merged, own, window.length_share())
            self._scored = views
            self._scored_at = now
        return self._scored
