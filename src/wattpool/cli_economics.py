"""Money commands: `wattpool operators`, `payouts`, `invoice` and `economics`.

Registered in cli.py; each command opens the store itself, like the tenant commands.
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from wattpool.cli_fleet import DataDirOpt, DbOpt, _console, _db, _settings, parse_duration

operators_app = typer.Typer(help="Operators: who runs sites and is paid for their tokens.",
                            no_args_is_help=True)

PeriodOpt = Annotated[str, typer.Option(help="A UTC month (2026-11) or day (2026-11-28).")]
CsvOpt = Annotated[Path | None, typer.Option(
    "--csv", help="Also write CSV here ('-' for standard output only).")]


def _fail(exc: Exception) -> None:
    _, err = _console()
    err.print(f"[red]{exc}[/red]")
    raise typer.Exit(1)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> bool:
    """Write rows; True when they went to standard output (then print nothing else)."""
    to_stdout = str(path) == "-"
    out = sys.stdout if to_stdout else path.open("w", newline="")
    try:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    finally:
        if not to_stdout:
            out.close()
    return to_stdout


# --- operators ---------------------------------------------------------------------


@operators_app.command("add")
def operators_add(name: str, data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """Add an operator."""
    from wattpool.store import ledger

    console, _ = _console()
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        row = ledger.add_operator(engine, name)
    except ledger.LedgerError as exc:
        _fail(exc)
    finally:
        engine.dispose()
    console.print(f"operator [bold]{row.name}[/bold] added ({row.id})")


@operators_app.command("assign-site")
def operators_assign_site(
    site: str,
    operator: Annotated[str | None, typer.Option(help="Owner of the site; omit to unassign.")]
    = None,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Make an operator own a site: its nodes' earnings go to the operator from now on."""
    from wattpool.store import ledger

    console, _ = _console()
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        ledger.assign_site(engine, site, operator)
    except ledger.LedgerError as exc:
        _fail(exc)
    finally:
        engine.dispose()
    console.print(f"site {site} -> {operator or 'no operator'}")


