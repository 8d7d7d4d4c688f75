"""A retry budget (as Finagle's ``RetryBudget`` and Envoy's ``retry_budget``): retries may be
at most ``ratio`` of the requests of the last ``window_s`` seconds, plus a floor of
``min_per_s`` retries a second (so that a quiet router can still retry at all). Pure: the
clock is passed in.

Why a budget: a retry of a request that may have reached its backend (a timeout before
the first byte, a connection broken after sending, a 5xx) is a second prefill of the same
prompt. Under overload such failures are many at once; retried without a bound, each one
multiplies the load that caused it (three engines prefilling the same long prompt, each
then timing out and blamed). A budget lets isolated failures be retried and stops a retry
storm at ``ratio`` extra load. Retries of requests that provably never reached a backend
(a refused connection, a 429/503 before any work, a context-length 400) cost no engine
work and are not counted (``dispatch/proxy.py`` decides which).

Counts are kept per whole second in a ring of ``window_s`` slots: memory is bounded by the
window, whatever the request rate.
"""

from __future__ import annotations

import math
from collections import deque


class RetryBudget:
    __slots__ = ("_slots", "min_per_s", "ratio", "requests", "retries", "window_s")

    def __init__(self, ratio: float = 0.2, min_per_s: float = 3.0, window_s: float = 10.0):
        if ratio < 0 or min_per_s < 0 or window_s < 1:
            raise ValueError("ratio and min_per_s must be >= 0, window_s >= 1")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = int(window_s)
        # [second, requests, retries], oldest first; at most window_s of them
        self._slots: deque[list[int]] = deque()
        self.requests = 0  # in the window
        self.retries = 0

    def _slot(self, now: float) -> list[int]:
        second = math.floor(now)
        slots = self._slots
        oldest = second - self.window_s + 1
        while slots and slots[0][0] < oldest:
            _, requests, retries = slots.popleft()
            self.requests -= requests
            self.retries -= retries
        if not slots or slots[-1][0] != second:
            slots.append([second, 0, 0])
        return slots[-1]

    def request(self, now: float) -> None:
        """A request's first attempt: it adds ``ratio`` of a retry to the budget."""
        slots = self._slots
        # (the common case, another request in the same second, without the window's walk)
        slot = slots[-1] if slots and slots[-1][0] == math.floor(now) else self._slot(now)
        slot[1] += 1
        self.requests += 1

    def allowed(self, now: float) -> float:
        """How many retries the window allows, in all."""
        self._slot(now)
        return self.ratio * self.requests + self.min_per_s * self.window_s

    def try_retry(self, now: float) -> bool:
        """Take one retry from the budget; False (nothing taken) when it is spent."""
        slot = self._slot(now)
        if self.retries + 1 > self.ratio * self.requests + self.min_per_s * self.window_s:
            return False
        slot[2] += 1
        self.retries += 1
        return True
