"""One simulation as a few processes: each runs a share of the fleet with its share of
the demand, and the outcomes are merged into one ``SimResult``.

The simulator is single-threaded Python; a 10,000-site hour is tens of millions of
routing decisions, and a 2-core machine can only halve that wall time by running two
halves at once. How it is split (docs/simulator.md, "Sharded runs"):

- **Sites** are dealt out like cards within each (region, GPU type, GPU count) stratum,
  in a seeded random order, so every shard is a small copy of the whole fleet: the same
  regions, GPU mix and price exposure, within one site per stratum.
- **Demand** is split by *conversation*, each to a shard drawn with probability
  proportional to the shard's estimated capacity, so a conversation's turns meet the
  caches that its earlier turns warmed, and every shard sees every gateway region.
- What this gives up: a request is routed only among its own shard's instances (no
  cross-shard routing, and a shard's system-prompt caches serve only its own
  conversations). Each shard is a fleet of thousands of sites sampled 8 + 4 rows at a
  time, so this changes the choices little; tests/unit/sim/test_sim_shard.py compares a
  sharded and an unsharded run of the same set-up and states the tolerance.

Workers are forked after the set-up (nothing is pickled on the way in); they write the
per-request outcome straight into shared memory at the requests' global positions and
send back only the small parts (per-site sums, counters, rejection reasons).
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from wattpool.sim.engine import Simulation
from wattpool.sim.fleet import Fleet
from wattpool.sim.types import SimConfig, SimResult
from wattpool.sim.workload import Workload

SPLIT_SEED = 0x5EED  # offset of the split's random stream from the run's seed
SHARD_SEED_STEP = 7919  # shard k simulates with seed + k * this (shard 0: the run's seed)
# Per-request outcomes the workers write into shared memory: field -> dtype.
SHARED_FIELDS = {"status": np.int64, "first_token": np.float64, "finish": np.float64,
                 "rtt": np.float64, "delivered": np.int64, "cached": np.int64,
                 "prefilled": np.int64, "energy_j": np.float64, "energy_usd": np.float64,
                 "attempts": np.int64}


@dataclass(frozen=True, slots=True)
class Split:
    site_shard: np.ndarray  # per site: its shard
    request_shard: np.ndarray  # per request: its shard
    shards: int

    def sites(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.site_shard == k)

    def requests(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.request_shard == k)


def split(fleet: Fleet, workload: Workload, shards: int, seed: int = 0) -> Split:
    """Deal sites out by stratum; send each conversation to one shard, by capacity."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    rng = np.random.default_rng(seed + SPLIT_SEED)
    n_sites = len(fleet.sites)
    tiebreak = rng.random(n_sites)
    order = sorted(range(n_sites), key=lambda s: (fleet.sites[s].region, fleet.sites[s].gpu,
                                                  fleet.sites[s].gpus, tiebreak[s]))
    site_shard = np.empty(n_sites, dtype=np.int64)
    site_shard[order] = np.arange(n_sites) % shards
    if workload.n == 0:
        return Split(site_shard, np.zeros(0, dtype=np.int64), shards)
    prompt, output = float(workload.prompt.mean()), float(workload.output.mean())
    capacity = np.zeros(shards)
    for s, (site, count) in enumerate(zip(fleet.sites, fleet.instances_per_site(),
                                          strict=True)):
        capacity[site_shard[s]] += count * fleet.profiles[site.gpu].capacity_rps(prompt,
                                                                                 output)
    if capacity.sum() <= 0:
        capacity[:] = 1.0
    conv_shard = rng.choice(shards, size=int(workload.conv.max()) + 1,
                            p=capacity / capacity.sum())
    return Split(site_shard, conv_shard[workload.conv], shards)


def _subset(workload: Workload, rows: np.ndarray) -> Workload:
    # Rows ascend, so the subset stays sorted by arrival time.
    return Workload(**{f.name: getattr(workload, f.name)[rows] for f in fields(Workload)})


def _shared(n: int) -> dict[str, np.ndarray]:
    """Per-request outcome arrays in anonymous shared memory (MAP_SHARED: a forked
    worker's writes are the parent's)."""
    out: dict[str, np.ndarray] = {}
    for name, dtype in SHARED_FIELDS.items():
        size = max(n, 1) * np.dtype(dtype).itemsize
        out[name] = np.frombuffer(mmap.mmap(-1, size), dtype=dtype, count=n)
    return out


