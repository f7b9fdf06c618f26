"""How long a large simulation takes: by default 10,000 sites and one simulated hour.

    .venv/bin/python bench/sim_scale.py [--sites 10000] [--duration 3600] [--load 0.7]
                                        [--policies wattpool] [--shards 2]
                                        [--data ../shared/data]

Prints the set-up time, the simulated requests, the wall time of each policy's run, the
simulated requests per wall second, the CPU time, and the peak memory of this process
and of its largest worker. The issue's target is 10,000 sites and one hour in under 10
minutes on a 2-core machine; a run of one hour says whether it met it, a shorter one
projects its time to an hour (and says so). Each policy runs alone, one after the
other, on the same fleet and workload. ``--shards 2`` (the default) runs each policy
as two processes, each with half the fleet and half the demand (sim/shard.py, the
approximation in docs/simulator.md); ``--shards 1`` is the exact, single-process run.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

from wattpool.sim.metrics import check_invariants, summarize
from wattpool.sim.runner import RunSpec, describe, policy_names, prepare
from wattpool.sim.shard import run_sharded

TARGET_S = 600.0


def _reporter(name: str, t0: float) -> Callable[[float], None]:
    """Progress every 10 %, on stderr."""
    last = [0.0]

    def progress(frac: float) -> None:
        if frac - last[0] >= 0.1 or (frac >= 1.0 > last[0]):
            last[0] = frac
            print(f"  {name}: {frac:5.0%} at {time.perf_counter() - t0:7.1f} s",
                  file=sys.stderr, flush=True)

    return progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=3600.0)
    parser.add_argument("--load", type=float, default=0.7)
    parser.add_argument("--policies", default="wattpool")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=2,
                        help="processes per run (1: exact single-process simulation)")
    args = parser.parse_args()
    spec = RunSpec(sites=args.sites, duration_s=args.duration, load=args.load,
                   policies=policy_names(args.policies), data=args.data, seed=args.seed,
                   shards=args.shards)
    started = time.perf_counter()
    setup = prepare(spec)
    setup_s = time.perf_counter() - started
    info = describe(setup)
    n = setup.workload.n
    print(f"fleet: {info['fleet']['sites']} sites, {info['fleet']['instances']} instances, "
          f"{info['fleet']['gpus']} GPUs, capacity ~{info['fleet']['capacity_rps_estimate']} "
          "req/s")
    print(f"workload: {n} requests over {args.duration:.0f} s "
          f"({info['workload']['rate_rps']} req/s, offered load "
          f"{info['workload']['offered_load']})")
    print(f"set-up (data, fleet, workload): {setup_s:.1f} s")
    for name in spec.policies:
        t0 = time.perf_counter()
        cpu0 = _cpu_s()
        res = run_sharded(setup.fleet, setup.workload, name, spec.sim, seed=spec.seed,
                          shards=spec.shards, progress=_reporter(name, t0))
        run_s = time.perf_counter() - t0
        cpu_s = _cpu_s() - cpu0
        summary = summarize(res, spec.slo)
        problems = check_invariants(res)
        total = setup_s + run_s
        print(f"{name}: simulated in {run_s:.1f} s with {spec.shards} process(es) "
              f"({n / run_s:,.0f} requests/s, {args.duration / run_s:.1f} simulated s per "
              f"wall s; CPU {cpu_s:.0f} s, {1e6 * cpu_s / max(n, 1):.0f} us a request); "
              "set-up + run "
              f"{total:.1f} s; goodput {summary['goodput_rps']} req/s, SLO met "
              f"{summary['slo_attainment']:.1%}, invariants "
              f"{'hold' if not problems else problems}")
        # The target is for one simulated hour: a shorter run is scaled up (a projection,
        # said as such), a longer one counts as it is.
        hour = setup_s + run_s * max(1.0, 3600.0 / args.duration)
        how = "measured" if args.duration >= 3600.0 else "projected from this run"
        verdict = "MET" if hour < TARGET_S else "NOT MET"
        print(f"one simulated hour at {args.sites} sites ({how}): {hour:.0f} s; target "
              f"< {TARGET_S:.0f} s: {verdict} ({hour / TARGET_S:.2f} x the budget)")
        del res
    print(f"whole script (set-up, runs, summaries, invariant checks): "
          f"{time.perf_counter() - started:.1f} s wall")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak memory: {peak_mb:,.0f} MiB this process, {worker_mb:,.0f} MiB the largest "
          f"worker (x {spec.shards if spec.shards > 1 else 0} workers)")


def _cpu_s() -> float:
    """CPU seconds of this process and its finished workers (user + system)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
