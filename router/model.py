"""Value types shared by the pure core and the edges. Immutable: decisions are values.

The ones made for every request are NamedTuples (why: docs/architecture.md, "Performance
budget").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, NamedTuple


class TokenBounds(NamedTuple):
    """A prompt's token count: ``lower <= true count <= upper`` (equal when exact), and the
    most likely count (``estimate``): what routing and load accounting use. The bounds
    decide only what is certain: a rejection (lower) and a window that surely holds the
    request (upper)."""

    lower: int
    upper: int
    exact: bool
    estimate: int


class RequestFacts(NamedTuple):
    """What routing needs to know of a request, read once from its body."""

    model: str
    prompt: TokenBounds
    max_tokens: int | None  # max_completion_tokens or max_tokens; None when absent
    stream: bool
    hash_key: str


@dataclass(frozen=True, slots=True)
class Backend:
    """One vLLM server, as configured. ``index`` is its slot in load accounting."""

    index: int
    url: str
    pool: str
    model: str
    host: str
    port: int
    max_in_flight: int
    weight: int = 1
    kv_tokens: int | None = None  # KV cache capacity in tokens, when known
    prefill_tokens_per_s: float | None = None  # configured; else learned online
    name: str = ""  # its configured name, else <pool>-<n>
    shown: str = ""  # what clients are told: its name, or its URL with expose_backends


class Load(NamedTuple):
    """Token work on a backend, as this process sees it (its own plus, where shared, the
    other processes'): requests in flight, prompt tokens sent that have not produced a
    first byte yet, how many of those prompts are long, prompt + max_tokens of every
    request in flight, and how many long requests are in flight (prefilling or decoding)."""

    in_flight: int = 0
    pending_prefill: int = 0
    long_pending: int = 0
    budget_in_flight: int = 0
    long_in_flight: int = 0


IDLE = Load()


class BackendView(NamedTuple):
    """What the planner knows of a backend at the moment of a decision. ``up``: it answers
    (a backend known down is still a last resort for retries); ``usable``: no breaker,
    memory pressure or drain keeps new requests away from it (an unusable one is never a
    candidate)."""

    backend: Backend
    load: Load
    up: bool
    prefill_tokens_per_s: float
    usable: bool = True
    kv_tokens: int | None = None  # configured, else read from vLLM's cache_config_info
    # KV tokens the engine held at the last scrape beyond the budgets in flight then
    # (``core/kvroom.py``)
    kv_unaccounted: int = 0


def fit_phrase(fits: bool, pool: str) -> str:
    """Whether the preferred pool surely holds the likely budget, in words (the plan's
    reason and the eligibility's say it the same way)."""
    return f"fits {pool}" if fits else "may not fit: the largest window decides"


class Placement(enum.StrEnum):
    """Where a candidate stands with respect to the request's hash owner (its prefix cache),
    or why it was put after the others."""

    HASH_OWNER = "hash owner"
    OWNER_OVER_LOAD = "owner over its bounded load"
    NOT_OWNER = "not the hash owner"


class Rule(enum.StrEnum):
    """The long-prefill rule that ordered the candidates before their scores, if any."""

    NONE = ""
    AVOIDS_LONG_PREFILLS = "avoids long prefills"
    LONG_WORK_TO_CLEAN = (
        "a backend free of long prefill first (long work waits at the "
        "router), not one kept light for short work"
    )
    LEAVES_ONE_CLEAN = "leaves the fleet's last backend free of long prefill to short requests"


class Bypass(enum.StrEnum):
    """Why the first candidate is not the preferred pool's hash owner."""

    NONE = ""  # it is the owner
    WAIT = "wait"  # the owner's estimated wait (``RoutePlan.owner_wait_ms``) is longer
    BOUNDED_LOAD = "bounded load"
    NO_KV_ROOM = "no KV room"
    LONG_PREFILL_PENDING = "long prefill pending"
    KEPT_FREE = "kept free for short work"
    KEPT_LIGHT = "kept light for short work"
    UNUSABLE = "unusable"  # a breaker, memory pressure or a drain
    DOWN = "down"
    MAX_IN_FLIGHT = "max_in_flight"
    NOT_A_CANDIDATE = "not a candidate"


class RoutePlan(NamedTuple):
    """Where to try a request, best first, and why (typed: the words are made from it only
    when someone reads them, ``reason`` and ``core/explain.py``).

    ``preferred``: the smallest pool whose window holds the request's likely budget.
    ``candidates``: usable backends by score (the first ``usable`` of them), then the ones
    known down (a last resort for retries). ``waits_ms``: each candidate's estimated wait
    for its first token (infinite for the ones known down). ``pools``: the pools that can
    hold the request (indices into the model's pools, smallest window first): the backends
    a refusal speaks of. ``fits``: the preferred pool surely holds the likely budget (else
    only the largest window might, and the backend's own check decides). ``placement`` and
    ``rule``: why the first candidate was chosen. ``owner``: the preferred pool's hash
    owner (the affinity choice); ``bypass``: why the first candidate is not it, with the
    owner's estimated wait when that was the reason. ``kv_full``: backends left out only
    because their KV cache has no room for the budget under the class's mark (a wait for
    room, not a refusal).
    """

    preferred: str
    candidates: tuple[Backend, ...]
    waits_ms: tuple[float, ...]
    budget: int
    pools: tuple[int, ...]
    usable: int
    fits: bool = True
    placement: Placement | None = None
    rule: Rule = Rule.NONE
    owner: str = ""
    bypass: Bypass = Bypass.NONE
    owner_wait_ms: float = 0.0
    kv_full: int = 0

    @property
    def reason(self) -> str:
        """Why the first candidate was chosen, as phrases joined by "; "."""
        fit = fit_phrase(self.fits, self.preferred)
        if not self.candidates:
            if self.kv_full:
                return fit + "; no KV room under the mark on any backend: waits for room"
            return fit + "; no backend is usable: breakers, memory, drain or max_in_flight"
        if not self.usable:
            return fit + "; every usable backend is down: trying anyway"
        where = self.candidates[0].pool
        place = "preferred pool" if where == self.preferred else "spill to " + where
        if self.rule:  # Rule.NONE is ""
            return f"{fit}; {place}; {self.placement}; {self.rule}"
        return f"{fit}; {place}; {self.placement}"


class OutcomeKind(enum.Enum):
    SUCCESS = "success"
    CONNECT_ERROR = "connect_error"  # the request never reached the backend
    UPSTREAM_5XX = "upstream_5xx"
    BACKPRESSURE = "backpressure"  # upstream 429 or 503: busy, not broken
    TIMEOUT = "timeout"  # no first byte (stream) or no answer (unary) in time
    BROKEN = "broken"  # the connection or stream failed after it was sent
    CONTEXT_REJECTED = "context_rejected"  # vLLM's 400 "maximum context length"
    CLIENT_ERROR = "client_error"  # any other 4xx: the request's fault
    CLIENT_GONE = "client_gone"  # the client left before the end
    SHUTDOWN = "shutdown"  # the router's own shutdown ended it (its grace ran out)

    # hashed by identity, not by name: counted and looked up for every attempt (why:
    # docs/architecture.md, "Performance budget")
    __hash__ = object.__hash__


# the three kinds of signal (ARCHITECTURE: "Breakers"), never mixed
FAILURES = frozenset(
    {OutcomeKind.CONNECT_ERROR, OutcomeKind.UPSTREAM_5XX, OutcomeKind.TIMEOUT, OutcomeKind.BROKEN}
)
BACKPRESSURE = frozenset({OutcomeKind.BACKPRESSURE})
NEUTRAL = frozenset(
    {OutcomeKind.CONTEXT_REJECTED, OutcomeKind.CLIENT_ERROR, OutcomeKind.CLIENT_GONE,
     OutcomeKind.SHUTDOWN}
)  # fmt: skip


class Outcome(NamedTuple):
    """How one attempt on one backend ended; recorded once, by the ledger."""

    kind: OutcomeKind
    status: int | None = None  # the backend's HTTP status, when one came
    ttft_s: float | None = None  # dispatch to first body byte
    detail: str = ""

    @property
    def is_failure(self) -> bool:
        return self.kind in FAILURES


# the rules (router/core/indicators.py and leakage.py say what each matches)
INPUT_RULES: Final = (
    "ignore_instructions",
    "role_delimiter",
    "prompt_request",
    "jailbreak_persona",
    "invisible_text",
    "encoded_blob",
)
LEAK_RULE: Final = "system_prompt_leak"
RULES: Final = (*INPUT_RULES, LEAK_RULE)
