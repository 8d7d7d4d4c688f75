"""Every ctxroute_* series the Grafana dashboard and the alert rules query is one a running
router exposes: a renamed metric breaks this test, not a dashboard at 3 a.m."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import yaml
from ctxroute.backends.simulator import Simulator
from ctxroute.router.config import parse_config
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.router import RunningRouter

CONFIG = Path(__file__).resolve().parents[2] / "config"
RouterFactory = Callable[..., Awaitable[RunningRouter]]
_NAME = re.compile(r"\bctxroute_[a-z_]+")


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((CONFIG / "grafana" / "dashboards" / "ctxroute.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((CONFIG / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


async def exposed(router: RunningRouter) -> set[str]:
    """Every sample name the router's /metrics can carry (histogram and counter suffixes
    included)."""
    async with aiohttp.ClientSession() as s, s.get(router.url + "/metrics") as r:
        text = await r.text()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
    return names


async def test_the_dashboard_and_the_alerts_query_only_what_the_router_exposes(
    sim: Simulator, make_router: RouterFactory
) -> None:
    config = parse_config(
        {"pools": [{"name": "p", "model": "sim-model", "max_context_tokens": 2048,
                    "backends": [{"url": sim.url}]}]},
        environ={},
    )  # fmt: skip
    router = await make_router(config, probes=True)
    names = await exposed(router)
    exprs = dashboard_exprs() + rule_exprs()
    queried = {name for expr in exprs for name in _NAME.findall(expr)}
    assert len(queried) >= 15  # the panels and rules above really were read
    assert queried <= names, sorted(queried - names)


def test_the_dashboard_is_provisioned_from_the_shipped_files() -> None:
    provider = yaml.safe_load((CONFIG / "grafana" / "provisioning" / "dashboards" /
                               "ctxroute.yml").read_text())  # fmt: skip
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((CONFIG / "grafana" / "provisioning" / "datasources" /
                             "prometheus.yml").read_text())  # fmt: skip
    uid = source["datasources"][0]["uid"]
    dashboard = json.loads((CONFIG / "grafana" / "dashboards" / "ctxroute.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {uid}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
