"""Router configuration: YAML file + environment -> frozen, validated ``RouterConfig``
(``schema.py`` the models, ``load.py`` the reading, ``tokenizers.py`` the exact token
counters a configuration names).

This package is the only reader of files and environment variables. A bad file gives one
clear message naming the key and the problem (``ConfigError``); the CLI exits with 2.

Environment overrides: ``CTXROUTE__<KEY>__<SUBKEY>=value`` sets a nested key, with list
indices as numbers and values parsed as YAML scalars, e.g.::

    CTXROUTE__LISTEN__PORT=9000
    CTXROUTE__TIMEOUTS__TTFB_S=5
    CTXROUTE__POOLS__0__BACKENDS__1__URL=http://10.0.0.7:8000
"""

from ctxroute.router.config.breakers import BreakersConfig, KvMarksConfig, MemoryBreakerConfig
from ctxroute.router.config.edge import AdminConfig, AuthConfig, KeyConfig, LimitsConfig
from ctxroute.router.config.indicators import IndicatorsConfig
from ctxroute.router.config.load import ENV_PREFIX, load_config, parse_config, shipped
from ctxroute.router.config.resilience import RetryBudgetConfig, ShutdownConfig
from ctxroute.router.config.schema import (
    AdmissionConfig,
    BackendConfig,
    ClassAdmissionConfig,
    ConfigError,
    ListenConfig,
    OverloadConfig,
    PoolConfig,
    ProbeConfig,
    RouterConfig,
    RoutingConfig,
    StoreConfig,
    TierConfig,
    TimeoutsConfig,
    TokenizerConfig,
)
from ctxroute.router.config.tracing import TracingConfig

__all__ = [
    "ENV_PREFIX",
    "AdminConfig",
    "AdmissionConfig",
    "AuthConfig",
    "BackendConfig",
    "BreakersConfig",
    "ClassAdmissionConfig",
    "ConfigError",
    "IndicatorsConfig",
    "KeyConfig",
    "KvMarksConfig",
    "LimitsConfig",
    "ListenConfig",
    "MemoryBreakerConfig",
    "OverloadConfig",
    "PoolConfig",
    "ProbeConfig",
    "RetryBudgetConfig",
    "RouterConfig",
    "RoutingConfig",
    "ShutdownConfig",
    "StoreConfig",
    "TierConfig",
    "TimeoutsConfig",
    "TokenizerConfig",
    "TracingConfig",
    "load_config",
    "parse_config",
    "shipped",
]
