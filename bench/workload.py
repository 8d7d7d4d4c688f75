"""The mixed workload of ``ctxroute bench``: seeded, open-loop, described by a few numbers.

Default (what LLM fleets that serve both chat and documents see): 80% short chats over 8
shared ~500-token system prompts and 200 session ids, 50-200-token user turns, max_tokens
128-256; 20% long documents of 8k-60k tokens (log-uniform), max_tokens 512. Arrivals are
Poisson at ``rate`` per second. The same seed gives the same requests at the same times,
so two targets are compared on identical traffic.

Prompt sizes are in tokens of the simulator's byte tokenizer (4 bytes per token), which is
also what the router estimates without a tokenizer.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson
import yaml

BYTES_PER_TOKEN = 4
_VOCABULARY = (
    "the of and to in is was for on that with as by at from his her an were are which "
    "this be or has had not but what all when there can more one so out up into do if "
    "about who them then she many some would time these two like him see way could "
    "people than first been call its now find long down day did get come made may part "
    "over new sound take only little work know place year live me back give most very "
    "after thing our just name good sentence man think say great where help through much "
    "before line right too mean old any same tell boy follow came want show also around "
    "form three small set put end does another well large must big even such because "
    "turn here why ask went men read need land different home us move try kind hand "
    "picture again change off play spell air away"
)
_WORDS = tuple(_VOCABULARY.split())


@dataclass(frozen=True)
class Workload:
    rate: float = 8.0  # requests per second, Poisson
    duration_s: float = 60.0
    seed: int = 1
    short_share: float = 0.8
    system_prompts: int = 8
    system_tokens: int = 500
    sessions: int = 200
    user_tokens: tuple[int, int] = (50, 200)
    short_max_tokens: tuple[int, int] = (128, 256)
    long_tokens: tuple[int, int] = (8_000, 60_000)
    long_max_tokens: int = 512
    model: str = "sim-model"

    @classmethod
    def from_file(cls, path: Path, **overrides: Any) -> Workload:
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a workload file is a mapping of the fields of Workload")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown workload fields {unknown}; known: {sorted(known)}")
        for key in ("user_tokens", "short_max_tokens", "long_tokens"):
            if key in data:
                data[key] = tuple(data[key])
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


@dataclass
class Planned:
    """One request of the run: when to send it, and what."""

    at: float  # seconds after the start
    kind: str  # "short" | "long"
    path: str
    body: bytes
    session: str | None
    prompt_tokens: int
    max_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)
    tenant: str | None = None  # whose API key it is sent with (``--tenants``)


def _text(rng: random.Random, tokens: int, head: str = "") -> str:
    """About ``tokens`` tokens of text (4 bytes each), starting with ``head``."""
    want = tokens * BYTES_PER_TOKEN
    parts = [head] if head else []
    size = len(head)
    while size < want:
        chunk = " ".join(rng.choices(_WORDS, k=64))
        parts.append(chunk)
        size += len(chunk) + 1
    return " ".join(parts)[:want]


def plan_requests(w: Workload) -> list[Planned]:
    rng = random.Random(w.seed)
    systems = [
        _text(random.Random(w.seed * 1000 + i), w.system_tokens, f"You are assistant {i}.")
        for i in range(w.system_prompts)
    ]
    out: list[Planned] = []
    t = 0.0
    n = 0
    while True:
        t += rng.expovariate(w.rate)
        if t >= w.duration_s:
            return out
        n += 1
        if rng.random() < w.short_share:
            session = rng.randrange(w.sessions)
            system = systems[session % w.system_prompts]
            user_tokens = rng.randint(*w.user_tokens)
            user = _text(rng, user_tokens, f"Question {n}:")
            max_tokens = rng.randint(*w.short_max_tokens)
            body = {
                "model": w.model,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": user},
                ],
                "max_tokens": max_tokens,
                "stream": True,
                "ignore_eos": True,
            }
            prompt = w.system_tokens + user_tokens
            out.append(Planned(t, "short", "/v1/chat/completions", orjson.dumps(body),
                               f"session-{session}", prompt, max_tokens))  # fmt: skip
        else:
            low, high = w.long_tokens
            tokens = int(math.exp(rng.uniform(math.log(low), math.log(high))))
            body = {
                "model": w.model,
                "prompt": _text(rng, tokens, f"Document {n}. Summarise it."),
                "max_tokens": w.long_max_tokens,
                "stream": True,
                "ignore_eos": True,
            }
            out.append(Planned(t, "long", "/v1/completions", orjson.dumps(body), None, tokens,
                               w.long_max_tokens))  # fmt: skip


# named workloads (``ctxroute bench --mix NAME``); the defaults of Workload are kv-heavy
MIXES: dict[str, Workload] = {
    # 80% short chats (8 shared ~500-token system prompts, 50-200-token turns, max_tokens
    # 128-256; SLO: first token in 500 ms), 20% long documents (8k-60k tokens,
    # log-uniform, max_tokens 512; SLO 15 s), streaming, Poisson. On four h100-8b engines
    # (448k KV tokens each, 8,192 tokens a step) their KV caches run 80-95% full past
    # 10 req/s: the mix that tells KV room per request from a wall per engine
    "kv-heavy": Workload(),
}

__all__ = ["MIXES", "Planned", "Workload", "plan_requests"]
