"""What wattpool adds to an engine, side by side with LiteLLM, in one run.

Starts, on loopback:
  * ``wattpool up --engine synthetic`` (in-process bus; engine with no think time),
  * the NATS shape: nats-server + PostgreSQL + ``wattpool server`` + ``wattpool node join``,
  * the LiteLLM proxy from its own virtualenv (bench/litellm_setup.sh), pointed at the
    ``wattpool up`` pool's own engine,
then offers the same open-loop Poisson load (same seed per round) to each of them and to
the engines directly, interleaved round by round, and prints:
  * added latency: p50/p99 of TTFT and end to end, minus the engine's own,
  * throughput ratio (completed tokens/s over the engine's),
  * CPU per request of the gateway + node bridge processes (of LiteLLM's, of the engine's),
  * with ``--sweep``: the highest offered rate each path sustains with p99 TTFT < 50 ms.

    .venv/bin/python bench/overhead.py --rates 10,100 --rounds 3 --round-s 10 \
        --sweep 100,200,300,400,500 --out bench/out/overhead.json

Every load is bounded (rate x seconds, plus a timeout); everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from wattpool import loop
from wattpool.benchtools import LoadSpec, RequestResult, run_load
from wattpool.benchtools.report import latencies
from wattpool.benchtools.runner import ClientKind
from wattpool.benchtools.services import (
    WATTPOOL,
    DirectEngine,
    LiteLLMProxy,
    NatsPool,
    Service,
    UpPool,
    cpu_seconds,
    exit_on_sigterm,
    litellm_version,
)

BENCH = Path(__file__).resolve().parent
console = Console(width=180)
TTFT_SLO_MS = 50.0
# wattpool processes started on uvloop without changing the CLI (for before/after figures).
UVLOOP_PREFIX = [sys.executable, "-c", "import sys, uvloop; uvloop.install(); "
                 "sys.argv[0] = 'wattpool'; from wattpool.cli import app; app()"]


@dataclass
class Tally:
    """Everything measured for one target at one rate, over all rounds."""

    results: list[RequestResult] = field(default_factory=list)
    cpu_s: float = 0.0  # of the target's own processes
    extra_cpu_s: float = 0.0  # nats-server, for the NATS path
    client_cpu_s: float = 0.0
    wall_s: float = 0.0
    window_s: float = 0.0  # time between the CPU readings
    idle_cpu_per_s: float = 0.0  # the target's CPU use with no load (timers, heartbeats)
    round_cpu_ms: list[float] = field(default_factory=list)  # CPU a request, each round

    @property
    def ok(self) -> int:
        return sum(1 for r in self.results if r.ok)

    def cpu_ms_per_request(self) -> float | None:
        return self.cpu_s * 1000 / self.ok if self.ok else None

    def net_cpu_ms_per_request(self) -> float | None:
        """CPU per request less what the target burns when idle over the same time."""
        if not self.ok:
            return None
        return (self.cpu_s - self.idle_cpu_per_s * self.window_s) * 1000 / self.ok

    def summary(self) -> dict[str, Any]:
        lat = {k: (d.as_dict() if d else None) for k, d in latencies(self.results).items()}
        tokens = sum(r.tokens for r in self.results if r.ok)
        return {
            "sent": len(self.results), "ok": self.ok, "latency_ms": lat,
            "requests_per_s": self.ok / self.wall_s if self.wall_s else 0.0,
            "tokens_per_s": tokens / self.wall_s if self.wall_s else 0.0,
            "cpu_ms_per_request": self.cpu_ms_per_request(),
            "net_cpu_ms_per_request": self.net_cpu_ms_per_request(),
            # The spread says how far apart two targets must be to differ at all.
            "cpu_ms_per_request_by_round": [round(x, 4) for x in self.round_cpu_ms],
            "idle_cpu_ms_per_s": self.idle_cpu_per_s * 1000,
            "nats_server_cpu_ms_per_request": (self.extra_cpu_s * 1000 / self.ok
                                               if self.ok and self.extra_cpu_s else None),
            "client_cpu_ms_per_request": (self.client_cpu_s * 1000 / self.ok
                                          if self.ok else None),
        }


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def measure(service: Service, tally: Tally, *, rate: float, seconds: float, seed: int,
                  max_tokens: int, client: ClientKind,
                  extra_pids: list[int] | None = None) -> None:
    spec = LoadSpec(base_url=service.base_url, model=service.model, rate=rate,
                    max_requests=int(rate * seconds * 2) + 10, max_duration_s=seconds,
                    timeout_s=30.0, max_tokens=max_tokens, seed=seed, client=client)
    pids = service.overhead_pids()
    cpu0, extra0, client0 = cpu_seconds(pids), cpu_seconds(extra_pids or []), own_cpu()
    t0 = time.monotonic()
    result = await run_load(spec)
    tally.window_s += time.monotonic() - t0
    used = cpu_seconds(pids) - cpu0
    tally.cpu_s += used
    done = sum(1 for r in result.results if r.ok)
    if done:
        tally.round_cpu_ms.append(used * 1000 / done)
    tally.extra_cpu_s += cpu_seconds(extra_pids or []) - extra0
    tally.client_cpu_s += own_cpu() - client0
    tally.wall_s += result.wall_s
    tally.results.extend(result.results)


async def settle(service: Service, *, quiet: float = 0.05, max_s: float = 90.0) -> None:
    """Wait until ``service`` has worked off what the last round left it.

    An overloaded target (LiteLLM at 100 req/s) keeps serving requests its client gave up
    on long after the round; measured next, another target would share the cores with
    that backlog. Quiet: under ``quiet`` cores over half a second (the caller passes a
    little over the target's idle use).
    """
    pids = service.overhead_pids()
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pids)
        await asyncio.sleep(0.5)
        if (cpu_seconds(pids) - before) / 0.5 < quiet:
            return
    console.print(f"[yellow]{service.name} still busy {max_s:g} s after its round[/]")


async def idle_cpu(targets: list[tuple[Service, Service | None]],
                   seconds: float) -> dict[str, float]:
    """CPU seconds per second each target uses with no load, all measured together."""
    before = {s.name: cpu_seconds(s.overhead_pids()) for s, _ in targets}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    span = time.monotonic() - t0
    return {s.name: (cpu_seconds(s.overhead_pids()) - before[s.name]) / span
            for s, _ in targets}


def added(target: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for metric in ("ttft", "e2e"):
        for q in ("p50", "p99"):
            t, b = target["latency_ms"][metric], base["latency_ms"][metric]
            out[f"{metric}_{q}"] = t[q] - b[q] if t and b else None
    out["throughput_ratio"] = (target["tokens_per_s"] / base["tokens_per_s"]
                               if base["tokens_per_s"] else None)
    return out


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def comparison_table(rate: float, summaries: dict[str, dict[str, Any]],
                     deltas: dict[str, dict[str, float | None]]) -> Table:
    table = Table(title=f"{rate:g} req/s, open loop, 64-token streams (ms)")
    for col in ("target", "ok/sent", "TTFT p50", "TTFT p99", "e2e p50", "e2e p99",
                "+TTFT p50", "+TTFT p99", "+e2e p50", "+e2e p99", "tput ratio",
                "CPU ms/req", "rounds min-max", "net of idle"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for name, s in summaries.items():
        lat, d = s["latency_ms"], deltas.get(name, {})
        ttft, e2e = lat["ttft"] or {}, lat["e2e"] or {}
        table.add_row(name, f"{s['ok']}/{s['sent']}", _f(ttft.get("p50")), _f(ttft.get("p99")),
                      _f(e2e.get("p50")), _f(e2e.get("p99")), _f(d.get("ttft_p50")),
                      _f(d.get("ttft_p99")), _f(d.get("e2e_p50")), _f(d.get("e2e_p99")),
                      _f(d.get("throughput_ratio"), 3), _f(s["cpu_ms_per_request"], 3),
                      _spread(s["cpu_ms_per_request_by_round"]),
                      _f(s["net_cpu_ms_per_request"], 3))
    return table


def sustains(summary: dict[str, Any], planned_rate: float) -> bool:
    ttft = summary["latency_ms"]["ttft"]
    return (summary["ok"] == summary["sent"] and ttft is not None
            and ttft["p99"] < TTFT_SLO_MS and summary["requests_per_s"] >= 0.9 * planned_rate)


def ensure_litellm(venv: Path, install: bool) -> str:
    """The LiteLLM version in its venv, installing it first if allowed."""
    if not (venv / "bin" / "litellm").exists():
        if not install:
            raise RuntimeError(f"no LiteLLM in {venv} (run bench/litellm_setup.sh)")
        console.print(f"installing LiteLLM into {venv} (its own virtualenv)…")
        subprocess.run(["bash", str(BENCH / "litellm_setup.sh"), str(venv)], check=True,
                       stdout=subprocess.DEVNULL)
    return litellm_version(venv)


async def run(args: argparse.Namespace, targets: list[tuple[Service, Service | None]],
              extra: dict[str, list[int]]) -> dict[str, Any]:
    """targets: (service, its baseline engine or None for an engine itself)."""
    report: dict[str, Any] = {"rates": {}, "sweep": {}}
    warm = Tally()
    for service, _ in targets:  # warm-up: connections, caches, lazy imports
        await measure(service, warm, rate=args.rates[0], seconds=args.warmup_s, seed=999,
                      max_tokens=args.max_tokens, client=args.client)
    idle = await idle_cpu(targets, args.idle_s)
    for rate in args.rates:
        tallies = {s.name: Tally(idle_cpu_per_s=idle[s.name]) for s, _ in targets}
        for rnd in range(args.rounds):
            # Each round starts with another target, so drifts of the machine's load
            # spread over all of them; every target gets the same schedule in a round.
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for service, _ in order:
                await measure(service, tallies[service.name], rate=rate,
                              seconds=args.round_s, seed=rnd, max_tokens=args.max_tokens,
                              client=args.client, extra_pids=extra.get(service.name))
                await settle(service, quiet=max(0.05, 2 * idle[service.name]))
            console.print(f"{rate:g} req/s: round {rnd + 1}/{args.rounds} done; load average "
                          f"{loadavg()}")
        summaries = {name: t.summary() for name, t in tallies.items()}
        deltas = {s.name: added(summaries[s.name], summaries[b.name])
                  for s, b in targets if b is not None}
        console.print(comparison_table(rate, summaries, deltas))
        report["rates"][str(rate)] = {"summaries": summaries, "added_ms": deltas,
                                      "load_average": loadavg()}
    if args.sweep:
        alive = {s.name for s, _ in targets}
        misses: dict[str, int] = {}
        for rate in args.sweep:
            row: dict[str, Any] = {}
            for service, _ in targets:
                if service.name not in alive:
                    continue
                tally = Tally()
                await measure(service, tally, rate=rate, seconds=args.sweep_s, seed=7,
                              max_tokens=args.max_tokens, client=args.client)
                await settle(service, quiet=max(0.05, 2 * idle[service.name]))
                s = tally.summary()
                row[service.name] = {"ok": s["ok"], "sent": s["sent"],
                                     "ttft_p99_ms": (s["latency_ms"]["ttft"] or {}).get("p99"),
                                     "requests_per_s": s["requests_per_s"],
                                     "sustained": sustains(s, rate)}
                if not row[service.name]["sustained"]:
                    misses[service.name] = misses.get(service.name, 0) + 1
                    if misses[service.name] >= 2:  # two misses in a row: past its limit
                        alive.discard(service.name)
                else:
                    misses[service.name] = 0
            report["sweep"][str(rate)] = row
            console.print(f"sweep {rate:g} req/s: " + ", ".join(
                f"{n} {'ok' if v['sustained'] else 'MISS'} (p99 TTFT "
                f"{_f(v['ttft_p99_ms'])} ms)" for n, v in row.items()))
        report["max_sustained_rate"] = {
            s.name: max((float(r) for r, row in report["sweep"].items()
                         if row.get(s.name, {}).get("sustained")), default=None)
            for s, _ in targets}
        console.print(f"highest rate with p99 TTFT < {TTFT_SLO_MS:g} ms: "
                      f"{report['max_sustained_rate']}")
    return report


def check_targets(report: dict[str, Any], rate: float) -> dict[str, Any]:
    """The issue's targets, met or not, from the comparison at ``rate``."""
    at = report["rates"][str(rate)]
    d, s = at["added_ms"], at["summaries"]
    out: dict[str, Any] = {}
    up = d.get("wattpool-up")
    if up:
        out["up added TTFT p50 <= 1 ms"] = (up["ttft_p50"], up["ttft_p50"] <= 1.0)
        out["up added TTFT p99 <= 5 ms"] = (up["ttft_p99"], up["ttft_p99"] <= 5.0)
    for name in ("wattpool-up", "wattpool-nats"):
        cpu = s.get(name, {}).get("cpu_ms_per_request")
        net = s.get(name, {}).get("net_cpu_ms_per_request")
        if cpu is not None:
            out[f"{name} gateway+bridge CPU <= 2 ms/req"] = (cpu, cpu <= 2.0)
        if net is not None:
            out[f"{name} gateway+bridge CPU net of idle <= 2 ms/req"] = (net, net <= 2.0)
    lite = d.get("litellm")
    if lite and up:
        for metric in ("ttft_p99", "e2e_p99"):
            if lite[metric] and up[metric] is not None:
                ratio = up[metric] / lite[metric] if lite[metric] > 0 else None
                out[f"up added {metric} <= 1/2 LiteLLM's"] = (
                    ratio, ratio is not None and ratio <= 0.5)
        ours, theirs = (s["wattpool-up"]["cpu_ms_per_request"],
                        s["litellm"]["cpu_ms_per_request"])
        if ours and theirs:
            out["up CPU/req <= 1/2 LiteLLM's"] = (ours / theirs, ours / theirs <= 0.5)
    return out


def start_variant(spec: str, workdir: Path) -> UpPool | NatsPool:
    """``NAME=DIR[,uvloop][,nats][,WATTPOOL_X=V]``: `wattpool up` (or, with ``nats``, the
    NATS shape) with DIR/src first on the module path and the given settings."""
    name, _, rest = spec.partition("=")
    folder, *options = rest.split(",")
    src = Path(folder).resolve() / "src"
    settings = dict(o.split("=", 1) for o in options if "=" in o)
    flags = {o for o in options if "=" not in o}
    if (not name or not (src / "wattpool").is_dir() or flags - {"uvloop", "nats"}
            or any(not key.startswith("WATTPOOL_") for key in settings)):
        raise SystemExit(f"--variant {spec!r}: expected NAME=DIR[,uvloop][,nats]"
                         "[,WATTPOOL_X=V] with DIR/src/wattpool")
    env = {"PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
           **settings}
    prefix = UVLOOP_PREFIX if "uvloop" in flags else WATTPOOL
    pool: UpPool | NatsPool
    if "nats" in flags:
        pool = NatsPool(workdir / name, prefix=prefix, env=env)
    else:
        pool = UpPool(workdir / name, prefix=prefix, env=env)
    pool.name = name
    return pool


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="100", help="offered requests/s, comma-separated; "
                   "the comparison runs at each")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per target")
    p.add_argument("--round-s", type=float, default=10.0, help="seconds of load per round")
    p.add_argument("--warmup-s", type=float, default=3.0)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--client", choices=("auto", "lean", "httpx"), default="auto",
                   help="the load generator's HTTP client (see wattpool bench --help); "
                   "'httpx' measures as runs before the lean client did")
    p.add_argument("--idle-s", type=float, default=5.0,
                   help="seconds of no load to measure each target's idle CPU")
    p.add_argument("--paths", default="up,nats,litellm",
                   help="comma-separated: up, nats, litellm (engines are always measured)")
    p.add_argument("--sweep", default="", help="rates for the highest-sustained-rate search, "
                   "e.g. 100,200,300,400")
    p.add_argument("--sweep-s", type=float, default=6.0)
    p.add_argument("--litellm-venv", type=Path, default=BENCH / "out" / "litellm-venv")
    p.add_argument("--no-install", action="store_true", help="do not install LiteLLM")
    p.add_argument("--loop", choices=("default", "uvloop"), default="default",
                   help="start wattpool processes on uvloop through a wrapper (for "
                   "before/after figures of the event loop alone)")
    p.add_argument("--variant", action="append", default=[],
                   metavar="NAME=DIR[,uvloop][,nats][,WATTPOOL_X=V]",
                   help="also measure `wattpool up` (with ,nats: the NATS shape) run from "
                   "another source tree (DIR/src first on PYTHONPATH), e.g. a checkout of "
                   "the commit before a change, optionally with settings (e.g. "
                   ",WATTPOOL_LOOP_SLICE_US=0); repeatable. Gives before/after figures in "
                   "one interleaved run")
    p.add_argument("--workdir", type=Path, default=BENCH / "out" / "overhead-run")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "overhead.json")
    args = p.parse_args()
    args.sweep = [float(x) for x in args.sweep.split(",") if x.strip()]
    args.rates = [float(x) for x in args.rates.split(",") if x.strip()]
    args.paths = {x.strip() for x in args.paths.split(",") if x.strip()}
    return args


