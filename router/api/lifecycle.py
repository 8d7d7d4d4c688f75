"""Where the server is in its life, as the handlers see it: serving; stopping (a SIGTERM
came: ``/readyz`` answers 503 so that load balancers look elsewhere, requests are still
served); refusing (new requests get 503 ``shutting_down`` while those in flight finish);
cutting (the grace ran out: what is still running is ended by the router, which is not
the client leaving). The completion handlers in flight are kept here for the shutdown to
wait for (``router/run/shutdown.py``)."""

from __future__ import annotations

import asyncio
import enum


class Phase(enum.Enum):
    SERVING = "serving"
    STOPPING = "stopping"
    REFUSING = "refusing"
    CUTTING = "cutting"


class Lifecycle:
    __slots__ = ("handlers", "phase", "refusing")

    def __init__(self) -> None:
        self.phase = Phase.SERVING
        self.refusing = False  # new requests get 503 (one attribute read per request)
        self.handlers: set[asyncio.Task[object]] = set()

    def enter(self, phase: Phase) -> None:
        self.phase = phase
        self.refusing = phase in (Phase.REFUSING, Phase.CUTTING)
