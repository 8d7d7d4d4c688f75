"""What makes a request long work, and the rules that keep long work from slowing short
requests. Pure; one source for the planner, admission, the ledger and the handlers.

A long prefill holds an engine for seconds (a 60k-token prompt, ~3.5 s on an H100) and a
short request behind it waits for all of it, so every part of the router asks the same
question of a prompt, with the same threshold: is it long?
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ctxroute.router.core.kvroom import KvMarks


@dataclass(frozen=True, slots=True)
class LongWork:
    # a prompt of this many tokens or more is long work
    prefill_tokens: int = 4096
    # backends of a model kept free of long prefill (and light) for short requests
    keep_clean: int = 1
    # admission holds long work at the router until a backend can start it cleanly
    hold: bool = False
    # the share of a backend's KV cache each class may fill (``core/kvroom.py``)
    kv: KvMarks = field(default_factory=KvMarks)

    def is_long(self, prompt_tokens: int) -> bool:
        return prompt_tokens >= self.prefill_tokens
