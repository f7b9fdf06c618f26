"""Every routing policy side by side on one fleet and workload, at several loads.

    .venv/bin/python bench/baselines.py [--sites 200] [--duration 3600] [--loads 0.6,0.8,1.0]
                                        [--data ../shared/data] [--out bench/out/baselines]

For each load: one fleet, one workload (the Azure trace scaled to that share of the
fleet's estimated capacity, with shared prefixes), one fault schedule; every policy and
the two ablations of wattpool's default (no energy scorer, no prefix scorer) run on it.
Prints the table and the issue's ratios, measured in the same run, and writes each
report (JSON and PNG) under --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from wattpool.policy.baselines import POLICY_NAMES
from wattpool.sim.runner import (
    TABLE_HEADER,
    RunSpec,
    describe,
    prepare,
    run,
    table_rows,
    write_report,
)

ABLATIONS = ("wattpool-no-energy", "wattpool-no-prefix")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--duration", type=float, default=3600.0)
    parser.add_argument("--loads", default="0.6,0.8,1.0")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/baselines"))
    parser.add_argument("--plain", action="store_true", help="no shared prefixes")
    args = parser.parse_args()
    for load in (float(x) for x in args.loads.split(",")):
        spec = RunSpec(sites=args.sites, duration_s=args.duration, load=load,
                       policies=(*POLICY_NAMES, *ABLATIONS), data=args.data, seed=args.seed,
                       shared=not args.plain)
        started = time.perf_counter()
        setup = prepare(spec)
        report = run(spec, setup=setup)
        info = describe(setup)
        print(f"\n== load {load}: {info['fleet']['sites']} sites, "
              f"{info['workload']['requests']} requests, "
              f"{info['workload']['rate_rps']} req/s, "
              f"{time.perf_counter() - started:.0f} s wall")
        print(" | ".join(TABLE_HEADER))
        for row in table_rows(report):
            print(" | ".join(row))
        comp = report["comparison"]
        print(f"goodput wattpool / round-robin: {comp.get('goodput_vs_round_robin')}")
        print(f"energy $/Mtok saving vs best oblivious ({comp.get('best_oblivious')}): "
              f"{comp.get('energy_saving_vs_best_oblivious')}, goodput change "
              f"{comp.get('goodput_change_vs_best_oblivious')}")
        ours = report["results"]["wattpool"]
        no_energy = report["results"]["wattpool-no-energy"]
        if no_energy["energy_usd_per_mtok"]:
            print("energy scorer alone (vs wattpool-no-energy): saving "
                  f"{1 - ours['energy_usd_per_mtok'] / no_energy['energy_usd_per_mtok']:.3f}, "
                  f"goodput change {ours['goodput_rps'] / no_energy['goodput_rps'] - 1:.4f}")
        print(f"targets: {comp['targets']}")
        print(f"invariants: {report['invariants']}")
        write_report(report, args.out / f"load-{load}")


if __name__ == "__main__":
    main()
