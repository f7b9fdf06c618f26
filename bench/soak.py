"""Soak: a steady open-loop load on `wattpool up --engine synthetic`, resident memory sampled.

    .venv/bin/python bench/soak.py --rate 50 --duration 600 --warmup 60 \
        --out bench/out/soak.json

The pool's RSS (gateway, control plane, bus and node bridge: one process; the engine
apart) is sampled every --every seconds. Growth is measured from the end of the warm-up
(caches, connection pools and allocator arenas fill during it) to the end: the issue's
bound is < 10 %. Everything runs on loopback and stops after --duration seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from wattpool import loop
from wattpool.benchtools import LoadSpec, run_load, summarize, table
from wattpool.benchtools.services import UpPool, exit_on_sigterm

BENCH = Path(__file__).resolve().parent
console = Console(width=120)
GROWTH_BOUND = 0.10


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


async def soak(pool: UpPool, args: argparse.Namespace) -> dict[str, Any]:
    samples: list[dict[str, float]] = []
    t0 = time.monotonic()

    async def sample() -> None:
        while True:
            samples.append({"t_s": round(time.monotonic() - t0, 1),
                            "pool_rss_mib": round(rss_mib(pool.proc.pid), 2),
                            "engine_rss_mib": round(rss_mib(pool.engine_pid), 2)})
            await asyncio.sleep(args.every)

    sampler = asyncio.get_running_loop().create_task(sample())
    spec = LoadSpec(base_url=pool.base_url, model=pool.model, rate=args.rate,
                    max_requests=int(args.rate * args.duration * 2) + 10,
                    max_duration_s=args.duration, max_tokens=args.max_tokens, timeout_s=30.0)
    try:
        result = await run_load(spec)
    finally:
        sampler.cancel()
    samples.append({"t_s": round(time.monotonic() - t0, 1),
                    "pool_rss_mib": round(rss_mib(pool.proc.pid), 2),
                    "engine_rss_mib": round(rss_mib(pool.engine_pid), 2)})
    after = [s for s in samples if s["t_s"] >= args.warmup]
    # A minute's median at each end, so one sample taken mid-burst does not decide it.
    window = max(1, int(60 / args.every))
    start = statistics.median(s["pool_rss_mib"] for s in after[:window])
    end = statistics.median(s["pool_rss_mib"] for s in after[-window:])
    peak = max(s["pool_rss_mib"] for s in after)
    report = summarize(result)
    console.print(table(report, title=f"soak: {args.rate:g} req/s for {args.duration:g} s"))
    return {
        "load": report, "samples": samples,
        "rss_mib": {"after_warmup": start, "end": end, "peak_after_warmup": peak,
                    "first": samples[0]["pool_rss_mib"]},
        "growth_after_warmup": (end - start) / start,
        "peak_growth_after_warmup": (peak - start) / start,
        "bound": GROWTH_BOUND,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=50.0, help="requests/s, open loop")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline")
    p.add_argument("--every", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--workdir", type=Path, default=BENCH / "out" / "soak-run")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "soak.json")
    args = p.parse_args()
    if args.warmup >= args.duration:
        p.error("--warmup must be shorter than --duration")
    exit_on_sigterm()
    # The same pool as bench/overhead.py's: an engine with no think time.
    pool = UpPool(args.workdir / time.strftime("%Y%m%d-%H%M%S"))
    try:
        out = loop.run(soak(pool, args))
    finally:
        pool.stop()
    met = out["growth_after_warmup"] < GROWTH_BOUND
    rss = out["rss_mib"]
    console.print(f"pool RSS: {rss['first']:.1f} MiB at start, {rss['after_warmup']:.1f} after "
                  f"warm-up, {rss['end']:.1f} at the end (peak {rss['peak_after_warmup']:.1f}); "
                  f"growth after warm-up {out['growth_after_warmup']:+.1%} "
                  + ("[green]< 10 %: met[/green]" if met else "[red]>= 10 %: NOT met[/red]"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"report: {args.out}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
