"""`wattpool sites ...` (sites and their power) and `wattpool route --explain`.

Site settings are written to the pool's database directly, like `tokens create`; the
running pool picks them up within `WATTPOOL_POWER_POLL_S`. Curtail, resume and route go
through a gateway's admin API, because they act on (or ask) the live pool.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from wattpool.cli_fleet import (
    AdminKeyOpt,
    DataDirOpt,
    DbOpt,
    GatewayOpt,
    _admin_post,
    _console,
    _db,
    _settings,
    parse_duration,
)

sites_app = typer.Typer(help="Sites: places that run nodes, and their power (operator side).",
                        no_args_is_help=True)

CapOpt = Annotated[float | None, typer.Option(
    "--power-cap-kw", help="Most power the site may draw, kW.")]
CsvOpt = Annotated[Path | None, typer.Option(
    "--price-csv", help="Price source: a CSV time series (timestamp, price per MWh).")]
ColumnOpt = Annotated[str | None, typer.Option(
    "--price-column", help="The CSV column holding the price (default: the second).")]
ScheduleOpt = Annotated[str | None, typer.Option(
    "--price-schedule", help="Price source: a price per UTC hour, e.g. '0=40,7=95,20=60'.")]
UrlOpt = Annotated[str | None, typer.Option(
    "--price-url", help="Price source: an HTTP JSON endpoint, polled.")]
FieldOpt = Annotated[str, typer.Option(
    "--price-field", help="The JSON field holding the price (with --price-url).")]
EveryOpt = Annotated[str, typer.Option(
    "--price-every", help="How often to poll --price-url, e.g. 5m.")]
ThresholdOpt = Annotated[float | None, typer.Option(
    "--curtail-above", help="Curtail when the price (per MWh) rises above this.")]
DrOpt = Annotated[list[str] | None, typer.Option(
    "--dr", help="A demand-response commitment NAME=DEADLINE, e.g. ercot-ers-10=10m "
                 "(repeatable).")]


def _price_source(csv_path: Path | None, column: str | None, schedule: str | None,
                  url: str | None, field: str, every: str) -> dict[str, Any] | None:
    given = [x for x in (csv_path, schedule, url) if x]
    if len(given) > 1:
        raise typer.BadParameter("give one of --price-csv, --price-schedule, --price-url")
    if csv_path:
        source: dict[str, Any] = {"kind": "csv", "path": str(csv_path.expanduser().resolve())}
        if column:
            source["column"] = column
        return source
    if schedule:
        prices: dict[str, float] = {}
        for part in schedule.split(","):
            hour, sep, price = part.partition("=")
            try:
                prices[str(int(hour))] = float(price)
            except ValueError:
                raise typer.BadParameter(f"{part!r}: use HOUR=PRICE, like 7=95") from None
            if not sep:
                raise typer.BadParameter(f"{part!r}: use HOUR=PRICE, like 7=95")
        return {"kind": "schedule", "prices": prices}
    if url:
        return {"kind": "http", "url": url, "field": field,
                "every_s": parse_duration(every).total_seconds()}
    return None


def _commitments(specs: list[str] | None) -> list[Any] | None:
    from wattpool.store.fleet import DrCommitment

    if not specs:
        return None
    out = []
    for spec in specs:
        name, sep, deadline = spec.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{spec!r}: use NAME=DEADLINE, like ercot-ers-10=10m")
        out.append(DrCommitment(name.strip(), parse_duration(deadline).total_seconds()))
    return out


def _power_changes(cap: float | None, source: dict[str, Any] | None,
                   threshold: float | None, commitments: list[Any] | None,
                   clear_price: bool = False) -> dict[str, Any]:
    """The power settings that were given, as ``store.fleet`` keywords; a price source is
    checked here (it reads files and URLs, which the store does not)."""
    from wattpool.control.power import check_price_source

    changes: dict[str, Any] = {}
    if cap is not None:
        changes["power_cap_kw"] = cap
    if source is not None:
        check_price_source(source)
        changes["price_source"] = source
    elif clear_price:
        changes["price_source"] = None
    if threshold is not None:
        changes["curtail_above"] = threshold
    if commitments is not None:
        changes["dr_commitments"] = commitments
    return changes


@sites_app.command("add")
def sites_add(
    name: str,
    region: Annotated[str, typer.Option(help="Region of the site, e.g. us-tx.")],
    power_cap_kw: CapOpt = None, price_csv: CsvOpt = None, price_column: ColumnOpt = None,
    price_schedule: ScheduleOpt = None, price_url: UrlOpt = None,
    price_field: FieldOpt = "price", price_every: EveryOpt = "5m",
    curtail_above: ThresholdOpt = None, dr: DrOpt = None,
    data_dir: DataDirOpt = None, database_url: DbOpt = None,
) -> None:
    """Register a site, with its power settings if given."""
    from wattpool.control.power import PriceSourceError
    from wattpool.store.fleet import FleetError, add_site

    console, err = _console()
    source = _price_source(price_csv, price_column, price_schedule, price_url, price_field,
                           price_every)
    commitments = _commitments(dr)
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        site = add_site(engine, name, region,
                        **_power_changes(power_cap_kw, source, curtail_above, commitments))
    except (FleetError, PriceSourceError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    console.print(f"site [bold]{site.name}[/bold] ({site.region}) added as {site.id}")


@sites_app.command("set")
def sites_set(
    name: str,
    power_cap_kw: CapOpt = None, price_csv: CsvOpt = None, price_column: ColumnOpt = None,
    price_schedule: ScheduleOpt = None, price_url: UrlOpt = None,
    price_field: FieldOpt = "price", price_every: EveryOpt = "5m",
    no_price: Annotated[bool, typer.Option("--no-price", help="Remove the price source.")]
    = False,
    curtail_above: ThresholdOpt = None, dr: DrOpt = None,
    data_dir: DataDirOpt = None, database_url: DbOpt = None,
) -> None:
    """Change a site's power settings (what is not given stays as it is)."""
    from wattpool.control.power import PriceSourceError
    from wattpool.store.fleet import FleetError, set_site_power

    console, err = _console()
    source = _price_source(price_csv, price_column, price_schedule, price_url, price_field,
                           price_every)
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        set_site_power(engine, name, **_power_changes(
            power_cap_kw, source, curtail_above, _commitments(dr), clear_price=no_price))
    except (FleetError, PriceSourceError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    console.print(f"site [bold]{name}[/bold] updated; the pool applies it within its power "
                  "poll period")


@sites_app.command("list")
def sites_list(data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """List sites."""
    from wattpool.store.fleet import active_curtailments, list_sites

    console, _ = _console()
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        curtailed = {c.site_id for c in active_curtailments(engine)}
        table = Table("name", "region", "cap kW", "curtail above", "state", "id", title="sites")
        for site in list_sites(engine):
            table.add_row(site.name, site.region, _num(site.power_cap_kw),
                          _num(site.curtail_above),
                          "curtailed" if site.id in curtailed else "on", site.id)
    finally:
        engine.dispose()
    console.print(table)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _describe_source(source: dict[str, Any] | None) -> str:
    if not source:
        return "none"
    kind = source.get("kind")
    if kind == "csv":
        return f"csv {source['path']}" + (f" [{source['column']}]" if "column" in source else "")
    if kind == "schedule":
        return "schedule " + ", ".join(f"{h}h={p:g}" for h, p in source["prices"].items())
    return f"http {source.get('url')} field {source.get('field', 'price')} every " \
           f"{source.get('every_s', 300):g}s"


@sites_app.command("show")
def sites_show(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDirOpt = None, database_url: DbOpt = None,
) -> None:
    """A site's power settings, its price now, and its curtailments."""
    from wattpool.control.power import PriceFeed, PriceSourceError
    from wattpool.policy.power import should_curtail
    from wattpool.store.fleet import FleetError, curtailment_history, get_site

    console, err = _console()
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        site = get_site(engine, name)
        history = curtailment_history(engine, site.id, 5)
    except FleetError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    price: float | None = None
    price_error = None
    if site.price_source:
        try:
            price = asyncio.run(PriceFeed(site.price_source).current())
        except (PriceSourceError, OSError, KeyError, ValueError) as exc:
            price_error = str(exc)
    open_one = next((c for c in history if c.ended_at is None), None)
    if as_json:
        out = {
            "name": site.name, "id": site.id, "region": site.region,
            "power_cap_kw": site.power_cap_kw, "price_source": site.price_source,
            "curtail_above": site.curtail_above, "price_now": price,
            "price_error": price_error,
            "dr_commitments": [{"name": c.name, "within_s": c.within_s}
                               for c in site.dr_commitments],
            "curtailed": open_one is not None,
            "curtailments": [{"cause": c.cause, "reason": c.reason, "within_s": c.within_s,
                              "started_at": c.started_at.isoformat(),
                              "ended_at": c.ended_at.isoformat() if c.ended_at else None}
                             for c in history],
        }
        typer.echo(json.dumps(out, indent=2))
        return
    table = Table(show_header=False, title=f"site {site.name}")
    table.add_row("id", site.id)
    table.add_row("region", site.region)
    table.add_row("power cap", f"{site.power_cap_kw:g} kW" if site.power_cap_kw else "-")
    table.add_row("price source", _describe_source(site.price_source))
    now = "-" if price is None else f"{price:g} per MWh"
    if price_error:
        now = f"[red]unreadable: {price_error}[/red]"
    elif price is not None and should_curtail(price, site.curtail_above, False):
        now += " [yellow](above the threshold)[/yellow]"
    table.add_row("price now", now)
    table.add_row("curtail above", f"{site.curtail_above:g} per MWh"
                  if site.curtail_above is not None else "-")
    table.add_row("demand response", ", ".join(
        f"{c.name} (shed within {c.within_s:g}s)" for c in site.dr_commitments) or "-")
    state = "on"
    if open_one is not None:
        state = (f"[yellow]curtailed[/yellow] since {open_one.started_at:%Y-%m-%d %H:%M:%S} "
                 f"UTC ({open_one.cause}: {open_one.reason})")
    table.add_row("state", state)
    console.print(table)
    ended = [c for c in history if c.ended_at is not None]
    if ended:
        console.print("recent curtailments:")
        for c in ended:
            console.print(f"  {c.started_at:%Y-%m-%d %H:%M} to {c.ended_at:%H:%M} "
                          f"({c.cause}: {c.reason})")


@sites_app.command("curtail")
def sites_curtail(
    name: str,
    within: Annotated[str | None, typer.Option(
        help="Deadline to shed the load, e.g. 60s, 10m (default 60s).")] = None,
    program: Annotated[str | None, typer.Option(
        help="A demand-response programme of the site: its deadline applies.")] = None,
    reason: Annotated[str | None, typer.Option(help="Why (logged).")] = None,
    url: GatewayOpt = "http://127.0.0.1:8000",
    key: AdminKeyOpt = None,
) -> None:
    """Curtail a site: its nodes take no new work, move their streams elsewhere, idle."""
    console, _ = _console()
    body: dict[str, object] = {}
    if within is not None and program is not None:
        raise typer.BadParameter("give --within or --program, not both")
    if within is not None:
        body["within_s"] = parse_duration(within).total_seconds()
    if program is not None:
        body["program"] = program
    if reason:
        body["reason"] = reason
    out = _admin_post(url, key, f"/admin/sites/{name}/curtail", body)
    console.print(f"site {out['site']} curtailed within {out['within_s']:.0f}s")


@sites_app.command("resume")
def sites_resume(name: str, url: GatewayOpt = "http://127.0.0.1:8000",
                 key: AdminKeyOpt = None) -> None:
    """End a site's curtailment: its nodes load their engines and take work again."""
    console, _ = _console()
    _admin_post(url, key, f"/admin/sites/{name}/resume", {})
    console.print(f"site {name} resumes")


def route(
    model: Annotated[str, typer.Option(help="The model a request would ask for.")],
    prompt: Annotated[str, typer.Option(help="The prompt (prefix affinity uses it).")] = "",
    max_tokens: Annotated[int | None, typer.Option(help="Expected output length.")] = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Show every candidate's scores and why others were dropped.")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")]
    = False,
    url: GatewayOpt = "http://127.0.0.1:8000",
    key: AdminKeyOpt = None,
) -> None:
    """Where the pool would send a request now, and why. Sends nothing to any node."""
    console, _ = _console()
    body: dict[str, object] = {"model": model, "prompt": prompt}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    out = _admin_post(url, key, "/admin/route", body)
    if as_json:
        typer.echo(json.dumps(out["decision"], indent=2))
    elif explain:
        console.print(out["text"], markup=False, highlight=False)
    else:
        chosen = out["decision"].get("chosen")
        console.print(chosen or f"nothing: {out['decision'].get('reason')}", markup=False)
