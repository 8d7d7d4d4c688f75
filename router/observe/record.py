"""What one request did, filled in along its way and read once at its end (metrics, logs).

The handler makes it on arrival; the gate's wait, the attempt loop and the relay write
what they learn; ``metrics.observe`` reads it in the handler's ``finally``. One small
object per request, no per-chunk work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctxroute.router.model import RoutePlan

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    from ctxroute.router.observe.tracing import RequestTrace


class RequestRecord:
    __slots__ = (
        "arrived",
        "attempts",
        "backend",
        "blocked",
        "budget",
        "client_gone",
        "completion_tokens",
        "endpoint",
        "finish_reason",
        "first_byte_at",
        "indicators",
        "model",
        "plan",
        "pool",
        "prompt_tokens",
        "queued_s",
        "reject",
        "request_id",
        "route",
        "status",
        "stream",
        "tenant",
        "tier",
        "trace",
        "window",
    )

    def __init__(self, arrived: float, request_id: str, endpoint: str) -> None:
        self.arrived = arrived  # loop time the request reached the handler
        self.request_id = request_id
        self.endpoint = endpoint  # "chat" or "completions"
        self.model = ""  # as the client asked, once the body is read
        self.stream = False
        self.plan: RoutePlan | None = None  # the route it was dispatched on (or refused on)
        self.pool = ""  # the pool of the backend that answered, else the preferred one
        self.backend = ""  # the url of the backend that answered, if one did
        self.attempts = 0
        self.status = 0  # what the client got (0: nothing, the client left first)
        self.first_byte_at: float | None = None  # loop time of the answer's first byte
        self.queued_s = 0.0  # time held at the router by admission
        self.prompt_tokens: int | None = None  # the backend's usage when it said, else ours
        self.completion_tokens: int | None = None
        self.finish_reason: str | None = None
        self.budget = 0  # prompt + max_tokens, as routed
        self.window = 0  # the answering pool's max_context_tokens
        self.client_gone = False
        self.tier = ""  # the priority tier's name, once known
        self.tenant = ""  # its key's tenant, when keys are required
        self.reject: str | None = None  # the router's own refusal (x-ctxroute-reject)
        self.route = ""  # why it went where it went (x-ctxroute-route), once answered
        self.trace: RequestTrace | None = None  # its spans, when tracing is on
        self.indicators: tuple[str, ...] = ()  # the prompt-injection rules it tripped
        self.blocked: str | None = None  # the rule whose action "block" refused or cut it
