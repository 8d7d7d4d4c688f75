"""The mixed workload of ``ctxroute bench`` for locust users: 80% short chats over shared
system prompts and sessions, 20% long documents (8k-60k tokens), every request streamed,
with each request's time to first token recorded as its own locust entry ("TTFT short",
"TTFT long") next to the full-response one.

    pip install locust
    locust -f bench/locustfile.py --headless --host http://127.0.0.1:8080 \\
        --users 50 --spawn-rate 10 --run-time 60s --model llama-3.1-8b-instruct
    # 50 users x 1 request/s each = 50 RPS (--rps-per-user changes the 1)

Requests come from ``bench.workload`` (seeded), so a locust run and a ``ctxroute bench``
run send the same kinds of bodies. Locust is closed-loop per user (a user sends its next
request only when the last ended): for TTFT percentiles free of coordinated omission use
``ctxroute bench``, which sends on a fixed schedule.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

from ctxroute.bench.workload import Planned, Workload, plan_requests
from locust import HttpUser, constant_throughput, events, task

_lock = threading.Lock()
_plan: Iterator[Planned] | None = None


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument("--model", default="sim-model", help="the model name to request")
    parser.add_argument("--long-share", type=float, default=0.2, help="share of long documents")
    parser.add_argument("--seed", type=int, default=1, help="workload seed")
    parser.add_argument("--rps-per-user", type=float, default=1.0, help="requests/s per user")


def _next(options: Any) -> Planned:
    global _plan
    with _lock:
        if _plan is None:
            short = 1.0 - options.long_share
            workload = Workload(rate=10.0, duration_s=600.0, seed=options.seed,
                                short_share=short, model=options.model)  # fmt: skip
            _plan = itertools.cycle(plan_requests(workload))
        return next(_plan)


class MixedWorkloadUser(HttpUser):
    def wait_time(self) -> float:
        return constant_throughput(self.environment.parsed_options.rps_per_user)(self)

    @task
    def send(self) -> None:
        planned = _next(self.environment.parsed_options)
        headers = {"content-type": "application/json"}
        if planned.session:
            headers["X-Session-ID"] = planned.session
        start = time.perf_counter()
        first: float | None = None
        size = 0
        tail = b""
        with self.client.post(planned.path, data=planned.body, headers=headers, stream=True,
                              name=f"{planned.kind} {planned.path}",
                              catch_response=True) as response:  # fmt: skip
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return
            for chunk in response.iter_content(chunk_size=None):
                if first is None and chunk:
                    first = time.perf_counter() - start
                size += len(chunk)
                tail = (tail + chunk)[-4096:]
            if b"data: [DONE]" not in tail:
                response.failure("the stream ended without data: [DONE]")
                return
            response.success()
        if first is not None:
            events.request.fire(request_type="TTFT", name=planned.kind,
                                response_time=first * 1000.0, response_length=size,
                                exception=None, context={})  # fmt: skip
