"""One simulation set-up, every policy run on it, and the comparison: what ``wattpool sim``
and the benchmarks call.

Every policy sees the same fleet, the same workload and the same fault schedule (the
seeds are shared), so their numbers compare side by side.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wattpool.policy.baselines import POLICY_NAMES
from wattpool.sim import data as sim_data
from wattpool.sim.engine import VARIANTS
from wattpool.sim.fleet import Fleet, generate_fleet
from wattpool.sim.metrics import Slo, check_invariants, per_site, summarize
from wattpool.sim.perf import load_profiles
from wattpool.sim.regions import REGIONS
from wattpool.sim.shard import run_sharded
from wattpool.sim.types import SimConfig
from wattpool.sim.workload import Workload, WorkloadConfig, build_workload

OBLIVIOUS = ("round-robin", "least-loaded", "power-of-two", "prefix-threshold")


@dataclass(frozen=True, slots=True)
class RunSpec:
    sites: int = 100
    policies: tuple[str, ...] = POLICY_NAMES
    load: float = 0.7  # offered load / estimated fleet capacity (ignored when rate is set)
    rate: float | None = None  # requests per second
    duration_s: float = 3600.0
    seed: int = 0
    shared: bool = True  # shared-prefix chat workload
    data: Path | None = None  # data folder; None: the shipped fixtures
    slo: Slo = field(default_factory=Slo)
    sim: SimConfig = field(default_factory=SimConfig)
    usd_per_mtok: float = 0.88  # what customers pay, for revenue per site
    # Processes per policy run: 1 is the exact simulation; more split the fleet and its
    # demand (sim/shard.py; an approximation, stated in docs/simulator.md).
    shards: int = 1


@dataclass(slots=True)
class Setup:
    fleet: Fleet
    workload: Workload
    capacity_rps: float  # estimate, uncached prompts
    rate: float


def estimate_capacity(fleet: Fleet, prompt: float, output: float) -> float:
    total = 0.0
    for site, count in zip(fleet.sites, fleet.instances_per_site(), strict=True):
        total += count * fleet.profiles[site.gpu].capacity_rps(prompt, output)
    return total


def prepare(spec: RunSpec) -> Setup:
    ds = sim_data.load(spec.data)
    regions = [r.name for r in REGIONS]
    prices = ds.prices(regions)
    profiles = load_profiles()
    fleet = generate_fleet(spec.sites, profiles, prices, seed=spec.seed)
    gateways = tuple(next(r.demand_weight for r in REGIONS if r.name == name)
                     for name in fleet.regions)
    base = WorkloadConfig(rate=1.0, duration_s=spec.duration_s, shared=spec.shared,
                          gateways=gateways)
    rate = spec.rate
    if rate is None:  # a pilot at a low rate gives the mean lengths of this workload
        pilot = build_workload(ds, replace(base, rate=5.0, duration_s=min(spec.duration_s,
                                                                          3600.0)), spec.seed)
        capacity = estimate_capacity(fleet, float(pilot.prompt.mean()),
                                     float(pilot.output.mean()))
        rate = spec.load * capacity
    workload = build_workload(ds, replace(base, rate=rate), spec.seed)
    capacity = estimate_capacity(fleet, float(workload.prompt.mean()) if workload.n else 1.0,
                                 float(workload.output.mean()) if workload.n else 1.0)
    return Setup(fleet, workload, capacity, rate)


def describe(setup: Setup) -> dict[str, Any]:
    fleet, wl = setup.fleet, setup.workload
    per_site = fleet.instances_per_site()
    return {
        "fleet": {
            "sites": len(fleet.sites), "instances": sum(per_site),
            "gpus": sum(s.gpus for s in fleet.sites),
            "gpu_types": dict(Counter(s.gpu for s in fleet.sites)),
            "regions": dict(Counter(s.region for s in fleet.sites)),
            "capacity_rps_estimate": round(setup.capacity_rps, 2),
        },
        "workload": {
            "requests": wl.n, "rate_rps": round(setup.rate, 3),
            "offered_load": round(setup.rate / max(setup.capacity_rps, 1e-9), 3),
            "mean_prompt": round(float(wl.prompt.mean()), 1) if wl.n else 0.0,
            "mean_output": round(float(wl.output.mean()), 1) if wl.n else 0.0,
            "code_share": round(float(wl.code.mean()), 3) if wl.n else 0.0,
            "follow_up_share": round(float((wl.turn > 0).mean()), 3) if wl.n else 0.0,
        },
    }


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, computed from the summaries."""
    out: dict[str, Any] = {}
    ours = results.get("wattpool")
    rr = results.get("round-robin")
    if ours and rr and rr["goodput_rps"] > 0:
        out["goodput_vs_round_robin"] = round(ours["goodput_rps"] / rr["goodput_rps"], 3)
    oblivious = [results[p] for p in OBLIVIOUS if p in results]
    if ours and oblivious:
        best = max(oblivious, key=lambda r: r["goodput_rps"])
        out["best_oblivious"] = best["policy"]
        if best["energy_usd_per_mtok"] and ours["energy_usd_per_mtok"] is not None:
            out["energy_saving_vs_best_oblivious"] = round(
                1.0 - ours["energy_usd_per_mtok"] / best["energy_usd_per_mtok"], 4)
        if best["goodput_rps"] > 0:
            out["goodput_change_vs_best_oblivious"] = round(
                ours["goodput_rps"] / best["goodput_rps"] - 1.0, 4)
    out["targets"] = {
        "goodput_vs_round_robin >= 1.5": out.get("goodput_vs_round_robin", 0) >= 1.5,
        "energy_saving_vs_best_oblivious >= 0.20":
            out.get("energy_saving_vs_best_oblivious", 0) >= 0.20,
        "goodput_change_vs_best_oblivious >= -0.05":
            out.get("goodput_change_vs_best_oblivious", -1) >= -0.05,
    }
    return out