def main() -> int:
    args = parse_args()
    exit_on_sigterm()
    args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir / time.strftime("%Y%m%d-%H%M%S")
    prefix = UVLOOP_PREFIX if args.loop == "uvloop" else WATTPOOL
    meta: dict[str, Any] = {"argv": sys.argv, "load_before": loadavg(), "cpus": os.cpu_count(),
                            "client": args.client,
                            "loop": args.loop}
    started: list[Service] = []
    try:
        up = UpPool(workdir, prefix=prefix)
        started.append(up)
        engine = DirectEngine("engine", up.engine_pid, up.engine_url)
        targets: list[tuple[Service, Service | None]] = [(engine, None)]
        extra: dict[str, list[int]] = {}
        if "up" in args.paths:
            targets.append((up, engine))
        nats_engine: DirectEngine | None = None
        if "nats" in args.paths:
            nats = NatsPool(workdir, prefix=prefix)
            started.append(nats)
            nats_engine = DirectEngine("engine-nats", nats.engine_pid, nats.engine_url)
            targets += [(nats_engine, None), (nats, nats_engine)]
            extra[nats.name] = [nats.nats.pid]
        for variant in args.variant:
            pool = start_variant(variant, workdir)
            started.append(pool)
            if isinstance(pool, NatsPool):
                # Its own engine is the same synthetic one; the latencies are compared
                # with the NATS path's engine, as the NATS path's are.
                targets.append((pool, nats_engine or engine))
                extra[pool.name] = [pool.nats.pid]
            else:
                targets.append((pool, engine))
        if "litellm" in args.paths:
            try:
                meta["litellm_version"] = ensure_litellm(args.litellm_venv,
                                                         not args.no_install)
                lite = LiteLLMProxy(workdir, args.litellm_venv, up.engine_url)
                started.append(lite)
                targets.append((lite, engine))
            except Exception as exc:  # a peer we cannot run is reported, not fatal
                meta["litellm_error"] = f"{type(exc).__name__}: {exc}"
                console.print(f"[red]LiteLLM not measured:[/red] {meta['litellm_error']}")
        console.print(f"targets: {', '.join(s.name for s, _ in targets)}; load average "
                      f"{meta['load_before']}")
        report = loop.run(run(args, targets, extra))
    finally:
        for service in reversed(started):
            service.stop()
    meta["load_after"] = loadavg()
    report["meta"] = meta
    report["targets"] = {f"at {rate:g} req/s: {k}": {"value": v[0], "met": v[1]}
                         for rate in args.rates
                         for k, v in check_targets(report, rate).items()}
    for name, verdict in report["targets"].items():
        mark = "[green]met[/green]" if verdict["met"] else "[red]NOT met[/red]"
        console.print(f"{name}: {_f(verdict['value'], 3)} {mark}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"report: {args.out}  (load average {meta['load_before']} -> "
                  f"{meta['load_after']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
