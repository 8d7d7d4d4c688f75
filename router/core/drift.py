"""Drift: a backend whose answers no longer look like those of its model's other backends,
or like its own earlier answers.

Values in: each backend's recent answers (output tokens, cut by ``max_tokens``, empty,
tokens per second, output per prompt token), kept in a bounded window per backend. Out:
per backend and signal, a score, the two-sample statistic over its critical value at
``ALPHA``, of the backend's window against each other backend of the same model (the lower
median of those: ``fleet_scores``), and against its own baseline (``baseline_scores``):
1.0 or more is drift.

The baseline is a copy of the backend's first full window, taken again each time
``REBASE_EVERY`` more answers have come with every baseline score under 1: it follows a
slow change of the workload, not a sudden one, and it sees a change made to every backend
of a model at once (a new model version rolled out everywhere), which peers cannot. It
leaves out tokens per second: a backend's own speed follows its load, which is not drift.

Which statistic, and why:

* distributions (output tokens, tokens per second, output per prompt token): the
  two-sample Kolmogorov-Smirnov distance D, with no assumption on their shape (output
  lengths are skewed, tokens per second bimodal under batching); critical value
  ``c(ALPHA) * sqrt((n + m) / (n m))`` (for tokens per second, at least
  ``RATE_MIN_DISTANCE``: see there);
* shares (answers cut by ``max_tokens``, empty answers): the two-proportion z statistic
  with a pooled variance, critical value ``Z_CRIT``.

``ALPHA`` is 1e-4 two-sided per comparison: a fleet of 4 backends and 5 signals compared
every scrape makes thousands of comparisons an hour, most on overlapping windows, and the
alert also waits for the score to hold. Under no drift a score of 1 is reached by chance
in about 1 of 10,000 independent comparisons.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

ALPHA = 1e-4
KS_C = math.sqrt(-math.log(ALPHA / 2) / 2)  # 2.225
Z_CRIT = 3.891  # two-sided, ALPHA
WINDOW = 200  # answers kept per backend
MIN_ANSWERS = 30  # fewer on either side: no score
SIGNALS = ("output_tokens", "tokens_per_s", "output_per_prompt", "length_stops", "empty")


# tokens per second also follow each backend's momentary batch, which differs between
# healthy peers (hashing spreads sessions unevenly; load moves): with 200 answers a side,
# such real but benign differences reach the critical value (D = 0.22). So speed must
# also differ by half the answers (D >= 0.5) to score 1: healthy runs reached D = 0.27 and,
# with another process taking the CPU the simulated engines run on, 0.35
# (docs/performance.md, "Drift"); a backend 30% slower differs by about 0.8
RATE_MIN_DISTANCE = 0.5
REBASE_EVERY = 5 * WINDOW  # answers between two baselines (while none scores 1 or more)
BASELINE_SIGNALS = ("output_tokens", "output_per_prompt", "length_stops", "empty")


class Answer(NamedTuple):
    output_tokens: int
    cut: bool  # finish_reason "length"
    tokens_per_s: float | None  # output tokens over the time after the first byte
    output_per_prompt: float


@dataclass(slots=True)
class Window:
    """One backend's recent answers (bounded), and its baseline: a copy of an earlier
    full window (None until the first is full)."""

    answers: deque[Answer]
    baseline: tuple[Answer, ...] | None = None
    since_baseline: int = 0  # answers added since the baseline was taken

    @classmethod
    def new(cls) -> Window:
        return cls(deque(maxlen=WINDOW))

    def add(self, answer: Answer) -> None:
        self.answers.append(answer)
        self.since_baseline += 1
        if self.baseline is None and len(self.answers) == WINDOW:
            self.rebase()

    def rebase(self) -> None:
        self.baseline = tuple(self.answers)
        self.since_baseline = 0

    def length_share(self) -> float | None:
        """The share of its recent answers cut by ``max_tokens`` (None: too few)."""
        n = len(self.answers)
        return None if n < MIN_ANSWERS else sum(a.cut for a in self.answers) / n


def ks_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sample Kolmogorov-Smirnov distance (the largest gap between the samples'
    empirical distribution functions)."""
    xs, ys = sorted(a), sorted(b)
    n, m = len(xs), len(ys)
    i = j = 0
    gap = 0.0
    while i < n and j < m:
        value = min(xs[i], ys[j])
        while i < n and xs[i] == value:
            i += 1
        while j < m and ys[j] == value:
            j += 1
        gap = max(gap, abs(i / n - j / m))
    return gap


