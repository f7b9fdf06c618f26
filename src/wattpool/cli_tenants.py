"""Tenant commands: `wattpool tenants`, `keys`, `prices`, `usage` (operator side)."""

from __future__ import annotations

import csv
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from wattpool.cli_fleet import DataDirOpt, DbOpt, _console, _db, _settings, parse_duration

tenants_app = typer.Typer(help="Tenants: the businesses that call the API.",
                          no_args_is_help=True)
keys_app = typer.Typer(help="API keys of tenants (shown once, stored hashed).",
                       no_args_is_help=True)
prices_app = typer.Typer(help="The price book: USD per million tokens, per model.",
                         no_args_is_help=True)


def _fail(exc: Exception) -> None:
    _, err = _console()
    err.print(f"[red]{exc}[/red]")
    raise typer.Exit(1)


def _micros(usd: str | None) -> int | None:
    return None if usd is None else int((Decimal(usd) * 1_000_000).to_integral_value())


@tenants_app.command("add")
def tenants_add(
    name: str,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute, all keys together.")]
    = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (prompt + completion).")]
    = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests at once.")] = None,
    budget: Annotated[str | None, typer.Option(help="Spend limit in USD per period.")] = None,
    period: Annotated[str, typer.Option(help="Budget period: day or month (UTC).")] = "month",
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Add a tenant with optional limits and budget."""
    from wattpool.store import tenants as t

    console, _ = _console()
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        row = t.add_tenant(engine, name, rpm=rpm, tpm=tpm, max_concurrency=concurrency,
                           budget_micros=_micros(budget), budget_period=period)
    except t.TenantError as exc:
        _fail(exc)
    finally:
        engine.dispose()
    console.print(f"tenant [bold]{row.name}[/bold] added ({row.id})")


@tenants_app.command("list")
def tenants_list(data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """List tenants and their limits."""
    from wattpool.store import tenants as t

    console, _ = _console()
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        rows = t.list_tenants(engine)
    finally:
        engine.dispose()
    table = Table("name", "rpm", "tpm", "concurrency", "budget USD", "period", title="tenants")
    for r in rows:
        table.add_row(r.name, str(r.rpm or "-"), str(r.tpm or "-"),
                      str(r.max_concurrency or "-"),
                      f"{r.budget_micros / 1e6:.2f}" if r.budget_micros is not None else "-",
                      r.budget_period)
    console.print(table)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to.")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    models: Annotated[str | None, typer.Option(
        help="Allowed model ids, comma-separated (default all).")] = None,
    expires: Annotated[str | None, typer.Option(help="Lifetime, e.g. 30d or 12h.")] = None,
    default_class: Annotated[str, typer.Option(
        "--class", help="Default priority: interactive or batch (cheaper, may wait).")]
    = "interactive",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute for this key.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute for this key.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests at once.")] = None,
    admin: Annotated[bool, typer.Option(help="May use the admin API.")] = False,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from wattpool.store import tenants as t

    console, err = _console()
    expires_at = datetime.now(UTC) + parse_duration(expires) if expires else None
    model_list = [m.strip() for m in models.split(",") if m.strip()] if models else None
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        full, row = t.create_key(engine, tenant, name=name, models=model_list,
                                 expires_at=expires_at, default_class=default_class,
                                 rpm=rpm, tpm=tpm, max_concurrency=concurrency,
                                 is_admin=admin)
    except t.TenantError as exc:
        _fail(exc)
    finally:
        engine.dispose()
    err.print(f"key {row.id} for tenant {tenant} (shown only now):")
    console.print(full, markup=False, highlight=False, soft_wrap=True)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="Key id (key_…) or prefix (wpk_…).")],
                data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """Revoke a key; every gateway refuses it within a second."""
    from wattpool.store import tenants as t

    console, _ = _console()
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        row = t.revoke_key(engine, key)
    except t.TenantError as exc:
        _fail(exc)
    finally:
        engine.dispose()
    console.print(f"key {row.prefix}… ({row.id}) revoked")


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")]
              = None, data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """List keys (prefixes only; full keys are never stored)."""
    from wattpool.store import tenants as t

    console, _ = _console()
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        rows = t.list_keys(engine, tenant)
    finally:
        engine.dispose()
    table = Table("prefix", "id", "name", "models", "class", "expires", "revoked", title="keys")
    for r in rows:
        table.add_row(r.prefix, r.id, r.name, ",".join(r.models) if r.models else "all",
                      r.default_class, f"{r.expires_at:%Y-%m-%d %H:%M}" if r.expires_at else "-",
                      f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "-")
    console.print(table)


@prices_app.command("set")
def prices_set(
    model: str,
    prompt: Annotated[str, typer.Option(help="USD per million prompt tokens.")],
    completion: Annotated[str, typer.Option(help="USD per million completion tokens.")],
    batch_discount: Annotated[int, typer.Option(help="Percent off for the batch class.")] = 0,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Set a model's price."""
    from wattpool.store import tenants as t

    console, _ = _console()
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        row = t.set_price(engine, model, prompt, completion, batch_discount)
    except (t.TenantError, ArithmeticError, ValueError) as exc:
        _fail(exc)
    finally:
        engine.dispose()
    console.print(f"{row.model_id}: ${row.prompt_micros_per_mtok / 1e6} prompt, "
                  f"${row.completion_micros_per_mtok / 1e6} completion per Mtok, "
                  f"batch -{row.batch_discount_pct}%")


def usage(
    tenant: Annotated[str, typer.Option(help="Tenant name.")],
    since: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD (default: 30 days "
                                              "ago).")] = None,
    until: Annotated[str | None, typer.Option(help="Last day, YYYY-MM-DD.")] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Also write CSV here ('-' "
                                                  "for standard output).")] = None,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
) -> None:
    """A tenant's usage and cost per day, model and class."""
    from wattpool.store import tenants as t

    console, _ = _console()
    try:
        first = date.fromisoformat(since) if since else date.today() - timedelta(days=30)
        last = date.fromisoformat(until) if until else None
    except ValueError as exc:
        raise typer.BadParameter(f"dates look like 2026-11-28 ({exc})") from None
    engine = _db(_settings(data_dir=data_dir, database_url=database_url))
    try:
        tenant_row = t.get_tenant(engine, tenant)
        rows = t.usage_for_tenant(engine, tenant_row.id, first, last)
    except t.TenantError as exc:
        _fail(exc)
    finally:
        engine.dispose()
    header = ["day", "model", "class", "requests", "prompt_tokens", "completion_tokens",
              "cost_usd"]
    records = [[r.day.isoformat(), r.model_id, r.priority_class, r.requests, r.prompt_tokens,
                r.completion_tokens, f"{Decimal(r.cost_micros) / 1_000_000:.6f}"] for r in rows]
    if csv_path is not None:
        out = sys.stdout if str(csv_path) == "-" else csv_path.open("w", newline="")
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(records)
        if out is not sys.stdout:
            out.close()
        if str(csv_path) == "-":
            return
    table = Table(*header, title=f"usage of {tenant} since {first}")
    for rec in records:
        table.add_row(*map(str, rec))
    total = sum(r.cost_micros for r in rows)
    console.print(table)
    console.print(f"total: {sum(r.requests for r in rows)} requests, "
                  f"${Decimal(total) / 1_000_000:.6f}")
