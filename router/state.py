"""What the handlers share: the fleet, the client session, counters, settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import aiohttp
from aiohttp import web

from router.config import RoutingConfig
from router.fleet import Fleet
from router.h1 import H1Pool
from router.proxy import ForwardSettings
from router.tokens import TokenCounter


@dataclass(slots=True)
class AppState:
    KEY: ClassVar[web.AppKey[AppState]]

    fleet: Fleet
    session: aiohttp.ClientSession  # probes
    upstream: H1Pool  # the request path
    counters: dict[str, TokenCounter]
    routing: RoutingConfig
    forward: ForwardSettings
    max_body_bytes: int
    started: int


AppState.KEY = web.AppKey("ctxroute_state", AppState)
