"""k8s/base, checked without a cluster: every manifest validates against the Kubernetes
API schemas (kubernetes-validate, strict: an unknown field is an error), the kustomization
lists exactly the files that are there, and the router's cluster config is
config/router.yaml with the engines' StatefulSet names, each one a pod that exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from ctxroute.router.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "k8s" / "base"
K8S_VERSION = "1.30.0"


def kustomization() -> dict[str, Any]:
    return dict(yaml.safe_load((BASE / "kustomization.yaml").read_text()))


def resources() -> list[dict[str, Any]]:
    docs = []
    for name in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return docs


def named(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in resources() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name)
    return matches[0]


@pytest.mark.parametrize("doc", resources(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_validates_strictly(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validation_catches_a_wrong_field() -> None:
    doc = named("Deployment", "ctxroute")
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_kustomization_lists_every_file_there() -> None:
    k = kustomization()
    listed = set(k["resources"]) | {
        f.split("=")[-1] for g in k["configMapGenerator"] for f in g["files"]
    }
    present = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_the_cluster_config_is_the_compose_config_with_the_engines_pod_names() -> None:
    cluster = yaml.safe_load((BASE / "router-config.yaml").read_text())
    compose = yaml.safe_load((ROOT / "config" / "router.yaml").read_text())
    parse_config(cluster, environ={})  # a valid router config
    urls = [b.pop("url") for p in cluster["pools"] for b in p["backends"]]
    for p in compose["pools"]:
        for b in p["backends"]:
            b.pop("url")
    assert cluster == compose  # nothing else differs
    for url in urls:
        host = urlsplit(url).hostname or ""
        pod, service = host.split(".")
        statefulset = named("StatefulSet", service)
        assert statefulset["spec"]["serviceName"] == service
        ordinal = int(pod.rsplit("-", 1)[1])
        assert pod == f"{service}-{ordinal}" and ordinal < statefulset["spec"]["replicas"]
        assert named("Service", service)["spec"]["clusterIP"] == "None"  # per-pod DNS


def test_the_router_is_probed_drained_and_protected() -> None:
    deployment = named("Deployment", "ctxroute")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "preStop" in container["lifecycle"]
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    pdb = named("PodDisruptionBudget", "ctxroute")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
