"""``ctxroute bench`` as a user runs it, on a small fleet of tiny engines (seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ctxroute.bench.workload import Workload, plan_requests

FLEET = """
pools:
  - name: small
    model: m
    max_context_tokens: 2048
    backends: [{url: "http://127.0.0.1:1"}, {url: "http://127.0.0.1:2"}]
  - name: large
    model: m
    max_context_tokens: 4096
    backends: [{url: "http://127.0.0.1:3"}]
"""

WORKLOAD = """
rate: 6
duration_s: 3
system_tokens: 100
user_tokens: [10, 40]
short_max_tokens: [4, 8]
long_tokens: [2200, 3500]
long_max_tokens: 8
"""


def test_the_same_seed_plans_the_same_requests_and_the_mix_is_as_asked() -> None:
    w = Workload(rate=20, duration_s=30, seed=3)
    a, b = plan_requests(w), plan_requests(w)
    assert [(p.at, p.body) for p in a] == [(p.at, p.body) for p in b]
    assert a != plan_requests(Workload(rate=20, duration_s=30, seed=4))
    short = [p for p in a if p.kind == "short"]
    assert 0.7 < len(short) / len(a) < 0.9
    longs = [p for p in a if p.kind == "long"]
    assert all(8_000 <= p.prompt_tokens <= 60_000 for p in longs)
    assert all(len(json.loads(p.body)["prompt"]) == 4 * p.prompt_tokens for p in longs)
    assert len({p.session for p in short}) > 100


def run_bench(tmp_path: Path, *flags: str, columns: int = 200) -> tuple[list[dict[str, Any]], str]:
    """``ctxroute bench`` on the tiny fleet and workload above: its runs and its output
    (not a terminal: the progress lines and the table, at ``columns``)."""
    fleet, workload, out = tmp_path / "fleet.yaml", tmp_path / "w.yaml", tmp_path / "r.json"
    fleet.write_text(FLEET)
    workload.write_text(WORKLOAD)
    proc = subprocess.run(
        [sys.executable, "-m", "ctxroute.router", "bench", "--fleet", str(fleet), "--profile",
         "tiny", "--workload", str(workload), "--json", str(out), "--no-pin", *flags],
        capture_output=True, timeout=120, env={**os.environ, "COLUMNS": str(columns)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return json.loads(out.read_text())["runs"], proc.stdout.decode()


def test_bench_runs_both_targets_on_a_fleet_and_writes_json(tmp_path: Path) -> None:
    runs, table = run_bench(tmp_path, "--target", "both")
    assert [r["target"] for r in runs] == ["round-robin", "router"]
    for run in runs:
        total = run["short"]["n"] + run["long"]["n"]
        assert total == run["requests"] > 5
        assert run["short"]["ok"] + run["long"]["ok"] == total, run["errors"]
        assert run["preemptions"] is not None
    assert "TTFT ms p50/p95/p99" in table


def test_bench_refuses_a_bad_workload_file_with_exit_2(tmp_path: Path) -> None:
    fleet, workload = tmp_path / "fleet.yaml", tmp_path / "w.yaml"
    fleet.write_text(FLEET)
    workload.write_text("rate: 3\ncolour: red\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ctxroute.router", "bench", "--fleet", str(fleet), "--workload",
         str(workload)], capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown workload fields ['colour']" in proc.stderr.decode()


def test_bench_spreads_load_over_replicas_sharing_a_redis(tmp_path: Path) -> None:
    (run,), table = run_bench(tmp_path, "--replicas", "2", "--redis")
    assert (run["replicas"], run["redis"]) == (2, True)
    assert run["short"]["ok"] + run["long"]["ok"] == run["requests"], run["errors"]
    assert "2 replicas +redis" in table


def test_bench_compares_admission_variants_over_rates_and_names_the_capacity(
    tmp_path: Path,
) -> None:
    runs, table = run_bench(tmp_path, "--rates", "3,6", "--variant", "admission",
                            "--variant", "no-admission")  # fmt: skip
    assert [(r["rate"], r["variant"]) for r in runs] == [
        (3.0, "admission"), (3.0, "no-admission"), (6.0, "admission"), (6.0, "no-admission")
    ]  # fmt: skip
    for run in runs:
        for kind in ("short", "long"):
            s = run[kind]
            assert s["ok"] + s["refused"] + s["errors"] + s["stuck"] == s["n"]
            assert s["good_per_s"] >= 0
    assert "capacity at SLO" in table and "no-admission" in table
    bad = subprocess.run(
        [sys.executable, "-m", "ctxroute.router", "bench", "--fleet", str(tmp_path / "fleet.yaml"),
         "--rates", "3,x"], capture_output=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "expected numbers separated by commas" in bad.stderr.decode()


def test_bench_off_a_terminal_says_how_far_it_is_and_fits_80_columns(tmp_path: Path) -> None:
    runs, out = run_bench(tmp_path, "--target", "both", "--plot", str(tmp_path / "b.png"),
                          columns=80)  # fmt: skip
    # a line per run at least (more on a long run), never silence until the table
    assert "round-robin, 6 req/s: " in out and "router, 6 req/s: " in out
    assert "requests ended" in out
    # (the paths of the files written are as long as they are)
    lines = [line for line in out.splitlines() if " written to " not in line]
    assert max(len(line) for line in lines) <= 80
    assert "…" not in out
    assert "TTFT ms p50/p95/p99" in out
    # the plot: a real PNG, with a distribution per run drawn from every finished request
    png = (tmp_path / "b.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    for run in runs:
        assert len(run["ttft_ms"]["short"]) == run["short"]["ok"]
        assert run["ttft_ms"]["short"] == sorted(run["ttft_ms"]["short"])


def test_bench_tenants_runs_the_light_tenant_alone_then_both_with_fair_shares_on_and_off(
    tmp_path: Path,
) -> None:
    runs, table = run_bench(tmp_path, "--tenants", "4", "--rate", "15")
    assert [r["scenario"] for r in runs] == ["light alone", "fair shares on", "fair shares off"]
    assert list(runs[0]["tenants"]) == ["light"]
    assert [sorted(r["tenants"]) for r in runs[1:]] == [["heavy", "light"]] * 2
    # the light tenant's stream is the same seeded one in every run, the heavy one's four
    # times its rate; every request got through with its key (keys are on: no key, 401)
    light = [r["tenants"]["light"]["short"]["n"] + r["tenants"]["light"]["long"]["n"] for r in runs]
    assert light[0] == light[1] == light[2] > 0
    heavy = runs[1]["tenants"]["heavy"]
    assert heavy["short"]["n"] + heavy["long"]["n"] > light[0]
    for run in runs:
        assert run["short"]["ok"] + run["long"]["ok"] == run["requests"], run["errors"]
    assert "light tenant, fair shares on: keeps" in table
    assert "light tenant, fair shares off: keeps" in table


def test_bench_limits_two_replicas_admit_one_keys_limit_not_twice() -> None:
    # a short run of bench/limits.py: two serve replicas sharing a redis-server, a key's
    # clients as fast as they can; what they got, against the limit over the run
    proc = subprocess.run(
        [sys.executable, "-m", "ctxroute.bench.limits", "--duration", "4", "--burst", "1"],
        capture_output=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    out = proc.stdout.decode()
    ratios = [float(line.split(" x the limit")[0].rsplit(" ", 1)[1])
              for line in out.splitlines() if " x the limit" in line]  # fmt: skip
    assert len(ratios) == 2, out
    # GCRA's bound over 4 s with 1 s of burst is 1.25; two replicas each alone would be 2.5
    assert all(0.8 <= r <= 1.3 for r in ratios), out


async def test_bench_drift_flags_the_drifting_backend_and_only_it() -> None:
    # the short version of `python -m ctxroute.bench.drift detect` (engines 10x faster)
    from ctxroute.bench.drift import run

    out = await run("detect", rate=20.0, duration_s=60.0, warmup_s=15.0, speed=10.0)
    assert out.errors == 0 and out.requests > 200
    assert out.flagged_after_s is not None and not out.healthy_flagged, out


async def test_bench_drift_healthy_traffic_raises_no_flag() -> None:
    # the short version of `python -m ctxroute.bench.drift healthy`
    from ctxroute.bench.drift import run

    out = await run("healthy", rate=20.0, duration_s=40.0, warmup_s=0.0, speed=10.0)
    assert out.errors == 0 and out.requests > 500
    assert not out.healthy_flagged and max(out.max_scores.values()) < 1.0, out
