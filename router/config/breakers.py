"""How the router keeps engines within their KV cache and away from failing backends:
the KV marks each request class may fill, the error and memory breakers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KvMarksConfig(_Frozen):
    """The share of a backend's KV cache that requests of each class may commit (budgets in
    flight plus what the engine holds beyond them): a request goes only where its budget
    fits under its class's mark, and otherwise waits for room."""

    long: float = Field(
        default=0.88, gt=0, le=1, description="long work: it holds its KV for seconds of decode"
    )
    short: float = Field(
        default=0.97, gt=0, le=1, description="short work: a small need that leaves quickly"
    )

    @model_validator(mode="after")
    def _ordered(self) -> KvMarksConfig:
        if self.long > self.short:
            raise ValueError("kv_marks.long must not be above kv_marks.short")
        return self


class MemoryBreakerConfig(_Frozen):
    """Opens on evidence that the engine is overcommitted, not on usage vLLM reaches in
    normal operation (the KV marks keep requests within room)."""

    open_at: float = Field(
        default=0.97, gt=0, le=1, description="vLLM's KV cache usage (0-1) that opens it"
    )
    close_below: float | None = Field(
        default=None, gt=0, le=1, description="usage under which it closes; default 0.9 x open_at"
    )
    on_preemptions: bool = Field(
        default=True, description="vllm:num_preemptions_total rising opens it"
    )
    queue_growth_at: float | None = Field(
        default=0.9,
        gt=0,
        le=1,
        description="the waiting queue growing over two readings while KV usage is at or "
        "over this opens it (none: off)",
    )
    max_waiting: float | None = Field(
        default=None, ge=0, description="vLLM's waiting queue over this counts as saturated too"
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> MemoryBreakerConfig:
        if self.close_below is not None and self.close_below > self.open_at:
            raise ValueError("close_below must not be above open_at")
        return self


class BreakersConfig(_Frozen):
    consecutive_failures: int = Field(default=5, ge=1, description="failures in a row that open")
    failure_rate: float = Field(default=0.5, gt=0, le=1, description="failure share that opens")
    min_calls: int = Field(default=10, ge=1, description="calls before the rate is judged")
    window: int = Field(default=20, ge=1, description="the last calls the rate is over")
    open_s: float = Field(default=2.0, gt=0, description="first open time")
    growth: float = Field(default=2.0, ge=1, description="open time x this per reopening")
    max_open_s: float = Field(default=60.0, gt=0)
    jitter: float = Field(default=0.2, ge=0, le=1, description="open time x (1 + jitter x U[0,1))")
    half_open_probes: int = Field(default=1, ge=1, description="probes across the whole fleet")
    memory: MemoryBreakerConfig = MemoryBreakerConfig()

    @model_validator(mode="after")
    def _rate_rule_can_judge(self) -> BreakersConfig:
        if self.window < self.min_calls:
            raise ValueError(
                f"window ({self.window}) must be at least min_calls ({self.min_calls}): the "
                "failure rate is judged over the window once it holds min_calls calls, so a "
                "smaller window turns the rule off"
            )
        return self
