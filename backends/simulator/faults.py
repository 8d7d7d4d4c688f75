"""Injectable faults of the simulator, set by command-line flags or ``POST /sim/faults``.

| field                   | effect                                                          |
|-------------------------|-----------------------------------------------------------------|
| error_rate              | this fraction of requests (seeded draw) answers 500             |
| burst_5xx               | the next N requests answer ``burst_status`` (default 500)       |
| hang_before_first_token | seconds a request waits before it enters the engine (after the  |
|                         | streaming headers); -1 hangs until the client leaves            |
| slow_token_ms           | extra milliseconds added to every engine step                   |
| cut_after_tokens        | a stream is cut (connection dropped, no [DONE]) after k tokens  |
| refuse_for_s            | the listening socket closes for this many seconds (-1: until    |
|                         | cleared in-process): connections are refused                    |
| engine_dead             | /health answers 503 and requests answer 500, as a dead vLLM     |
| kv_usage_floor          | /metrics reports KV cache usage of at least this (0-1): memory  |
|                         | pressure without filling the cache                              |
| json_to_streams         | a stream request is answered with one JSON body (200,           |
|                         | application/json), as a server or proxy that does not stream    |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Faults:
    error_rate: float = 0.0
    burst_5xx: int = 0
    burst_status: int = 500
    hang_before_first_token: float = 0.0
    slow_token_ms: float = 0.0
    cut_after_tokens: int = 0
    refuse_for_s: float = 0.0
    engine_dead: bool = False
    kv_usage_floor: float = 0.0
    json_to_streams: bool = False
    # the backend drifts: shorter answers, more of them cut by max_tokens ("length"),
    # another output vocabulary; it stays healthy by every other measure
    drift: bool = False
    # the model gives its instructions away: a chat answer begins by quoting the request's
    # system message word for word (for the router's system_prompt_leak indicator)
    leak_system: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update; raises ValueError naming the bad field."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        staged: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in fields:
                raise ValueError(f"unknown fault {key!r} (known: {', '.join(sorted(fields))})")
            current = fields[key].default  # the declared kind, not the current value
            if isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"fault {key!r} must be true or false")
            elif isinstance(current, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"fault {key!r} must be an integer")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"fault {key!r} must be a number")
            else:
                value = float(value)
            staged[key] = value
        rate = staged.get("error_rate", self.error_rate)
        if not 0.0 <= rate <= 1.0:
            raise ValueError("fault 'error_rate' must be between 0 and 1")
        floor = staged.get("kv_usage_floor", self.kv_usage_floor)
        if not 0.0 <= floor <= 1.0:
            raise ValueError("fault 'kv_usage_floor' must be between 0 and 1")
        status = staged.get("burst_status", self.burst_status)
        if not 500 <= status <= 599:
            raise ValueError("fault 'burst_status' must be a 5xx status")
        for key, value in staged.items():
            setattr(self, key, value)

    def clear(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, f.default)