def _worker(k: int, fleet: Fleet, workload: Workload, plan: Split, policy: str,
            cfg: SimConfig, seed: int, out: dict[str, np.ndarray], progress: Any,
            conn: Connection) -> None:
    """One shard, in a forked process: simulate, write the outcome, report the rest."""
    try:
        sites = plan.sites(k)
        rows = plan.requests(k)
        sub_fleet = replace(fleet, sites=[fleet.sites[int(s)] for s in sites])
        sim = Simulation(sub_fleet, _subset(workload, rows), policy, cfg,
                         seed=seed + k * SHARD_SEED_STEP)

        def report(frac: float) -> None:
            progress[k] = frac

        started = time.perf_counter()
        res = sim.run(report)
        wall = time.perf_counter() - started
        for name in SHARED_FIELDS:
            out[name][rows] = getattr(res, name)
        reasons = {int(rows[r]): why for r, why in res.reasons.items()}
        conn.send(("ok", {"reasons": reasons, "site_busy_s": res.site_busy_s,
                          "site_slots": res.site_slots, "site_tokens": res.site_tokens,
                          "counters": res.counters, "explanations": res.explanations,
                          "idle_energy_usd": res.idle_energy_usd, "end_s": res.end_s,
                          "policy": res.policy, "wall_s": wall}))
    except BaseException:  # the parent raises it; a worker must always answer
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_sharded(fleet: Fleet, workload: Workload, policy: str, cfg: SimConfig | None = None,
                *, seed: int = 0, shards: int = 2,
                progress: Callable[[float], None] | None = None) -> SimResult:
    """``Simulation(...).run()`` split over ``shards`` processes and merged. One shard
    runs in this process and gives exactly the unsharded result."""
    cfg = cfg or SimConfig()
    if shards == 1:
        return Simulation(fleet, workload, policy, cfg, seed=seed).run(progress)
    plan = split(fleet, workload, shards, seed)
    out = _shared(workload.n)
    ctx = mp.get_context("fork")  # the set-up is inherited, never pickled
    fractions = ctx.Array("d", shards, lock=False)
    workers: list[tuple[Any, Connection]] = []
    for k in range(shards):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, name=f"sim-shard-{k}", daemon=True,
                           args=(k, fleet, workload, plan, policy, cfg, seed, out,
                                 fractions, send))
        proc.start()
        send.close()  # the worker holds the only sending end now
        workers.append((proc, recv))
    parts: list[dict[str, Any]] = []
    try:
        for k, (proc, recv) in enumerate(workers):
            while not recv.poll(0.5):  # bounded by the worker: it answers or dies
                if progress is not None:
                    progress(min(1.0, sum(fractions) / shards))
                if not proc.is_alive() and not recv.poll(0):
                    raise RuntimeError(f"simulation shard {k} died (exit code "
                                       f"{proc.exitcode}) without a result")
            kind, body = recv.recv()
            if kind != "ok":
                raise RuntimeError(f"simulation shard {k} failed:\n{body}")
            parts.append(body)
    finally:
        for proc, recv in workers:
            recv.close()
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if progress is not None:
        progress(1.0)
    return _merge(fleet, workload, plan, out, parts, cfg.explain_samples)


def _merge(fleet: Fleet, workload: Workload, plan: Split, out: dict[str, np.ndarray],
           parts: list[dict[str, Any]], explain_samples: int) -> SimResult:
    n_sites = len(fleet.sites)
    site_busy, site_slots, site_tokens = np.zeros(n_sites), np.zeros(n_sites), np.zeros(n_sites)
    counters: dict[str, int] = {}
    reasons: dict[int, str] = {}
    explanations: list[dict[str, object]] = []
    for k, part in enumerate(parts):
        sites = plan.sites(k)
        site_busy[sites] = part["site_busy_s"]
        site_slots[sites] = part["site_slots"]
        site_tokens[sites] = part["site_tokens"]
        for key, value in part["counters"].items():
            counters[key] = counters.get(key, 0) + value
        reasons.update(part["reasons"])
        explanations += part["explanations"]
    n = workload.n
    return SimResult(
        policy=parts[0]["policy"], duration_s=max(float(workload.t[-1]) if n else 0.0, 1.0),
        arrival=workload.t, prompt=workload.prompt, output=workload.output,
        **{name: out[name] for name in SHARED_FIELDS},
        reasons=reasons, site_busy_s=site_busy, site_slots=site_slots,
        site_tokens=site_tokens, site_ids=[s.site_id for s in fleet.sites],
        counters=counters, explanations=explanations[:explain_samples],
        idle_energy_usd=sum(p["idle_energy_usd"] for p in parts),
        end_s=max(p["end_s"] for p in parts),
    )
