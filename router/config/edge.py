"""The configuration of the router's edge: who may call it (``auth``), what operators reach
and where (``admin``), and the bounds on what a client sends (``limits``)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SHA256_HEX = r"^[0-9a-f]{64}$"
TENANT = r"^[A-Za-z0-9._-]{1,64}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KeyConfig(_Frozen):
    """One client key, stored as the SHA-256 of the key (hex), never the key itself
    (``ctxroute keys new TENANT`` makes one and prints this entry)."""

    sha256: str = Field(pattern=SHA256_HEX, description="hex SHA-256 of the key")
    tenant: str = Field(pattern=TENANT, description="shown in the request log and error bodies")
    models: tuple[str, ...] | None = Field(
        default=None, description="the models it may use; absent: every model"
    )
    max_priority: str | None = Field(
        default=None,
        description="the highest tier it may ask for (a request asking more gets this); "
        "absent: admission.default_tier",
    )
    rpm: int | None = Field(default=None, ge=1, description="requests per minute")
    tpm: int | None = Field(
        default=None, ge=1, description="tokens per minute (prompt + max_tokens, settled)"
    )
    weight: float = Field(default=1.0, gt=0, le=1000, description="its fair share, relative")


class AuthConfig(_Frozen):
    mode: Literal["keys", "none"] = Field(
        default="keys", description="keys: every completion needs a key; none: open (say so)"
    )
    keys: tuple[KeyConfig, ...] = ()
    keys_file: str | None = Field(
        default=None,
        description="a YAML list of key entries (a mounted Secret), read again when it changes",
    )
    keys_env: str | None = Field(
        default=None, description="an environment variable holding a YAML list of key entries"
    )
    reload_s: float = Field(default=2.0, gt=0, description="how often keys_file is checked")
    burst_s: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="rate limits: how far ahead of its pace a key may run (GCRA's tolerance)",
    )
    fair_share: bool = Field(
        default=True, description="waiting requests of a tier served by tenant's token service"
    )
    limit_headers: Literal["refused", "always"] = Field(
        default="refused",
        description="OpenAI's x-ratelimit-* headers on refusals only (429), or on every "
        "answer to a limited key (costs ~3 us of CPU per request: six more headers)",
    )
    tenants: tuple[str, ...] = Field(
        default=(),
        description="tenants the metrics name besides those of the keys read at start (a "
        "tenant whose keys a reload adds later is counted as 'other' unless named here)",
    )

    @model_validator(mode="after")
    def _tenant_names(self) -> AuthConfig:
        bad = [t for t in self.tenants if not re.fullmatch(TENANT, t)]
        if bad:
            raise ValueError(f"tenants: {bad[0]!r} is not a tenant name ({TENANT})")
        return self

    @model_validator(mode="after")
    def _has_keys(self) -> AuthConfig:
        if self.mode == "keys" and not (self.keys or self.keys_file or self.keys_env):
            raise ValueError(
                "mode keys needs keys, keys_file or keys_env (or mode: none, to run open)"
            )
        return self


Access = Literal["public", "key", "admin"]


class AdminListenConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)


class AdminConfig(_Frozen):
    keys: tuple[str, ...] = Field(
        default=(),
        description="hex SHA-256 of each admin key; none: the admin routes are off",
    )
    listen: AdminListenConfig | None = Field(
        default=None, description="a separate address for the admin routes (and 'admin' pages)"
    )
    allow_remote: bool = Field(
        default=False, description="answer /admin/* from other hosts than loopback"
    )
    status: Access | None = Field(default=None, description="/status: public, key or admin")
    dashboard: Access | None = None
    metrics: Access | None = None

    @model_validator(mode="after")
    def _hashes(self) -> AdminConfig:
        for key in self.keys:
            if not re.fullmatch(SHA256_HEX, key):
                raise ValueError("admin.keys are hex SHA-256 digests (ctxroute keys new --admin)")
        for page in ("status", "dashboard", "metrics"):
            if getattr(self, page) == "admin" and self.listen is None:
                raise ValueError(f"{page}: admin needs admin.listen (the admin address)")
        return self

    def access(self, page: str) -> Access:
        """Who may read ``page``: as configured; else the admin address when there is one,
        else public."""
        chosen: Access | None = getattr(self, page)
        if chosen is not None:
            return chosen
        return "admin" if self.listen is not None else "public"


class LimitsConfig(_Frozen):
    """Bounds on what a client sends, checked before anything else reads it."""

    max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, le=64 * 1024, description="all request headers together"
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="the whole body must arrive within this (else 408)"
    )
    exact_count_inline_bytes: int = Field(
        default=64 * 1024,
        ge=0,
        description="prompts larger than this are counted by the exact tokenizer in a thread",
    )
