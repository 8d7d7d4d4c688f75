"""compose.yaml (and compose.gpu.yaml), checked without a Docker engine: each invocation
validates (docker-compose ``config``, when installed); every backend URL of the routers'
config, Redis and every scrape target resolves to a service that invocation starts; the
default starts no GPU service. And ``docker compose up`` as typed, with no flags: its
services run as local processes, with their own commands and the router's own config,
service names mapped to loopback ports: both routers come up ready, on Redis and the
simulators, and answer through both pools."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from tests.fixtures.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
# what the README's compose section says to type, by the stack it gives
INVOCATIONS = {
    "default": ["compose.yaml"],  # docker compose up
    "gpu": [
        "compose.yaml",
        "compose.gpu.yaml",
    ],  # docker compose -f compose.yaml -f compose.gpu.yaml up
}


def services_of(invocation: str) -> dict[str, Any]:
    """The invocation's services, merged as Compose merges its files: by docker-compose
    itself when installed, else key by key per service (what these files use)."""
    files = INVOCATIONS[invocation]
    tool = shutil.which("docker-compose")
    if tool is not None:
        args = [a for f in files for a in ("-f", f)]
        done = subprocess.run([tool, *args, "config"], capture_output=True, text=True,
                              timeout=60, cwd=ROOT, check=True)  # fmt: skip
        return dict(yaml.safe_load(done.stdout)["services"])
    services: dict[str, Any] = {}
    for f in files:
        for name, service in (yaml.safe_load((ROOT / f).read_text())["services"]).items():
            services[name] = {**services.get(name, {}), **service}
    return services


def started(services: dict[str, Any]) -> dict[str, Any]:
    """The services ``up`` starts with no --profile: those in no profile."""
    return {name: s for name, s in services.items() if not s.get("profiles")}


def router_config() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "config" / "router.yaml").read_text()))


def hosts_of(services: dict[str, Any]) -> dict[str, str]:
    """Host name -> the service that answers to it, among ``services``."""
    out = {}
    for name, service in services.items():
        out[name] = name
        for alias in (service.get("networks") or {}).get("default", {}).get("aliases", []):
            out[alias] = name
    return out


def _gpu(service: dict[str, Any]) -> bool:
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations")
               or {}).get("devices")  # fmt: skip
    return bool(devices) or str(service.get("image", "")).startswith("vllm/")


@pytest.mark.parametrize("invocation", sorted(INVOCATIONS))
def test_compose_validates(invocation: str) -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    args = [a for f in INVOCATIONS[invocation] for a in ("-f", f)]
    done = subprocess.run([tool, *args, "config", "-q"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("invocation", sorted(INVOCATIONS))
def test_every_backend_redis_and_scrape_target_is_a_started_service(invocation: str) -> None:
    running = started(services_of(invocation))
    hosts = hosts_of(running)
    config = router_config()
    for pool in config["pools"]:
        for backend in pool["backends"]:
            host = urlsplit(backend["url"]).hostname
            assert host in hosts, (invocation, backend["url"], sorted(running))
    redis_url = running["router-1"]["environment"]["CTXROUTE__STORE__REDIS_URL"]
    assert hosts.get(urlsplit(redis_url).hostname) == "redis"
    scrape = yaml.safe_load((ROOT / "config" / "prometheus" / "prometheus.yml").read_text())
    for job in scrape["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            assert target.split(":")[0] in hosts, (invocation, target)
    for service in running.values():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith(("./", "/")):
                assert (ROOT / source).exists(), source
        for port in service.get("ports", []):  # auth is off: loopback only
            published = port if isinstance(port, str) else port.get("host_ip", "") + ":"
            assert str(published).startswith("127.0.0.1"), (invocation, port)
    # one name never means two servers: each host name is one started service's
    names = [n for s_name, s in running.items() for n in hosts_of({s_name: s})]
    assert len(names) == len(set(names)), sorted(names)
    gpu = sorted(n for n, s in running.items() if _gpu(s))
    if invocation == "default":
        assert gpu == [], gpu  # no GPU, no model download
    else:
        assert len(gpu) == 4, gpu


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
    for proc in procs:
        await asyncio.wait_for(proc.wait(), 20)


def _local(command: list[str]) -> list[str]:
    """A compose command run here: ``ctxroute`` is this checkout, /app is the repo root
    (the caller sets the host and port its service was given)."""
    out = (
        [sys.executable, "-m", "ctxroute.router", *command[1:]]
        if command[0] == "ctxroute"
        else command
    )
    out = [arg.replace("/app/", str(ROOT) + "/") for arg in out]
    return out


async def _until_ok(url: str, seconds: float = 30.0) -> Any:
    async with aiohttp.ClientSession() as s:
        for _ in range(int(seconds * 10)):
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        text = await r.text()
                        return yaml.safe_load(text)  # JSON, or the plain text of /readyz
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered 200")


async def test_docker_compose_up_as_typed_wires_up_as_local_processes(
    processes: list[asyncio.subprocess.Process],
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    # the services `docker compose up` starts, as typed
    services = started(services_of("default"))
    hosts = hosts_of(services)
    ports = {name: free_port() for name in services}

    def port_of(host: str) -> int:
        return ports[hosts[host]]

    async def run(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        processes.append(await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env={**os.environ, **(env or {})},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        ))  # fmt: skip

    redis = services["redis"]["command"]
    await run("redis", [*redis, "--port", str(ports["redis"]), "--bind", "127.0.0.1"])
    for name, service in services.items():
        if service.get("command", [None])[:2] != ["ctxroute", "sim"]:
            continue
        argv = _local(service["command"])
        argv[argv.index("--host") + 1] = "127.0.0.1"
        argv[argv.index("--port") + 1] = str(ports[name])
        await run(name, argv)
    config = router_config()
    routers = [n for n in services if n.startswith("router-")]
    assert len(routers) == 2
    for name in routers:
        service = services[name]
        env = {k: str(v) for k, v in service["environment"].items()}
        redis_url = urlsplit(env["CTXROUTE__STORE__REDIS_URL"])
        env["CTXROUTE__STORE__REDIS_URL"] = (
            f"redis://127.0.0.1:{port_of(redis_url.hostname or '')}{redis_url.path}"
        )
        env["CTXROUTE__LISTEN__HOST"] = "127.0.0.1"
        env["CTXROUTE__LISTEN__PORT"] = str(ports[name])
        for p, pool in enumerate(config["pools"]):
            for b, backend in enumerate(pool["backends"]):
                host = urlsplit(backend["url"]).hostname or ""
                env[f"CTXROUTE__POOLS__{p}__BACKENDS__{b}__URL"] = (
                    f"http://127.0.0.1:{port_of(host)}"
                )
        await run(name, _local(service["command"]), env)

    chat = {"model": config["pools"][0]["model"], "max_tokens": 4,
            "messages": [{"role": "user", "content": "hello"}]}  # fmt: skip
    for name in routers:
        base = f"http://127.0.0.1:{ports[name]}"
        await _until_ok(base + "/readyz")
        # redis-server may have come up after the router's first try, and a simulator after
        # its first probe (ready needs one backend per pool, not all): wait for both, within
        # a bound, rather than sample once
        for _ in range(100):
            status = await _until_ok(base + "/status")
            backends_up = all(b["up"] for p in status["pools"] for b in p["backends"])
            if status["store"]["up"] and backends_up:
                break
            await asyncio.sleep(0.2)
        assert status["store"] == {"kind": "redis", "up": True}
        assert all(b["up"] for p in status["pools"] for b in p["backends"])
        async with aiohttp.ClientSession() as s:
            async with s.post(base + "/v1/chat/completions", json=chat) as r:
                assert r.status == 200, await r.text()
                assert r.headers["x-ctxroute-pool"] == "low-latency"
            long = {**chat, "max_tokens": 16_000}  # over the low-latency window
            async with s.post(base + "/v1/chat/completions", json=long) as r:
                assert r.status == 200, await r.text()
                assert r.headers["x-ctxroute-pool"] == "high-memory"
