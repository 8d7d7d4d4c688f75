"""What each backend says of itself, read every ``_EVERY_ROUNDS`` probe rounds: the models
it serves and their ``max_model_len`` (``GET /v1/models``), its version (``GET /version``,
where the server has one) and the cache settings its /metrics reports; then, per pool,
which backends differ from the others (``core/skew.py``), kept in the ledger for /status,
/metrics and the dashboard. A backend's answers are bounded (size, count, length) before
they are kept: a backend is trusted with routing, not with the router's memory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aiohttp
import orjson
from ctxroute.router.core.skew import COMPARED_CACHE, Identity, skew
from ctxroute.router.fleet.ledger import Ledger
from ctxroute.router.fleet.topology import Fleet
from ctxroute.router.model import Backend

log = logging.getLogger("ctxroute.probe")

EVERY_ROUNDS = 10  # engine settings change only with a restart: no need to ask every round
_MAX_BODY = 256 * 1024
_MAX_MODELS = 32
_MAX_TEXT = 128


def cache_labels(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The labels of a ``vllm:cache_config_info`` sample a pool's engines should share."""
    return tuple((k, labels[k][:_MAX_TEXT]) for k in COMPARED_CACHE if k in labels)


async def _get_json(session: aiohttp.ClientSession, url: str) -> object | None:
    """The JSON answer of ``url``, None for anything else (bounded by the probe session's
    timeout and by ``_MAX_BODY``)."""
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                return None
            body = await resp.content.read(_MAX_BODY + 1)
        if len(body) > _MAX_BODY:
            return None
        answer: object = orjson.loads(body)
        return answer
    except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError):
        return None


def _parse_models(answer: object, model: str) -> tuple[tuple[str, ...] | None, int | None]:
    """The model ids served, and the window of ``model`` (else of the first one)."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        return None, None
    cards = [c for c in data[:_MAX_MODELS] if isinstance(c, dict) and isinstance(c.get("id"), str)]
    ids = tuple(c["id"][:_MAX_TEXT] for c in cards)
    card = next((c for c in cards if c["id"] == model), cards[0] if cards else None)
    window = None if card is None else card.get("max_model_len")
    return ids, window if isinstance(window, int) and not isinstance(window, bool) else None


async def read_identity(session: aiohttp.ClientSession, backend: Backend,
                        cache: tuple[tuple[str, str], ...]) -> Identity:  # fmt: skip
    models, version = await asyncio.gather(
        _get_json(session, backend.url + "/v1/models"),
        _get_json(session, backend.url + "/version"),
    )
    ids, window = _parse_models(models, backend.model)
    said = version.get("version") if isinstance(version, dict) else None
    return Identity(ids, window, said[:_MAX_TEXT] if isinstance(said, str) else None, cache)


def judge(fleet: Fleet, ledger: Ledger, identities: Sequence[Identity]) -> None:
    """Each backend's skew against its pool, logged when it changes."""
    for pool in fleet.pools:
        peers = [identities[b.index] for b in pool.backends]
        for backend in pool.backends:
            reasons = skew(backend.model, pool.max_context_tokens, identities[backend.index],
                           peers)  # fmt: skip
            if reasons != ledger.skew[backend.index]:
                if reasons:
                    log.warning("backend %s differs from its pool %s: %s", backend.url,
                                pool.name, "; ".join(reasons))  # fmt: skip
                else:
                    log.warning("backend %s is configured as its pool again", backend.url)
            ledger.skew[backend.index] = reasons