@operators_app.command("list")
def operators_list(data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """List operators, their sites and what the pool owes them now."""
    from wattpool.economics.ledger import operator_payable, operator_pending
    from wattpool.economics.statements import usd
    from wattpool.store import ledger

    console, _ = _console()
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        ops = ledger.list_operators(engine)
        sites = ledger.site_operators(engine)
        bal = ledger.balances(engine, prefix="operator:")
    finally:
        engine.dispose()
    table = Table("name", "id", "sites", "pending USD", "payable USD", title="operators")
    for o in ops:
        owned = ",".join(sorted(s for s, op in sites.items() if op == o.name)) or "-"
        table.add_row(o.name, o.id, owned, usd(-bal.get(operator_pending(o.id), 0)),
                      usd(-bal.get(operator_payable(o.id), 0)))
    console.print(table)


@operators_app.command("sync")
def operators_sync(
    pool_fee: Annotated[str, typer.Option(help="Pool fee, percent of each charge.")] = "20",
    reserve: Annotated[str, typer.Option(help="Reserve, percent of each charge.")] = "5",
    late_weight: Annotated[str, typer.Option(
        help="Percent of the operator share paid when TTFT misses the target.")] = "50",
    ttft_target_ms: Annotated[float, typer.Option(help="Latency target (interactive).")]
    = 2000.0,
    window: Annotated[str, typer.Option(help="Challenge window, e.g. 24h.")] = "24h",
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Post priced usage to the ledger and mature credit whose window has ended."""
    from wattpool.economics.payouts import PayoutPolicy
    from wattpool.store import ledger

    console, _ = _console()
    try:
        policy = PayoutPolicy.from_percent(pool_fee=pool_fee, reserve=reserve,
                                           late_weight=late_weight,
                                           ttft_target_ms=ttft_target_ms,
                                           challenge_window=parse_duration(window))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        posted = total = 0
        while posted := ledger.post_unposted_usage(engine, policy, limit=1000):
            total += posted
        matured = ledger.mature_due(engine, datetime.now(UTC))
    finally:
        engine.dispose()
    console.print(f"charged {total} request(s); matured {matured.charges} charge(s), "
                  f"{matured.micros / 1e6:.6f} USD now payable")


# --- statements ----------------------------------------------------------------------


def payouts(
    operator: Annotated[str, typer.Option(help="Operator name.")],
    period: PeriodOpt,
    csv_path: CsvOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
) -> None:
    """An operator's statement: earned, fees, clawbacks, pending and payable."""
    from wattpool.economics.statements import parse_period, usd
    from wattpool.store import ledger

    console, _ = _console()
    try:
        span = parse_period(period)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        st = ledger.operator_statement(engine, operator, span)
    except ledger.LedgerError as exc:
        _fail(exc)
    finally:
        engine.dispose()
    rows = [[st.operator, span.label, name, "", usd(m), str(m)] for name, m in st.lines()]
    rows += [[st.operator, span.label, "node earned", n.node_id, usd(n.earned_micros),
              str(n.earned_micros)] for n in st.nodes]
    if csv_path is not None and _write_csv(
            csv_path, ["operator", "period", "line", "node", "usd", "micros"], rows):
        return
    table = Table("", "USD", title=f"statement of {st.operator} for {span.label} "
                  f"({st.requests} requests)")
    for name, micros in st.lines():
        table.add_row(name, usd(micros))
    console.print(table)
    nodes = Table("node", "requests", "charged USD", "earned USD", "late", "clawed back",
                  title="by node")
    for n in st.nodes:
        nodes.add_row(n.node_id, str(n.requests), usd(n.gross_micros), usd(n.earned_micros),
                      str(n.late_requests), str(n.clawed_back_requests))
    console.print(nodes)


def invoice(
    tenant: Annotated[str, typer.Option(help="Tenant name.")],
    period: PeriodOpt,
    csv_path: CsvOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
) -> None:
    """A tenant's invoice: usage per model and class, refunds, total due."""
    from wattpool.economics.statements import parse_period, usd
    from wattpool.store import ledger
    from wattpool.store.tenants import TenantError

    console, err = _console()
    try:
        span = parse_period(period)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        inv = ledger.tenant_invoice(engine, tenant, span)
    except TenantError as exc:
        _fail(exc)
    finally:
        engine.dispose()
    header = ["tenant", "period", "model", "class", "requests", "prompt_tokens",
              "completion_tokens", "usd"]
    rows = [[inv.tenant, span.label, ln.model_id, ln.priority_class, str(ln.requests),
             str(ln.prompt_tokens), str(ln.completion_tokens), usd(ln.amount_micros)]
            for ln in inv.lines]
    rows.append([inv.tenant, span.label, "refunds", "", "", "", "", usd(-inv.refunds_micros)])
    rows.append([inv.tenant, span.label, "total", "", "", "", "", usd(inv.total_micros)])
    if csv_path is not None and _write_csv(csv_path, header, rows):
        return
    table = Table(*header[2:], title=f"invoice of {inv.tenant} for {span.label}")
    for r in rows:
        table.add_row(*r[2:])
    console.print(table)
    if inv.unposted_micros:
        err.print(f"note: {usd(inv.unposted_micros)} USD of this usage is not in the ledger "
                  "yet ('wattpool operators sync' posts it)")


# --- mine or infer -------------------------------------------------------------------


def _day(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        raise typer.BadParameter(f"dates look like 2020-01-15, not {text!r}") from None


def _price_files(price_csv: Path | None, region: str | None, site: str | None,
                 start: datetime | None, end: datetime | None, data_dir: Path | None,
                 database_url: str | None) -> tuple[list[Path], str, float | None]:
    """The price files to read, a label for the series, and the site's power cap (kW)."""
    from wattpool.economics.prices import region_files

    label = region or "prices"
    cap_kw: float | None = None
    if site is not None:
        from wattpool.store.fleet import FleetError, get_site

        engine = _db(_settings(data_dir=data_dir, database_url=database_url))
        try:
            row = get_site(engine, site)
        except FleetError as exc:
            _fail(exc)
        finally:
            engine.dispose()
        region, label = region or row.region, f"site {row.name} ({row.region})"
        cap_kw = row.power_cap_kw
        # A site whose price source is a CSV series needs no --price-csv.
        source = row.price_source
        if price_csv is None and isinstance(source, dict) and source.get("kind") == "csv":
            price_csv = Path(str(source["path"])).expanduser()
    if price_csv is None:
        raise typer.BadParameter("give --price-csv (a price CSV, or a greendcc 'processed' "
                                 "folder with --region), or give the site a CSV price "
                                 "source (wattpool sites set NAME --price-csv ...)")
    if not price_csv.is_dir():
        return [price_csv], label, cap_kw
    if region is None or start is None:
        raise typer.BadParameter("with a folder, give --region and --start (and --end)")
    last = (end - timedelta(seconds=1)) if end else start
    return region_files(price_csv, region, range(start.year, last.year + 1)), label, cap_kw


def economics(
    site: Annotated[str | None, typer.Option(help="Site whose region/prices to use.")] = None,
    price_csv: Annotated[Path | None, typer.Option(
        help="Price CSV (timestamp, USD/MWh), or a greendcc 'processed' folder.")] = None,
    region: Annotated[str | None, typer.Option(help="Region, e.g. US-TEX-ERCO.")] = None,
    start: Annotated[str | None, typer.Option(help="First day (UTC), 2020-01-01.")] = None,
    end: Annotated[str | None, typer.Option(help="Day after the last (UTC).")] = None,
    minutes: Annotated[int, typer.Option(help="Decision interval, minutes.")] = 15,
    site_kw: Annotated[float | None, typer.Option(
        help="Site power budget, kW (default: the site's power cap, else 1000).")] = None,
    bitcoin_dir: Annotated[Path | None, typer.Option(
        help="Folder with minersrevenue.csv, hashrate.csv, efficiency.csv.")] = None,
    hashprice: Annotated[float | None, typer.Option(
        help="Fixed hashprice, USD per TH/s per day (instead of --bitcoin-dir).")] = None,
    asic_j_per_th: Annotated[float | None, typer.Option(
        help="ASIC efficiency, J/TH (default: median of the 12 months before the start "
             "in efficiency.csv).")] = None,
    mining_fee_pct: Annotated[float, typer.Option(help="Bitcoin pool fee, percent.")] = 0.0,
    tokens_per_s: Annotated[float, typer.Option(help="Output tokens/s per GPU, full load.")]
    = 111.74,
    gpu_watts: Annotated[float, typer.Option(help="Watts per GPU at full load.")] = 350.0,
    idle_watts: Annotated[float, typer.Option(help="Watts per GPU when idle.")] = 30.0,
    usd_per_mtok: Annotated[float, typer.Option(help="Tenant price, USD per Mtok.")] = 0.20,
    utilisation: Annotated[float, typer.Option(help="Share of throughput sold, 0-1.")] = 0.5,
    payout_pct: Annotated[float, typer.Option(help="Operator share of the price, %.")] = 75.0,
    out: Annotated[Path, typer.Option(help="Folder for decisions.jsonl and the PNG.")]
    = Path("wattpool-economics"),
    plot: Annotated[bool, typer.Option(help="Write mine_or_infer.png.")] = True,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Per interval: does the site's power earn more mining bitcoin or serving tokens?"""
    from wattpool.economics import bitcoin, mine_or_infer, prices

    console, _ = _console()
    first, stop = _day(start), _day(end)
    files, label, cap_kw = _price_files(price_csv, region, site, first, stop, data_dir,
                                        database_url)
    site_kw = site_kw or cap_kw or 1000.0
    try:
        points = [p for f in files for p in prices.load_prices(f)]
        series = prices.to_intervals(points, minutes, first, stop)
        if hashprice is not None:
            def hashprice_at(_: datetime) -> float:
                return hashprice
        elif bitcoin_dir is not None:
            hashprice_at = bitcoin.hashprice_lookup(bitcoin.load_hashprice(bitcoin_dir))
        else:
            raise typer.BadParameter("give --bitcoin-dir or --hashprice")
        j_per_th = asic_j_per_th
        if j_per_th is None:
            if bitcoin_dir is None:
                raise typer.BadParameter("give --asic-j-per-th or --bitcoin-dir")
            j_per_th = bitcoin.asic_j_per_th(bitcoin.load_efficiency(bitcoin_dir),
                                             series[0][0].date().replace(day=1))
        inference = mine_or_infer.InferenceParams(tokens_per_s, gpu_watts, idle_watts,
                                                  usd_per_mtok, payout_pct / 100, utilisation)
        decisions = mine_or_infer.decide_series(
            series, minutes=minutes, site_kw=site_kw, hashprice_at=hashprice_at,
            asic_j_per_th=j_per_th, inference=inference, mining_pool_fee=mining_fee_pct / 100)
    except (prices.PriceDataError, bitcoin.BitcoinDataError, ValueError) as exc:
        _fail(exc)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "decisions.jsonl"
    with log_path.open("w") as f:
        for d in decisions:
            f.write(json.dumps(d.to_log(), separators=(",", ":")) + "\n")
    s = mine_or_infer.summarize(decisions)
    span = f"{series[0][0]:%Y-%m-%d %H:%M} to {series[-1][0]:%Y-%m-%d %H:%M} UTC"
    table = Table("", "value", title=f"mine or infer: {label}, {span}")
    for name, value in [
        ("intervals", f"{s.intervals} x {minutes} min"),
        ("power price USD/MWh (min / mean / max)",
         f"{s.price_min:.2f} / {s.price_mean:.2f} / {s.price_max:.2f}"),
        ("ASIC efficiency", f"{j_per_th:.1f} J/TH"),
        ("chose mine / infer / idle",
         f"{s.counts['mine']} / {s.counts['infer']} / {s.counts['idle']}"),
        ("margin following the decisions", f"{s.chosen_micros / 1e6:,.2f} USD"),
        ("margin mining always", f"{s.always_mine_micros / 1e6:,.2f} USD"),
        ("margin inferring always", f"{s.always_infer_micros / 1e6:,.2f} USD"),
        ("energy drawn", f"{s.energy_mwh:,.1f} MWh"),
    ]:
        table.add_row(name, value)
    console.print(table)
    console.print(f"decisions: {log_path}")
    if plot:
        from wattpool.economics.plot import plot_decisions

        try:
            png = plot_decisions(decisions, out / "mine_or_infer.png",
                                 f"mine or infer: {label}, {span}")
        except RuntimeError as exc:
            _fail(exc)
        console.print(f"plot: {png}")
