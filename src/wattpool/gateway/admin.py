"""Tenant-facing usage and the admin API (tenants, keys, prices).

`GET /v1/usage` shows the calling key's tenant its own usage only. `/admin/*` needs
an admin key; it does what `wattpool tenants|keys|prices` do on the command line.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request

from wattpool.gateway.errors import APIError, invalid
from wattpool.gateway.validation import parse_json_object
from wattpool.protocol import CURTAIL, CurtailSignal, encode
from wattpool.store import fleet
from wattpool.store import tenants as t

if TYPE_CHECKING:
    from wattpool.gateway.app import GatewayContext
    from wattpool.gateway.tenancy import Caller

R = TypeVar("R")


def _jsonable(row: Any) -> dict[str, Any]:
    out = {}
    for key, value in dataclasses.asdict(row).items():
        out[key] = value.isoformat() if isinstance(value, datetime | date) else value
    return out


def _day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise invalid(f"'{name}' must be a date like 2026-11-28.", param=name) from None


def _opt_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(f"'{name}' must be a positive integer.", param=name)
    return value


def install_tenant_routes(app: FastAPI, ctx: GatewayContext) -> None:
    tenancy = ctx.tenancy

    async def caller_of(request: Request) -> Caller:
        if tenancy is None:
            raise APIError(404, "Tenants are not enabled on this gateway.", code="not_found")
        return await tenancy.authenticate(request.headers)

    async def admin(request: Request) -> None:
        assert tenancy is not None
        tenancy.require_admin(await caller_of(request))

    async def store(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        assert tenancy is not None
        try:
            return await asyncio.to_thread(fn, tenancy.db, *args, **kwargs)
        except t.TenantError as exc:
            raise invalid(str(exc)) from None

    @app.get("/v1/usage")
    async def usage(request: Request, start: str | None = None,
                    end: str | None = None) -> dict[str, Any]:
        caller = await caller_of(request)
        if caller.auth is None:
            raise APIError(401, "Usage needs an API key.", code="missing_api_key")
        since = _day(start, "start") or (datetime.now(UTC).date() - timedelta(days=30))
        until = _day(end, "end")
        rows = await store(t.usage_for_tenant, caller.auth.tenant_id, since, until)
        return {
            "object": "list", "tenant": caller.auth.tenant_name,
            "data": [_jsonable(r) | {"cost_usd": r.cost_micros / 1e6} for r in rows],
            "total": {
                "requests": sum(r.requests for r in rows),
                "prompt_tokens": sum(r.prompt_tokens for r in rows),
                "completion_tokens": sum(r.completion_tokens for r in rows),
                "cost_micros": sum(r.cost_micros for r in rows),
            },
        }

    @app.post("/admin/tenants")
    async def add_tenant(request: Request) -> dict[str, Any]:
        await admin(request)
        body = parse_json_object(await request.body())
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise invalid("'name' is required.", param="name")
        budget_usd = body.get("budget_usd")
        try:
            budget = (None if budget_usd is None else
                      int((Decimal(str(budget_usd)) * 1_000_000).to_integral_value()))
        except InvalidOperation:
            raise invalid("'budget_usd' must be a number.", param="budget_usd") from None
        row = await store(t.add_tenant, name, rpm=_opt_int(body, "rpm"),
                          tpm=_opt_int(body, "tpm"),
                          max_concurrency=_opt_int(body, "max_concurrency"),
                          budget_micros=budget,
                          budget_period=body.get("budget_period", "month"))
        return _jsonable(row)

    @app.get("/admin/tenants")
    async def list_tenants(request: Request) -> dict[str, Any]:
        await admin(request)
        return {"object": "list", "data": [_jsonable(r) for r in await store(t.list_tenants)]}

    @app.post("/admin/keys")
    async def create_key(request: Request) -> dict[str, Any]:
        await admin(request)
        body = parse_json_object(await request.body())
        tenant = body.get("tenant")
        if not isinstance(tenant, str):
            raise invalid("'tenant' is required.", param="tenant")
        expires_at = None
        if body.get("expires_in_s") is not None:
            expires_at = datetime.now(UTC) + timedelta(seconds=float(body["expires_in_s"]))
        models = body.get("models")
        if models is not None and not (isinstance(models, list)
                                       and all(isinstance(m, str) for m in models)):
            raise invalid("'models' must be a list of model ids.", param="models")
        full, row = await store(
            t.create_key, tenant, name=str(body.get("name", "")), models=models,
            expires_at=expires_at, default_class=body.get("default_class", "interactive"),
            rpm=_opt_int(body, "rpm"), tpm=_opt_int(body, "tpm"),
            max_concurrency=_opt_int(body, "max_concurrency"),
            is_admin=bool(body.get("is_admin", False)))
        return _jsonable(row) | {"key": full}

    @app.get("/admin/keys")
    async def list_keys(request: Request, tenant: str | None = None) -> dict[str, Any]:
        await admin(request)
        return {"object": "list",
                "data": [_jsonable(r) for r in await store(t.list_keys, tenant)]}

    @app.post("/admin/keys/{key}/revoke")
    async def revoke_key(request: Request, key: str) -> dict[str, Any]:
        await admin(request)
        return _jsonable(await store(t.revoke_key, key))

    @app.get("/admin/nodes")
    async def nodes(request: Request) -> dict[str, Any]:
        """This replica's live view: reachability, power state, audit reputation."""
        await admin(request)
        return {"object": "list", "data": [
            {"id": n.node_id, "name": n.name, "reachable": n.reachable,
             "power_state": n.power_state, "reputation": n.reputation.score,
             "audits_passed": n.reputation.passes, "audits_failed": n.reputation.fails,
             "quarantined": n.reputation.quarantined}
            for n in ctx.router.registry.nodes.values()]}

    @app.post("/admin/sites/{name}/curtail")
    async def curtail(request: Request, name: str) -> dict[str, Any]:
        """Every node of the site sheds its load: streams move to other sites."""
        await admin(request)
        body = parse_json_object(await request.body() or b"{}")
        within = body.get("within_s", 60)
        if isinstance(within, bool) or not isinstance(within, int | float) or within <= 0:
            raise invalid("'within_s' must be a positive number of seconds.", param="within_s")
        return await signal_site(name, True, float(within),
                                 str(body.get("reason") or "curtailment signal"))

    @app.post("/admin/sites/{name}/resume")
    async def resume(request: Request, name: str) -> dict[str, Any]:
        await admin(request)
        return await signal_site(name, False, 0.0, "curtailment over")

    async def signal_site(name: str, active: bool, within_s: float,
                          reason: str) -> dict[str, Any]:
        if ctx.bus is None:
            raise APIError(503, "No fleet bus on this gateway.", type="server_error")
        try:
            site = await store(fleet.get_site, name)
        except fleet.FleetError as exc:
            raise APIError(404, str(exc), code="site_not_found") from None
        signal = CurtailSignal(site_id=site.id, site_name=site.name, active=active,
                               within_s=within_s, reason=reason)
        await ctx.bus.publish(CURTAIL, encode(signal))
        return {"site": site.name, "curtailed": active, "within_s": within_s,
                "reason": reason}

    @app.put("/admin/prices/{model_id:path}")
    async def set_price(request: Request, model_id: str) -> dict[str, Any]:
        await admin(request)
        body = parse_json_object(await request.body())
        row = await store(t.set_price, model_id, str(body.get("prompt_usd_per_mtok", "0")),
                          str(body.get("completion_usd_per_mtok", "0")),
                          int(body.get("batch_discount_pct", 0)))
        assert tenancy is not None
        await tenancy.prices.refresh()  # this replica bills the new price at once
        return _jsonable(row)
