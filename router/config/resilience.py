"""How the router meets its own faults and its end: the retry budget, the orderly stop."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RetryBudgetConfig(_Frozen):
    """Retries of attempts that may have reached a backend (a timeout before the first
    byte, a connection broken after sending, a 5xx): at most ``ratio`` of the requests of
    the last ``window_s`` seconds, plus ``min_per_s`` a second. Attempts that provably
    never reached one (connection refused, 429/503, vLLM's context-length 400) are always
    tried elsewhere."""

    ratio: float = Field(default=0.2, ge=0, le=10, description="retries per recent request")
    min_per_s: float = Field(default=3.0, ge=0, description="retries a second allowed anyway")
    window_s: float = Field(default=10.0, ge=1, le=600, description="what 'recent' means")


class ShutdownConfig(_Frozen):
    """What SIGTERM (or Ctrl-C) does: ``/readyz`` answers 503 at once; requests keep being
    served for ``prestop_s`` (while a load balancer notices); then new requests get 503
    ``shutting_down`` while the answers in flight finish, for at most ``grace_s``; then the
    streams still running end with an SSE error event and the rest is cut. A second
    signal skips the waiting."""

    prestop_s: float = Field(default=0.0, ge=0, le=600, description="serving on after SIGTERM")
    grace_s: float = Field(
        default=90.0, ge=0, le=3600, description="for the answers in flight to finish"
    )
