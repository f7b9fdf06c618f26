"""``wattpool sim``: simulate a fleet under every routing policy, side by side.

Registered in ``wattpool.cli``. Reads the shipped
fixtures unless ``--data`` names another folder (e.g. ../shared/data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from wattpool.policy.baselines import POLICY_NAMES
from wattpool.sim.metrics import Slo
from wattpool.sim.runner import (
    TABLE_HEADER,
    RunSpec,
    describe,
    policy_names,
    prepare,
    run,
    table_rows,
    write_report,
)
from wattpool.sim.types import SimConfig

console = Console()


def sim(
    sites: Annotated[int, typer.Option(min=1, help="Sites in the generated fleet.")] = 100,
    duration: Annotated[float, typer.Option(min=1.0, help="Simulated seconds of arrivals.")
                        ] = 3600.0,
    load: Annotated[float, typer.Option(min=0.0, help="Offered load as a share of the fleet's "
                                        "estimated capacity (uncached prompts).")] = 0.7,
    rate: Annotated[float | None, typer.Option(min=0.0, help="Requests per second instead of "
                                               "--load.")] = None,
    policies: Annotated[str, typer.Option(help="Comma-separated policies to compare.")
                        ] = ",".join(POLICY_NAMES),
    data: Annotated[Path | None, typer.Option(help="Data folder: ../shared/data or one laid "
                                              "out like the shipped fixtures.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of fleet, workload, faults and sampling.")
                    ] = 0,
    out: Annotated[Path, typer.Option(help="Folder for report.json and the PNG plots.")
                   ] = Path("sim-report"),
    plots: Annotated[bool, typer.Option(help="Write PNG plots (needs matplotlib).")] = True,
    faults: Annotated[bool, typer.Option(help="Failures, curtailment, flaky sites.")] = True,
    shared_prefixes: Annotated[bool, typer.Option(help="Chat shares system prompts and "
                                                  "history.")] = True,
    ttft_slo: Annotated[float, typer.Option(help="TTFT bound for goodput, seconds.")] = 5.0,
    tpot_slo: Annotated[float, typer.Option(help="TPOT bound for goodput, seconds.")] = 0.2,
    start_hour: Annotated[float, typer.Option(help="Hour of the price week at t=0 "
                                              "(0 = 2023-08-07 00:00 UTC).")] = 47.5,
    shards: Annotated[int, typer.Option(min=1, help="Processes per policy run: 1 is exact; "
                                        "more split the fleet and its demand (faster, an "
                                        "approximation: docs/simulator.md).")] = 1,
) -> None:
    """Simulate a fleet of GPU sites serving the Azure trace under each routing policy."""
    try:
        names = policy_names(policies)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--policies") from None
    spec = RunSpec(sites=sites, policies=names, load=load, rate=rate, duration_s=duration,
                   seed=seed, shared=shared_prefixes, data=data,
                   slo=Slo(ttft_slo, tpot_slo),
                   sim=SimConfig(faults=faults, start_hour=start_hour), shards=shards)
    try:
        setup = prepare(spec)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        console.print(f"[red]cannot read the data:[/red] {exc}")
        raise typer.Exit(2) from None
    info = describe(setup)
    console.print(f"{info['fleet']['sites']} sites, {info['fleet']['instances']} instances, "
                  f"{info['workload']['requests']} requests at "
                  f"{info['workload']['rate_rps']:.1f}/s "
                  f"(load {info['workload']['offered_load']:.2f})")
    columns = (TextColumn("{task.description:18s}"), BarColumn(), TextColumn(
        "{task.percentage:>5.1f}%"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        tasks = {name: progress.add_task(name, total=1.0) for name in names}
        report = run(spec, lambda name, frac: progress.update(tasks[name], completed=frac),
                     setup=setup)
    table = Table(*TABLE_HEADER)
    for row in table_rows(report):
        table.add_row(*row)
    console.print(table)
    for key, value in report["comparison"].items():
        if key != "targets":
            console.print(f"  {key}: {value}")
    for name, problems in report["invariants"].items():
        for problem in problems:
            console.print(f"[red]invariant broken ({name}):[/red] {problem}")
    try:
        written = write_report(report, out, plots=plots)
    except ImportError as exc:
        console.print(f"[yellow]{exc}[/yellow]")
        written = write_report(report, out, plots=False)
    console.print("wrote " + ", ".join(str(p) for p in written))
    if any(report["invariants"].values()):
        raise typer.Exit(1)


sim_app = typer.Typer(help="Simulate fleets over the routing policies.", add_completion=False)
sim_app.command("sim")(sim)
