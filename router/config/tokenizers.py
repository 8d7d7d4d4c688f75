"""Load exact token counters named in the configuration (tokenizer.json or tiktoken)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ctxroute.router.config import ConfigError, TokenizerConfig


@dataclass(slots=True)
class LoadedCounter:
    tokens_per_message: int
    tokens_per_reply: int
    _encode: Callable[[str], int]

    def count(self, text: str) -> int:
        return self._encode(text)


def load_counter(model: str, cfg: TokenizerConfig) -> LoadedCounter:
    if cfg.path is not None:
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(cfg.path)
        except Exception as exc:
            raise ConfigError(f"tokenizers.{model}.path: cannot load {cfg.path} ({exc})") from None

        def count(text: str) -> int:
            return len(tok.encode(text, add_special_tokens=False).ids)
    else:
        try:
            import tiktoken

            enc = tiktoken.get_encoding(cfg.tiktoken or "")
        except Exception as exc:
            raise ConfigError(
                f"tokenizers.{model}.tiktoken: cannot load encoding {cfg.tiktoken!r} ({exc})"
            ) from None

        def count(text: str) -> int:
            return len(enc.encode(text, disallowed_special=()))

    return LoadedCounter(cfg.tokens_per_message, cfg.tokens_per_reply, count)


def load_counters(tokenizers: dict[str, TokenizerConfig]) -> dict[str, LoadedCounter]:
    return {model: load_counter(model, cfg) for model, cfg in tokenizers.items()}
