"""The gateway's FastAPI app: OpenAI-compatible routes, health and metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wattpool import __version__
from wattpool.bus import Bus
from wattpool.control.router import Router
from wattpool.gateway.admin import install_tenant_routes
from wattpool.gateway.completions_asgi import (
    KINDS,
    CompletionsFront,
    model_not_found,
    new_request_id,
)
from wattpool.gateway.dispatch import Dispatcher
from wattpool.gateway.errors import install_error_handlers
from wattpool.gateway.metrics import GatewayMetrics
from wattpool.gateway.tenancy import Tenancy
from wattpool.store import UsageWriter

log = logging.getLogger(__name__)
ROUTES = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/healthz", "/readyz",
          "/metrics"}


@dataclass
class GatewayContext:
    router: Router
    dispatcher: Dispatcher
    usage: UsageWriter
    metrics: GatewayMetrics
    max_body_bytes: int
    # Whether this replica's control plane leads (runs placement); for /healthz.
    is_leader: Callable[[], bool] = lambda: True
    # API keys, limits, prices; None: open access without limits (tests, local use).
    tenancy: Tenancy | None = None
    # The fleet bus, for operator signals from the admin API (curtailment).
    bus: Bus | None = None


class RequestIdMiddleware:
    """Gives every response an ``x-request-id`` and counts it by route and status."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope["path"]
        route = path if path in ROUTES else ("/v1/models/{id}" if path.startswith(
            "/v1/models/") else "other")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"],
                                      (b"x-request-id", request_id.encode())]
                m = self.metrics
                m.child(m.requests, route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(ctx: GatewayContext) -> CompletionsFront:
    """The gateway's ASGI app: ``CompletionsFront`` over the FastAPI app (``.app``)."""
    app = FastAPI(title="wattpool", version=__version__, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware, metrics=ctx.metrics)
    registry = ctx.router.registry

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        ready = sum(1 for v in registry.instances.values() if v.state == "ready")
        return {"status": "ok", "ready_instances": ready, "leader": ctx.is_leader()}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = sum(1 for v in registry.instances.values() if v.state == "ready")
        return JSONResponse({"ready": ready > 0, "ready_instances": ready},
                            status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        ctx.metrics.usage_dropped.set(ctx.usage.dropped)
        ctx.metrics.usage_pending.set(ctx.usage.pending)
        if ctx.tenancy is not None:
            ctx.metrics.limiter_failures.set(ctx.tenancy.limiter_failures)
            ctx.metrics.stale_key_answers.set(ctx.tenancy.keys.stale_served)
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "wattpool",
                "context_length": registry.models[model_id]}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(m) for m in sorted(registry.models)]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id not in registry.models:
            raise model_not_found(model_id)
        return model_card(model_id)

    # The completion routes are served by the front, without FastAPI; their entries
    # here keep FastAPI's answers to other methods (405) and to a trailing slash (307).
    front = CompletionsFront(ctx, app)
    for path, kind in KINDS.items():
        app.router.routes.append(Route(path, front.endpoint(kind), methods=["POST"]))
    install_tenant_routes(app, ctx)
    return front

