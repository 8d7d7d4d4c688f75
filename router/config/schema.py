"""The configuration's schema: frozen, validated pydantic models (``RouterConfig`` at the
top), each field with its bounds and default."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from ctxroute.router.config.breakers import BreakersConfig, KvMarksConfig
from ctxroute.router.config.edge import AdminConfig, AuthConfig, LimitsConfig
from ctxroute.router.config.indicators import IndicatorsConfig
from ctxroute.router.config.resilience import RetryBudgetConfig, ShutdownConfig
from ctxroute.router.config.tracing import TracingConfig
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ConfigError(Exception):
    """A configuration problem, worded for the person who wrote the file."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BackendConfig(_Frozen):
    url: str
    name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="what clients are shown instead of the URL; default: <pool>-<n>",
    )
    model: str | None = Field(default=None, description="served model name; default: the pool's")
    max_in_flight: int = Field(default=64, ge=1)
    weight: int = Field(default=1, ge=1)
    kv_tokens: int | None = Field(default=None, ge=1, description="default: the pool's")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # plain HTTP: vLLM backends sit on a private network next to the router
        if not value.startswith("http://"):
            raise ValueError("must start with http:// (backends are reached over plain HTTP)")
        parts = urlsplit(value.rstrip("/"))
        if parts.path or parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must be an origin (http://host:port), without a path")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{value!r} has no valid port (a number from 1 to 65535)") from None
        if not parts.hostname:
            raise ValueError(f"{value!r} has no host")
        if port == 0:
            raise ValueError(f"{value!r}: port 0 cannot be connected to")
        return value.rstrip("/")

    @property
    def origin(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80


class PoolConfig(_Frozen):
    # it goes in response headers and metric labels as it is
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    model: str = Field(min_length=1, description="model name clients ask for")
    max_context_tokens: int = Field(ge=16, description="the backends' max_model_len")
    default_max_tokens: int = Field(default=512, ge=1)
    kv_tokens: int | None = Field(
        default=None, ge=1, description="each backend's KV cache in tokens (blocks x block size)"
    )
    prefill_tokens_per_s: float | None = Field(
        default=None, gt=0, description="the backends' prefill rate; default: learned online"
    )
    backends: tuple[BackendConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _default_fits(self) -> PoolConfig:
        if self.default_max_tokens >= self.max_context_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must be smaller than "
                f"max_context_tokens ({self.max_context_tokens})"
            )
        return self


class TokenizerConfig(_Frozen):
    """An exact token counter for a model: a ``tokenizer.json`` or a tiktoken encoding."""

    path: str | None = None
    tiktoken: str | None = None
    # chat template overhead, in tokens: per message and for the assistant turn opened at
    # the end (Llama 3: 5 and 3; measure yours against usage.prompt_tokens)
    tokens_per_message: int = Field(default=5, ge=0)
    tokens_per_reply: int = Field(default=3, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> TokenizerConfig:
        if (self.path is None) == (self.tiktoken is None):
            raise ValueError("set exactly one of 'path' (tokenizer.json) or 'tiktoken'")
        return self


class ListenConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class TimeoutsConfig(_Frozen):
    connect_s: float = Field(default=2.0, gt=0)
    ttfb_s: float = Field(
        default=30.0, gt=0, description="from sending a stream's request to its first body byte"
    )
    idle_read_s: float = Field(default=60.0, gt=0, description="between two body reads")
    unary_s: float = Field(
        default=600.0,
        gt=0,
        description="from sending a non-streaming request to its whole answer (it arrives at "
        "the end)",
    )
    keepalive_s: float = Field(
        default=4.0,
        gt=0,
        description="reuse an idle upstream connection only this long (below the backend's "
        "own keep-alive: uvicorn, which vLLM runs on, closes after 5 s)",
    )


class RoutingConfig(_Frozen):
    session_header: str = "X-Session-ID"
    # the leading part of the prompt that forms the hash key when there is no session/user:
    # long enough to cover a system prompt, short enough to hash quickly
    prefix_chars: int = Field(default=2048, ge=16)
    long_prefill_tokens: int = Field(
        default=4096, ge=1, description="a pending prefill this long makes a backend slow to start"
    )
    pool_tolerance_ms: float = Field(
        default=50.0, ge=0, description="estimated wait a request accepts to stay in its pool"
    )
    affinity_tolerance_ms: float = Field(
        default=20.0, ge=0, description="estimated wait a request accepts to stay on its owner"
    )
    load_factor: float = Field(
        default=1.25, ge=1.0, description="the owner keeps affinity under c x its pool's mean"
    )
    keep_clean: int = Field(
        default=1, ge=0, description="backends long requests leave free of long prefill"
    )
    long_wait_limit_ms: float = Field(
        default=10_000.0, gt=0, description="how long a long request may queue to keep them so"
    )
    step_ms_per_ktok: float = Field(
        default=0.045,
        ge=0,
        description="how much each 1,000 tokens in flight on a backend lengthen its engine "
        "steps (every decode step reads their KV); 0.045 for an 8B Llama on an H100",
    )
    default_prefill_tokens_per_s: float = Field(
        default=20_000.0, gt=0, description="starting point of the learned prefill rate"
    )
    max_attempts: int = Field(default=3, ge=1)
    retry_budget: RetryBudgetConfig = Field(default_factory=lambda: RetryBudgetConfig())
    vnodes: int = Field(default=160, ge=1, description="virtual nodes per backend weight")
    kv_marks: KvMarksConfig = KvMarksConfig()


class ProbeConfig(_Frozen):
    interval_s: float = Field(
        default=1.0, gt=0, description="how often /health and /metrics of every backend are read"
    )
    timeout_s: float = Field(default=1.0, gt=0)


class StoreConfig(_Frozen):
    redis_url: str | None = Field(
        default=None,
        description="redis://, rediss://, unix://, or redis+sentinel://host:port/service; "
        "absent: state stays in this process",
    )
    key_prefix: str = Field(default="ctxroute", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    timeout_ms: float = Field(default=100.0, gt=0, description="hard limit on every Redis call")
    # 10 ms: with 50 ms, two replicas sharing 4 engines let short TTFT p95 slip 13% behind
    # one process (stale views put short requests on the same engine); with 10 ms, 1%
    load_publish_ms: float = Field(
        default=10.0, gt=0, description="how often this process shares its load and reads others'"
    )
    resync_s: float = Field(default=1.0, gt=0, description="full re-read of shared breakers")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        schemes = ("redis://", "rediss://", "unix://", "redis+sentinel://")
        if value is not None and value.startswith("redis+cluster://"):
            raise ValueError(
                "Redis Cluster is not supported (the store's pub/sub and multi-key scripts "
                "want one node): use one primary, with redis+sentinel:// for failover"
            )
        if value is not None and not value.startswith(schemes):
            raise ValueError("must start with " + ", ".join(schemes))
        return value


class ClassAdmissionConfig(_Frozen):
    deadline_s: float = Field(gt=0, description="wait at the router when the client sets no "
                              "X-Request-Timeout")  # fmt: skip
    max_wait_s: float = Field(gt=0, description="the longest wait at the router, any deadline")
    codel_target_s: float = Field(gt=0, description="a standing queue's allowed wait")
    codel_interval_s: float = Field(
        gt=0, description="waits over the target this long in a row make a standing queue"
    )


class TierConfig(_Frozen):
    name: str = Field(min_length=1, pattern=r"^[a-z0-9_-]+$")
    weight: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="its share of the dispatches while tiers wait together: a lower tier "
        "is slowed by a higher one, never starved",
    )
    reserve: float = Field(
        default=0.0, ge=0, lt=1, description="share of a pool's capacity lower tiers may not use"
    )


class OverloadConfig(_Frozen):
    max_loop_lag_ms: float | None = Field(
        default=250.0, gt=0, description="event-loop lag over this sheds the lowest tier"
    )
    max_rss_mb: float | None = Field(
        default=None, gt=0, description="resident memory over this sheds the lowest tier"
    )
    check_interval_s: float = Field(default=0.5, gt=0)
    sustain: int = Field(
        default=3, ge=1, description="checks in a row over a limit before one more tier is shed"
    )


class AdmissionConfig(_Frozen):
    enabled: bool = Field(
        default=True, description="false: no queue and no holding; full means 503 at once"
    )
    max_queue: int = Field(default=512, ge=0, description="waiting requests per pool")
    short: ClassAdmissionConfig = ClassAdmissionConfig(
        deadline_s=30.0, max_wait_s=10.0, codel_target_s=0.025, codel_interval_s=0.05
    )
    long: ClassAdmissionConfig = ClassAdmissionConfig(
        deadline_s=120.0, max_wait_s=60.0, codel_target_s=5.0, codel_interval_s=5.0
    )
    hold_long: bool = Field(
        default=True, description="long requests wait while they would crowd out short ones"
    )
    tiers: tuple[TierConfig, ...] = Field(
        default=(
            TierConfig(name="high", weight=8.0),
            TierConfig(name="normal", weight=4.0),
            TierConfig(name="low", weight=1.0),
        ),
        min_length=1,
        description="priority tiers, highest first",
    )
    default_tier: str = "normal"
    priority_header: str = "X-Priority"
    aliases: dict[str, str] = Field(
        default_factory=dict, description="other X-Priority / body priority values -> a tier"
    )
    overload: OverloadConfig = OverloadConfig()

    @model_validator(mode="after")
    def _tiers_known(self) -> AdmissionConfig:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        for value in (self.default_tier, *self.aliases.values()):
            if value not in names:
                raise ValueError(f"{value!r} is not a tier (tiers: {', '.join(names)})")
        if sum(t.reserve for t in self.tiers) >= 1:
            raise ValueError("the tiers' reserves must add up to less than 1")
        return self


class RouterConfig(_Frozen):
    listen: ListenConfig = ListenConfig()
    pools: tuple[PoolConfig, ...] = Field(min_length=1)
    timeouts: TimeoutsConfig = TimeoutsConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    routing: RoutingConfig = RoutingConfig()
    probe: ProbeConfig = ProbeConfig()
    breakers: BreakersConfig = BreakersConfig()
    store: StoreConfig = StoreConfig()
    admin: AdminConfig = AdminConfig()
    auth: AuthConfig | None = Field(
        default=None,
        description="API keys; absent: serve listens on loopback only (auth: {mode: none} "
        "to run open elsewhere)",
    )
    limits: LimitsConfig = LimitsConfig()
    expose_backends: bool = Field(
        default=False, description="show clients backend URLs rather than backend names"
    )
    admission: AdmissionConfig = AdmissionConfig()
    # model -> a smaller model to answer with while every backend of the first is unusable
    fallback: dict[str, str] = Field(default_factory=dict)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    tokenizers: dict[str, TokenizerConfig] = Field(default_factory=dict)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one object per line; text: one readable line"
    )
    log_requests: bool = Field(
        default=True, description="one line per completion request (info; warning when 5xx)"
    )
    tracing: TracingConfig = TracingConfig()
    indicators: IndicatorsConfig = IndicatorsConfig()

    @model_validator(mode="after")
    def _consistent(self) -> RouterConfig:
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        urls = [b.url for p in self.pools for b in p.backends]
        duplicates = sorted({u for u in urls if urls.count(u) > 1})
        if duplicates:
            raise ValueError(f"a backend may belong to one pool only: {', '.join(duplicates)}")
        named = [b.name or f"{p.name}-{n}" for p in self.pools for n, b in enumerate(p.backends, 1)]
        clash = sorted({n for n in named if named.count(n) > 1})
        if clash:
            raise ValueError(f"backend names must be unique: {', '.join(clash)}")
        models = {p.model for p in self.pools}
        for big, small in self.fallback.items():
            unknown = [m for m in (big, small) if m not in models]
            if unknown:
                raise ValueError(f"fallback {big} -> {small}: no pool serves {', '.join(unknown)}")
            if big == small or small in self.fallback:
                raise ValueError(f"fallback {big} -> {small}: a fallback must not fall back again")
        self._keys_known(models)
        return self

    def _keys_known(self, models: set[str]) -> None:
        if self.auth is None:
            return
        tiers = {t.name for t in self.admission.tiers}
        for key in self.auth.keys:
            unknown = sorted(set(key.models or ()) - models)
            if unknown:
                raise ValueError(f"key of {key.tenant}: no pool serves {', '.join(unknown)}")
            if key.max_priority is not None and key.max_priority not in tiers:
                raise ValueError(f"key of {key.tenant}: {key.max_priority!r} is not a tier")

    def pools_by_window(self) -> tuple[PoolConfig, ...]:
        return tuple(sorted(self.pools, key=lambda p: p.max_context_tokens))
