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

from wattpool.control.router import RouteHints, prompt_text_of
from wattpool.gateway.errors import APIError, invalid
from wattpool.gateway.validation import parse_json_object
from wattpool.policy.decision import explain, explain_text
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

    @app.post("/admin/route")
    async def route(request: Request) -> dict[str, Any]:
        """Where a request would go now, and why (``wattpool route --explain``); sends
        nothing."""
        await admin(request)
        body = parse_json_object(await request.body())
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise invalid("'model' is required.", param="model")
        if not ctx.router.knows_model(model):
            raise APIError(404, f"The model '{model}' does not exist.",
                           code="model_not_found", param="model")
        max_tokens = body.get("max_tokens")
        hints = RouteHints(prompt_text_of(body),
                           max_tokens if isinstance(max_tokens, int) else None)
        decision = ctx.router.decide(model, hints=hints, explain=True)
        return {"decision": explain(decision), "text": explain_text(decision)}

    @app.get("/admin/sites/{name}")
    async def site_power(request: Request, name: str) -> dict[str, Any]:
        """The site's power settings, current price and curtailment (``sites show``)."""
        await admin(request)
        site = await site_named(name)
        open_ones = [c for c in await store(fleet.curtailment_history, site.id, 1)
                     if c.ended_at is None]
        out = _jsonable(site)
        out["price_now"] = ctx.router.site_price(site.id)
        out["curtailment"] = _jsonable(open_ones[0]) if open_ones else None
        return out

    @app.post("/admin/sites/{name}/curtail")
    async def curtail(request: Request, name: str) -> dict[str, Any]:
        """Every node of the site sheds its load: streams move to other sites.

        The deadline is ``within_s``, or that of the site's demand-response programme
        named by ``program``, or 60 s.
        """
        await admin(request)
        body = parse_json_object(await request.body() or b"{}")
        site = await site_named(name)
        program = body.get("program")
        if program is not None:
            match = [c for c in site.dr_commitments if c.name == program]
            if not match:
                known = ", ".join(c.name for c in site.dr_commitments) or "none"
                raise invalid(f"site {site.name} has no demand-response programme "
                              f"{program!r} (it has: {known}).", param="program")
            within: Any = match[0].within_s
        else:
            within = body.get("within_s", 60)
        if isinstance(within, bool) or not isinstance(within, int | float) or within <= 0:
            raise invalid("'within_s' must be a positive number of seconds.", param="within_s")
        reason = str(body.get("reason") or (f"demand response: {program}" if program
                                            else "curtailment signal"))
        await store(fleet.start_curtailment, site.id, "signal", float(within), reason)
        return await signal_site(site, True, float(within), reason)

    @app.post("/admin/sites/{name}/resume")
    async def resume(request: Request, name: str) -> dict[str, Any]:
        await admin(request)
        site = await site_named(name)
        await store(fleet.end_curtailment, site.id)
        return await signal_site(site, False, 0.0, "curtailment over")

    async def site_named(name: str) -> fleet.SiteRow:
        if ctx.bus is None:
            raise APIError(503, "No fleet bus on this gateway.", type="server_error")
        try:
            return await store(fleet.get_site, name)
        except fleet.FleetError as exc:
            raise APIError(404, str(exc), code="site_not_found") from None

    async def signal_site(site: fleet.SiteRow, active: bool, within_s: float,
                          reason: str) -> dict[str, Any]:
        assert ctx.bus is not None
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
