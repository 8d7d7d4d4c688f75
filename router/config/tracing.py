"""The configuration of OpenTelemetry traces (``tracing``): off unless an endpoint is set."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TracingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL (e.g. http://otel-collector:4318/v1/traces); "
        "absent: no traces, and no cost on the request path",
    )
    sample_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="share of traces started here that are kept; a client's traceparent "
        "decides for its own trace (parent-based)",
    )
    service_name: str = Field(default="ctxroute", min_length=1, max_length=128)
    export_interval_ms: int = Field(
        default=1000, ge=10, le=60_000, description="batch export every this often"
    )
    export_timeout_s: float = Field(default=10.0, gt=0, le=120)
    headers: dict[str, str] = Field(
        default_factory=dict, description="sent with every export (e.g. a collector's key)"
    )

    @field_validator("endpoint")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (OTLP/HTTP)")
        return value

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None
