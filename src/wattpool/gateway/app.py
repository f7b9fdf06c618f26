"""The gateway's FastAPI app: OpenAI-compatible routes, health and metrics."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wattpool import __version__
from wattpool.bus import Bus
from wattpool.control.router import Router
from wattpool.gateway.admin import install_tenant_routes
from wattpool.gateway.dispatch import Dispatcher, DispatchTrace
from wattpool.gateway.errors import APIError, install_error_handlers
from wattpool.gateway.metering import Meter
from wattpool.gateway.metrics import GatewayMetrics
from wattpool.gateway.responses import ResponseBuilder, sse
from wattpool.gateway.tenancy import Caller, Tenancy
from wattpool.gateway.validation import (
    parse_json_object,
    priority_class,
    validate_chat,
    validate_completion,
)
from wattpool.protocol import InferChunk, RequestKind
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
        request_id = f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope["path"]
        route = path if path in ROUTES else ("/v1/models/{id}" if path.startswith(
            "/v1/models/") else "other")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"],
                                      (b"x-request-id", request_id.encode())]
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send_with_id)


async def read_body(request: Request, limit: int) -> bytes:
    too_large = APIError(
        413, f"Request body too large: the limit is {limit} bytes.",
        code="request_too_large",
    )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_large
    return bytes(body)


def chunk_error(chunk: InferChunk) -> APIError:
    return APIError(
        chunk.status if chunk.status >= 400 else 500,
        chunk.error_message or "the node failed", type=chunk.error_type or "server_error",
        param=chunk.error_param, code=chunk.error_code,
    )


def create_app(ctx: GatewayContext) -> FastAPI:
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

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serve(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serve(request, "completion")

    async def serve(request: Request, kind: RequestKind) -> Response:
        started = time.monotonic()
        caller = (await ctx.tenancy.authenticate(request.headers) if ctx.tenancy
                  else Caller(auth=None))
        body = parse_json_object(await read_body(request, ctx.max_body_bytes))
        validate = validate_chat if kind == "chat" else validate_completion
        model, stream, include_usage, forwarded = validate(body)
        klass = priority_class(body, caller.default_class)
        if not ctx.router.knows_model(model) or not Tenancy.may_use(caller, model):
            raise model_not_found(model)
        admission = await ctx.tenancy.admit(caller, forwarded) if ctx.tenancy else None
        request_id: str = request.state.request_id
        route = request.url.path
        trace = DispatchTrace()
        meter = Meter(ctx, request_id, kind, model, route, trace, started, klass, admission)
        limit_headers = admission.headers if admission else {}
        chunks = ctx.dispatcher.run(request_id, kind, model, forwarded, trace,
                                    klass)  # type: ignore[arg-type]
        ctx.metrics.in_flight.labels(route).inc()
        try:
            first = await anext(chunks)
        except BaseException as exc:
            ctx.metrics.in_flight.labels(route).dec()
            status = exc.status if isinstance(exc, APIError) else 500
            with anyio.CancelScope(shield=True):
                await meter.done("error", status)
            raise
        if first.kind == "error":
            await chunks.aclose()
            ctx.metrics.in_flight.labels(route).dec()
            await meter.done("error", first.status)
            raise chunk_error(first)
        meter.first_token()
        builder = ResponseBuilder(
            kind, f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request_id[4:]}", model,
            int(time.time()), include_usage,
        )
        if stream:
            return StreamingResponse(
                stream_body(first, chunks, builder, meter),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                         **limit_headers},
            )
        try:
            text, finish, usage = [], "stop", None
            async for chunk in prepend(first, chunks):
                if chunk.kind == "delta":
                    text.append(chunk.text)
                    for _ in range(chunk.tokens or 1):
                        await meter.token()
                elif chunk.kind == "final":
                    finish, usage = chunk.finish_reason or "stop", chunk.usage
                elif chunk.kind == "error":
                    await meter.done("error", chunk.status)
                    raise chunk_error(chunk)
            await meter.done("ok", 200, usage)
            return JSONResponse(builder.full("".join(text), finish, usage),
                                headers=limit_headers)
        finally:
            with anyio.CancelScope(shield=True):
                await meter.abandon()
            ctx.metrics.in_flight.labels(route).dec()

    async def stream_body(
        first: InferChunk, chunks: AsyncIterator[InferChunk], builder: ResponseBuilder,
        meter: Meter,
    ) -> AsyncIterator[bytes]:
        # Events that are ready together leave in one write (role with the first text;
        # finish, usage and [DONE] together): a socket write per event was the largest
        # cost of a stream. A delta may hold several tokens when the node or this
        # gateway fell behind (see Dispatcher._attempt).
        try:
            role = builder.role_chunk()
            head = sse(role) if role is not None else b""
            chunk: InferChunk | None = first
            while chunk is not None:
                if chunk.kind == "delta":
                    for _ in range(chunk.tokens or 1):
                        await meter.token()
                    yield head + builder.delta_event(chunk.text)
                    head = b""
                elif chunk.kind == "final":
                    tail = sse(builder.finish_chunk(chunk.finish_reason or "stop"))
                    if builder.include_usage and chunk.usage is not None:
                        tail += sse(builder.usage_chunk(chunk.usage))
                    yield head + tail + b"data: [DONE]\n\n"
                    await meter.done("ok", 200, chunk.usage)
                elif chunk.kind == "error":
                    # Headers are gone; OpenAI clients raise on an "error" event.
                    yield head + sse(chunk_error(chunk).body())
                    await meter.done("error", chunk.status)
                chunk = await anext(chunks, None)
        finally:
            with anyio.CancelScope(shield=True):
                await chunks.aclose()
                await meter.abandon()
            ctx.metrics.in_flight.labels(meter.route).dec()

    install_tenant_routes(app, ctx)
    return app


def model_not_found(model: str) -> APIError:
    return APIError(
        404, f"The model `{model}` does not exist or you do not have access to it.",
        param="model", code="model_not_found",
    )


async def prepend(first: InferChunk, rest: AsyncIterator[InferChunk]) -> AsyncIterator[InferChunk]:
    yield first
    async for chunk in rest:
        yield chunk
