"""The configuration of prompt-injection indicators (``indicators``): on by default, every
rule in ``monitor`` (counted and logged, the request untouched)."""

from __future__ import annotations

from typing import Literal

from ctxroute.router.model import LEAK_RULE, RULES
from pydantic import BaseModel, ConfigDict, Field, field_validator

Action = Literal["off", "monitor", "flag", "block"]


class IndicatorsConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        default=True, description="false: no rule runs, on the way in or out (no cost)"
    )
    default_action: Action = Field(
        default="monitor",
        description="of every rule not in actions: off (ignored), monitor (metrics and the "
        "request log), flag (also the x-ctxroute-indicators header; a stream's leak: an SSE "
        "comment), block (400 on input; a leaking answer ends with an error)",
    )
    actions: dict[str, Action] = Field(
        default_factory=dict, description=f"per rule: {', '.join(RULES)}"
    )
    leak_words: int = Field(
        default=8,
        ge=4,
        le=64,
        description="a run of this many consecutive words of the system message in the answer "
        "is a leak",
    )

    @field_validator("actions")
    @classmethod
    def _known(cls, value: dict[str, Action]) -> dict[str, Action]:
        unknown = sorted(set(value) - set(RULES))
        if unknown:
            raise ValueError(f"unknown rule {', '.join(unknown)}; the rules: {', '.join(RULES)}")
        return value

    def action(self, rule: str) -> Action:
        if not self.enabled:
            return "off"
        return self.actions.get(rule, self.default_action)

    @property
    def watches_leaks(self) -> bool:
        return self.action(LEAK_RULE) != "off"