def ks_score(a: Sequence[float], b: Sequence[float], floor: float = 0.0) -> float:
    """D over its critical value, or over ``floor`` when that is larger: a distance must
    be both significant and at least ``floor`` to score 1."""
    n, m = len(a), len(b)
    return ks_distance(a, b) / max(KS_C * math.sqrt((n + m) / (n * m)), floor)


def share_score(hits_a: int, n: int, hits_b: int, m: int) -> float:
    pooled = (hits_a + hits_b) / (n + m)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / m))
    if spread == 0.0:
        return 0.0  # all or none on both sides: no difference to see
    return abs(hits_a / n - hits_b / m) / spread / Z_CRIT


def scores(mine: Sequence[Answer], others: Sequence[Answer]) -> dict[str, float]:
    """Each signal's score of ``mine`` against ``others`` ({} when either is too small)."""
    if len(mine) < MIN_ANSWERS or len(others) < MIN_ANSWERS:
        return {}
    out = {
        "output_tokens": ks_score(
            [a.output_tokens for a in mine], [a.output_tokens for a in others]
        ),
        "output_per_prompt": ks_score(
            [a.output_per_prompt for a in mine], [a.output_per_prompt for a in others]
        ),
        "length_stops": share_score(
            sum(a.cut for a in mine), len(mine), sum(a.cut for a in others), len(others)
        ),
        "empty": share_score(
            sum(a.output_tokens == 0 for a in mine),
            len(mine),
            sum(a.output_tokens == 0 for a in others),
            len(others),
        ),
    }
    rate_mine = [a.tokens_per_s for a in mine if a.tokens_per_s is not None]
    rate_others = [a.tokens_per_s for a in others if a.tokens_per_s is not None]
    if len(rate_mine) >= MIN_ANSWERS and len(rate_others) >= MIN_ANSWERS:
        out["tokens_per_s"] = ks_score(rate_mine, rate_others, RATE_MIN_DISTANCE)
    return out


def fleet_scores(models: Mapping[int, str], windows: Mapping[int, Window]
                 ) -> dict[int, dict[str, float]]:  # fmt: skip
    """Every backend's scores: per signal, the lower median of its scores against each
    other backend of its model. One drifting backend out of four scores high against all
    three others; a healthy one scores high only against the drifting one, so its median
    stays low. (With two backends of a model, each is the other's only peer: both score.)"""
    out: dict[int, dict[str, float]] = {}
    for backend, model in models.items():
        mine = list(windows[backend].answers)
        pairs = [scores(mine, list(windows[other].answers)) for other, m in models.items()
                 if m == model and other != backend]  # fmt: skip
        merged: dict[str, float] = {}
        for signal in SIGNALS:
            seen = sorted(p[signal] for p in pairs if signal in p)
            if seen:
                merged[signal] = seen[(len(seen) - 1) // 2]
        out[backend] = merged
    return out


def baseline_scores(window: Window) -> dict[str, float]:
    """The window's scores against its own baseline ({} until there is one), on
    ``BASELINE_SIGNALS``. A window that has turned over ``REBASE_EVERY`` answers since and
    scores under 1 on every signal becomes the new baseline (after this scoring)."""
    if window.baseline is None:
        return {}
    mine = list(window.answers)
    scored = {k: v for k, v in scores(mine, window.baseline).items() if k in BASELINE_SIGNALS}
    if window.since_baseline >= REBASE_EVERY and all(v < 1.0 for v in scored.values()):
        window.rebase()
    return scored
