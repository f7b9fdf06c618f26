"""Router decision time at 100, 1,000 and 10,000 candidates, every policy side by side.

    .venv/bin/python bench/decision_time.py [--decisions 3000] [--sizes 100,1000,10000]

Each decision is timed alone (perf_counter_ns around ``policy.choose``) on a table with
random loads, prices, regions and flags, and a prefix index holding conversations, so the
prefix lookups do real work. Between decisions the chosen row gets one more request
(as the live router's local in-flight count does), so no decision repeats the last one.
The policies run interleaved for ``--repeat`` rounds; the round with the lowest median
is shown (the least disturbed by other work on the machine), with the median over rounds
beside it. Prints p50/p99 in microseconds and each policy's p50 as a ratio to
round-robin's, measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wattpool.policy.baselines import POLICY_NAMES, make_policy
from wattpool.policy.candidates import (
    CURTAILED,
    DRAINING,
    ERROR_RATE,
    FLAGS,
    IN_FLIGHT,
    INV_DECODE,
    INV_PREFILL,
    KV_USED,
    MAX_BATCH,
    MAX_QUEUE,
    PRICE,
    QUEUED,
    READY,
    REGION,
    WATTS,
    CandidateTable,
    RequestSpec,
)
from wattpool.policy.prefix import PrefixIndex

BLOCK = 128
GATEWAYS = 10


def make_table(n: int, rng: np.random.Generator) -> CandidateTable:
    table = CandidateTable([f"inst-{i:05d}" for i in range(n)], model_id="m",
                           regions=[f"r{k}" for k in range(GATEWAYS)],
                           gateways=[f"r{k}" for k in range(GATEWAYS)])
    m = table.m
    slots = rng.choice([8, 64], size=n)
    m[MAX_BATCH] = slots
    m[MAX_QUEUE] = 2 * slots
    m[IN_FLIGHT] = rng.integers(0, slots + 1)
    m[QUEUED] = rng.integers(0, 3, size=n)
    m[KV_USED] = rng.uniform(0, 0.9, size=n)
    m[PRICE] = rng.uniform(-5, 300, size=n)
    m[WATTS] = rng.uniform(20, 250, size=n)
    m[INV_PREFILL] = 1.0 / rng.choice([350.0, 900.0, 4000.0, 8600.0], size=n)
    m[INV_DECODE] = rng.uniform(0.03, 0.08, size=n)
    m[ERROR_RATE] = rng.uniform(0, 0.05, size=n)
    m[REGION] = rng.integers(0, GATEWAYS, size=n)
    flags = np.full(n, READY)
    bad = rng.random(n) < 0.05
    flags[bad] |= rng.choice([DRAINING, CURTAILED], size=int(bad.sum()))
    m[FLAGS] = flags
    table.rtt[:] = rng.uniform(2, 250, size=(GATEWAYS, n))
    table.refresh()
    return table


def requests(k: int, rng: np.random.Generator) -> list[RequestSpec]:
    out = []
    for j in range(k):
        sys_id, conv = int(rng.integers(20)), int(rng.integers(k // 3 + 1))
        blocks = int(rng.integers(4, 40))
        hashes = [(1 << 60) + (sys_id << 20) + b for b in range(4)] + [
            (2 << 60) + (conv << 20) + b for b in range(4, blocks)]
        out.append(RequestSpec("m", blocks * BLOCK + 50, 300, hashes, j % GATEWAYS))
    return out


def time_policy(name: str, n: int, decisions: int, seed: int, **options: object) -> np.ndarray:
    rng = np.random.default_rng(seed)
    table = make_table(n, rng)
    reqs = requests(decisions, rng)
    prefix_aware = name in ("prefix-threshold", "wattpool")
    if prefix_aware:
        options = {"block_tokens": BLOCK, "index": PrefixIndex(4096), **options}
    policy = make_policy(name, **options)
    if prefix_aware:  # warm the index: every request once, on a random instance
        index: PrefixIndex = policy.index  # type: ignore[attr-defined]
        for req in reqs:
            index.record(table.ids[int(rng.integers(n))], req.block_hashes)
    choose_rng = np.random.default_rng(seed + 1)
    for req in reqs[:200]:  # warm-up
        policy.choose(req, table, choose_rng)
    took = np.empty(decisions)
    clock = time.perf_counter_ns
    m = table.m
    for k, req in enumerate(reqs):
        t0 = clock()
        d = policy.choose(req, table, choose_rng)
        took[k] = clock() - t0
        if d.row >= 0:  # one more in flight there; an old one finishes somewhere
            m[IN_FLIGHT, d.row] += 1
            j = int(choose_rng.integers(n))
            m[IN_FLIGHT, j] = max(0.0, m[IN_FLIGHT, j] - 1)
    return took / 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=3000)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds, policies interleaved; the least disturbed is shown")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    variants: list[tuple[str, str, dict[str, object]]] = [
        (p, p, {}) for p in POLICY_NAMES]
    variants.append(("wattpool (full scan)", "wattpool", {"full_scan_limit": 10**9}))
    print(f"{'policy':24s} {'n':>6s} {'p50 us':>8s} {'p99 us':>8s} {'x rr p50':>9s} "
          f"{'p50 median of rounds':>21s}")
    for n in (int(s) for s in args.sizes.split(",")):
        rounds: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in variants}
        for _ in range(args.repeat):  # interleaved, so a busy moment hits every policy
            for label, name, opts in variants:
                took = time_policy(name, n, args.decisions, args.seed, **opts)
                p50, p99 = np.percentile(took, [50, 99])
                rounds[label].append((float(p50), float(p99)))
        base = min(rounds["round-robin"])[0]
        for label, _, _ in variants:
            p50, p99 = min(rounds[label])  # the round with the lowest median
            median = float(np.median([r[0] for r in rounds[label]]))
            print(f"{label:24s} {n:6d} {p50:8.1f} {p99:8.1f} {p50 / base:9.2f} {median:21.1f}")


if __name__ == "__main__":
    main()
