"""The async driver of the engine core: one task that runs steps in real time.

Each step is planned (``EngineCore.schedule``), slept for its modelled duration and then
applied (``EngineCore.complete``). Steps are laid on an absolute timeline (a step starts
when the previous one was due to end, not when Python got round to it), so the per-step
Python cost does not accumulate into drift. ``lag`` is how late each step's completion
ran compared to its due time: the test of "the simulator keeps real time".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass

from ctxroute.backends.simulator.engine import EngineCore, SimRequest
from ctxroute.backends.simulator.metrics import VllmMetrics

# Behind by more than this, the timeline is reset to now instead of catching up with a
# burst of zero-length steps.
_MAX_CATCH_UP_S = 0.05


@dataclass(slots=True)
class LagStats:
    steps: int = 0
    max_lag_s: float = 0.0
    recent: deque[float] | None = None

    def add(self, lag: float) -> None:
        self.steps += 1
        if lag > self.max_lag_s:
            self.max_lag_s = lag
        if self.recent is None:
            self.recent = deque(maxlen=2048)
        self.recent.append(lag)

    def percentile(self, q: float) -> float:
        if not self.recent:
            return 0.0
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def reset(self) -> None:
        self.max_lag_s = 0.0
        if self.recent is not None:
            self.recent.clear()


class EngineRunner:
    def __init__(self, core: EngineCore, metrics: VllmMetrics, *, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.core = core
        self.metrics = metrics
        self.speed = speed
        self.lag = LagStats()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(self, req: SimRequest) -> None:
        self.core.add(req)
        self._wake.set()

    def abort(self, req: SimRequest) -> bool:
        aborted = self.core.abort(req, asyncio.get_running_loop().time())
        if aborted:
            self.metrics.drain_finished()
        return aborted

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        core = self.core
        metrics = self.metrics
        start = loop.time()
        while True:
            if not core.has_work():
                self._wake.clear()
                await self._wake.wait()
                start = loop.time()
            step = core.schedule(start)
            if not step.scheduled and step.preempted:
                continue  # vLLM admits nobody in a step that preempted; the next step will
            if not step.scheduled:
                # Nothing can run (every waiting request was aborted, or needs blocks that
                # only an abort will free): wait for the next submit/abort.
                metrics.after_step(start, [])
                self._wake.clear()
                await self._wake.wait()
                start = loop.time()
                continue
            due = start + step.duration_ms / 1000.0 / self.speed
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let handlers run even when we are behind
            now = loop.time()
            lag = now - due
            self.lag.add(lag)
            progressed = core.complete(step, now)
            itl = metrics.itl
            for req in progressed:
                if req.last_token_at is None:
                    metrics.first_token(req)
                else:
                    itl.observe(now - req.last_token_at)
                req.last_token_at = now
                if req.on_progress is not None:
                    req.on_progress()
            metrics.after_step(now, progressed)
            start = due if lag < _MAX_CATCH_UP_S else now
