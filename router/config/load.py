"""Reading the configuration: a YAML file, then ``CTXROUTE__...`` environment overrides,
validated into ``RouterConfig``; every problem worded as one ``ConfigError``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from ctxroute.router.config.schema import ConfigError, RouterConfig
from pydantic import ValidationError

ENV_PREFIX = "CTXROUTE__"


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        value = yaml.safe_load(raw) if raw else raw
        node: Any = data
        for i, key in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(f"{name}: {key!r} is not an index of that list")
                if last:
                    node[int(key)] = value
                else:
                    node = node[int(key)]
            elif isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            else:
                raise ConfigError(f"{name}: cannot set {key!r} inside a scalar")
    return data


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{location}: {message}"


def parse_config(data: Any, environ: Mapping[str, str] | None = None) -> RouterConfig:
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping at the top level")
    data = _env_overrides(data, os.environ if environ is None else environ)
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        raise ConfigError("; ".join(problems)) from None


def shipped(name: str) -> Path:
    """A configuration file that ships inside the package (``config/`` of the repository,
    installed as ``ctxroute.config``): ``demo.yaml``, ``router.yaml``."""
    return Path(str(files("ctxroute.config") / name))


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> RouterConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    try:
        return parse_config(data if data is not None else {}, environ)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
