"""Who is calling: client keys (``auth``) and the admin key (``admin.keys``), from the
``Authorization: Bearer`` header OpenAI clients send. Keys are held as SHA-256 digests only
(``router/core/keys.py``); a key never reaches a log line, a metric, ``/status`` or an
error body (its tenant's name does).

Keys come from the configuration, an environment variable (``auth.keys_env``) and a file
(``auth.keys_file``, e.g. a mounted Kubernetes Secret), which is read again when it
changes; a file that no longer parses keeps the keys in force and says why in the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml
from ctxroute.router.config import ConfigError, KeyConfig, RouterConfig
from ctxroute.router.core.keys import KeyRing, Tenant, bearer, is_admin
from ctxroute.router.core.ratelimit import Rate
from ctxroute.router.errors import Forbidden, Unauthorized
from multidict import CIMultiDictProxy
from pydantic import ValidationError

log = logging.getLogger("ctxroute.auth")


def parse_entries(text: str, where: str) -> tuple[KeyConfig, ...]:
    """A YAML list of key entries (or ``{keys: [...]}``), validated; ConfigError names
    ``where`` and the problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{where}: not valid YAML") from None
    if isinstance(data, dict):
        data = data.get("keys")
    if data is None:
        return ()
    if not isinstance(data, list):
        raise ConfigError(f"{where}: expected a list of key entries (sha256, tenant, ...)")
    try:
        return tuple(KeyConfig.model_validate(item) for item in data)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(p) for p in first["loc"]) or "entry"
        raise ConfigError(f"{where}: {location}: {first['msg']}") from None


class Gatekeeper:
    def __init__(self, config: RouterConfig, environ: Mapping[str, str] | None = None) -> None:
        auth = config.auth
        self.required = auth is not None and auth.mode == "keys"
        tiers = config.admission.tiers
        self.tier_index = {t.name: i for i, t in enumerate(tiers)}
        self.default_tier = self.tier_index[config.admission.default_tier]
        self.admin_digests = frozenset(config.admin.keys)
        self.file = None if auth is None or auth.keys_file is None else Path(auth.keys_file)
        self.reload_s = 2.0 if auth is None else auth.reload_s
        self.burst_s = 3.0 if auth is None else auth.burst_s
        self.inline: tuple[KeyConfig, ...] = ()
        if auth is not None:
            self.inline = auth.keys
            if auth.keys_env is not None:
                text = (os.environ if environ is None else environ).get(auth.keys_env, "")
                self.inline += parse_entries(text, f"${auth.keys_env}")
        self.stamp: tuple[float, int] | None = None
        from_file = self._read_file() if self.file is not None else ()
        self.ring = self._ring(self.inline + from_file)

    def _tenant(self, entry: KeyConfig) -> Tenant:
        ceiling = entry.max_priority
        max_tier = self.default_tier if ceiling is None else self.tier_index.get(ceiling)
        if max_tier is None:
            raise ConfigError(f"key of {entry.tenant}: {ceiling!r} is not a tier")
        models = None if entry.models is None else frozenset(entry.models)
        burst = self.burst_s
        return Tenant(
            entry.tenant,
            models,
            max_tier,
            None if entry.rpm is None else Rate(entry.rpm, burst),
            None if entry.tpm is None else Rate(entry.tpm, burst),
            entry.weight,
        )

    def _ring(self, entries: Iterable[KeyConfig]) -> KeyRing:
        return KeyRing((e.sha256, self._tenant(e)) for e in entries)

    def _read_file(self) -> tuple[KeyConfig, ...]:
        assert self.file is not None
        try:
            st = self.file.stat()
            text = self.file.read_text()
        except OSError as exc:
            raise ConfigError(f"{self.file}: cannot read ({exc.strerror})") from None
        self.stamp = (st.st_mtime, st.st_size)
        return parse_entries(text, str(self.file))

    def reload_if_changed(self) -> bool:
        """Read the keys file again when it changed; True when the keys were replaced."""
        if self.file is None:
            return False
        try:
            st = self.file.stat()
        except OSError as exc:
            log.error("keys file %s: %s; the keys in force stay", self.file, exc.strerror)
            return False
        if (st.st_mtime, st.st_size) == self.stamp:
            return False
        try:
            ring = self._ring(self.inline + self._read_file())
        except ConfigError as exc:
            log.error("keys file not loaded: %s; the keys in force stay", exc)
            return False
        self.ring = ring
        log.warning("keys file %s loaded: %d keys, tenants %s", self.file, len(ring),
                    ", ".join(sorted(ring.tenants())) or "none")  # fmt: skip
        return True

    async def watch_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reload_s)
            self.reload_if_changed()

    # -- the request path --------------------------------------------------------------

    def client(self, headers: CIMultiDictProxy[str]) -> Tenant | None:
        """The caller's tenant; None when keys are not required; 401 without a known key."""
        if not self.required:
            return None
        given = headers.get("Authorization")
        tenant = self.ring.tenant_of(bearer(given))
        if tenant is None:
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer <key>'"
                if given is None
                else "invalid API key (the key is not shown here)"
            )
        return tenant

    def admin(self, headers: CIMultiDictProxy[str]) -> None:
        """The admin key, or 401/403."""
        if not self.admin_digests:
            raise Forbidden(
                "admin routes are off: no admin key is configured "
                "(ctxroute keys new --admin prints one and its admin.keys line)"
            )
        if not is_admin(bearer(headers.get("Authorization")), self.admin_digests):
            raise Unauthorized("this route needs the admin key: 'Authorization: Bearer <key>'")


def with_tenants(config: RouterConfig, gatekeeper: Gatekeeper) -> RouterConfig:
    """``config`` with the tenants of every key read at start (``keys_env`` and
    ``keys_file`` too) in ``auth.tenants``: the label values of the tenant metrics, fixed
    for the life of the server (``serve --workers`` makes them once, before the workers)."""
    auth = config.auth
    if auth is None or not gatekeeper.required:
        return config
    names = tuple(sorted({*auth.tenants, *gatekeeper.ring.tenants()}))
    return config.model_copy(update={"auth": auth.model_copy(update={"tenants": names})})