def run(spec: RunSpec, progress: Callable[[str, float], None] | None = None,
        setup: Setup | None = None) -> dict[str, Any]:
    """Run every policy of ``spec`` on one set-up; the report as plain data."""
    setup = setup or prepare(spec)
    results: dict[str, dict[str, Any]] = {}
    sites: dict[str, list[dict[str, Any]]] = {}
    wall: dict[str, float] = {}
    invariants: dict[str, list[str]] = {}
    for name in spec.policies:
        started = time.perf_counter()  # reported only; the simulation never reads it
        res = run_sharded(setup.fleet, setup.workload, name, spec.sim, seed=spec.seed,
                          shards=spec.shards,
                          progress=None if progress is None else
                          (lambda frac, name=name: progress(name, frac)))
        wall[name] = round(time.perf_counter() - started, 2)
        results[name] = summarize(res, spec.slo, spec.usd_per_mtok)
        sites[name] = per_site(res, spec.usd_per_mtok)
        invariants[name] = check_invariants(res)
    spec_dict = asdict(spec)
    spec_dict["data"] = str(spec.data) if spec.data else "fixtures"
    return {"spec": spec_dict, **describe(setup), "results": results,
            "comparison": compare(results), "invariants": invariants, "wall_s": wall,
            "per_site": sites}


def write_report(report: dict[str, Any], out_dir: Path, plots: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2, default=_plain) + "\n", encoding="utf-8")
    written = [path]
    if plots:
        from wattpool.sim.plots import plot_report  # matplotlib only when plots are wanted

        written += plot_report(report, out_dir)
    return written


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def table_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per policy for a console table."""
    rows: list[tuple[str, ...]] = []
    for name, r in report["results"].items():
        rows.append((name, f"{r['goodput_rps']:.2f}", f"{r['slo_attainment']:.1%}",
                     _fmt(r["ttft_s"]["p50"]), _fmt(r["ttft_s"]["p99"]),
                     _fmt(r["tpot_s"]["p50"], 3), f"{r['prefix_hit_rate']:.1%}",
                     _fmt(r["energy_usd_per_mtok"], 4), str(r["rejected"])))
    return rows


TABLE_HEADER = ("policy", "goodput rps", "SLO met", "TTFT p50", "TTFT p99", "TPOT p50",
                "prefix hit", "energy $/Mtok", "rejected")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def policy_names(text: Sequence[str] | str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in (text.split(",") if isinstance(text, str) else text)
                  if p.strip())
    known = (*POLICY_NAMES, *VARIANTS)
    unknown = [p for p in names if p not in known]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; known: {', '.join(known)}")
    return names
