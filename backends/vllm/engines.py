"""vLLM engine arguments per pool, read from ``engines.yaml``: the one place they are
written down, printed by ``ctxroute vllm-args POOL`` for a shell, compose or Kubernetes.

Each setting is one of vLLM's own ``vllm serve`` flags, spelled with underscores
(``max_model_len`` -> ``--max-model-len``); a ``true`` boolean is a bare flag, ``false``
leaves it out. ``extra_args`` are passed on as written, for flags this file does not know.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENGINES = Path(__file__).resolve().parent / "engines.yaml"


class EngineError(ValueError):
    """A clear message about the engines file or a pool name."""


class PoolEngine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_model_len: int = Field(ge=16, description="the pool's window (router max_context_tokens)")
    max_num_seqs: int = Field(default=256, ge=1)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = False
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    block_size: int | None = Field(default=None, ge=1, description="vLLM's default when unset")
    kv_cache_dtype: str | None = None
    dtype: str | None = None
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    extra_args: tuple[str, ...] = ()


class Engines(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="what vLLM loads (a Hub id or a path)")
    served_model_name: str | None = None
    model_config_ref: str | None = Field(
        default=None, alias="model_config", description="preset name or config.json path"
    )
    port: int = 8000
    pools: dict[str, PoolEngine] = Field(min_length=1)

    def pool(self, name: str) -> PoolEngine:
        try:
            return self.pools[name]
        except KeyError:
            known = ", ".join(self.pools)
            raise EngineError(f"no pool {name!r} in the engines file (pools: {known})") from None

    def args(self, name: str) -> list[str]:
        """The ``vllm serve`` arguments of pool ``name``."""
        engine = self.pool(name)
        out = ["--model", self.model]
        if self.served_model_name:
            out += ["--served-model-name", self.served_model_name]
        out += ["--port", str(self.port)]
        for field, value in engine.model_dump(exclude={"extra_args"}).items():
            flag = "--" + field.replace("_", "-")
            if value is None or value is False:
                continue
            out += [flag] if value is True else [flag, str(value)]
        return out + list(engine.extra_args)


def load_engines(path: str | Path = ENGINES) -> Engines:
    path = Path(path)
    try:
        data: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise EngineError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError:
        raise EngineError(f"{path}: is not valid YAML") from None
    try:
        return Engines.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise EngineError(f"{path}: {problems}") from None
