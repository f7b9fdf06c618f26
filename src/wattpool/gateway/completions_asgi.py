"""``POST /v1/chat/completions`` and ``POST /v1/completions`` as plain ASGI.

The two routes carry nearly all traffic, and under FastAPI each request paid for
routing, five middleware layers wrapping every ``send``, a Request object and
StreamingResponse's task group with its disconnect listener (15-20% of the samples of
a profiled ``wattpool up``). ``CompletionsFront`` answers exactly those two (method and
path) itself and hands everything else to the FastAPI app unchanged. Its answers are
the ones the FastAPI app gave: the same bodies, headers, ``x-request-id``, request
metrics, metering and OpenAI-shaped errors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics import Gauge
from starlette.types import ASGIApp, Receive, Scope, Send

from wattpool.gateway.dispatch import DispatchTrace
from wattpool.gateway.errors import APIError, error_body
from wattpool.gateway.metering import Meter
from wattpool.gateway.responses import ResponseBuilder, encode_json, sse
from wattpool.gateway.tenancy import Caller, Tenancy
from wattpool.gateway.validation import (
    parse_json_object,
    priority_class,
    validate_chat,
    validate_completion,
)
from wattpool.protocol import InferChunk, RequestKind

if TYPE_CHECKING:
    from wattpool.gateway.app import GatewayContext
    from wattpool.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)
KINDS: dict[str, RequestKind] = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
# What StreamingResponse(media_type="text/event-stream", headers=...) sent.
SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
SSE_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")
JSON_TYPE = (b"content-type", b"application/json")
SERVER_ERROR = encode_json(
    error_body("The server had an error while processing your request.", "server_error"))


class ClientGone(Exception):
    """The client hung up while sending its body: there is no one to answer."""


class Reply:
    """One response's ``send``. Given ``metrics``, it also does what RequestIdMiddleware
    does for the other routes: the ``x-request-id`` header and the count by status."""

    __slots__ = ("metrics", "request_id", "route", "send", "started")

    def __init__(self, send: Send, request_id: str, route: str,
                 metrics: GatewayMetrics | None) -> None:
        self.send, self.request_id, self.route, self.metrics = send, request_id, route, metrics
        self.started = False

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if (m := self.metrics) is not None:
            headers.append((b"x-request-id", self.request_id.encode()))
            m.child(m.requests, self.route, str(status)).inc()
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def start_with(self, status: int, headers: list[tuple[bytes, bytes]],
                         body: bytes) -> None:
        """``start`` and the first part of a longer body, in one socket write when the
        server is uvicorn: its ``send`` writes the head on its own, and the client then
        wakes twice for its first token. Sent as two messages elsewhere."""
        cycle = getattr(self.send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is None or not callable(getattr(transport, "write", None)):
            await self.start(status, headers)
            await self.send({"type": "http.response.body", "body": body, "more_body": True})
            return
        gathered = _Gathered()
        cycle.transport = gathered  # type: ignore[union-attr]
        try:
            await self.start(status, headers)
            await self.send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            cycle.transport = transport  # type: ignore[union-attr]
        transport.write(b"".join(gathered.parts))

    async def json(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        """As JSONResponse(content, status, headers): extra headers first, lowercased."""
        raw = raw_headers(headers)
        raw += [(b"content-length", str(len(body)).encode()), JSON_TYPE]
        await self.start(status, raw)
        await self.send({"type": "http.response.body", "body": body})


class _Gathered:
    """Stands in for uvicorn's transport while a response's head and first body part are
    sent (see Reply.start_with): keeps what would have been written."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)


def new_request_id() -> str:
    """The ``x-request-id`` of a response (every route's; see RequestIdMiddleware): 128
    random bits, as uuid4's hex. Made from ``os.urandom`` directly: building a UUID object
    took ~27 us a request in the pool under load (cold caches), this ~2."""
    return f"req_{os.urandom(16).hex()}"


def raw_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def chunk_error(chunk: InferChunk) -> APIError:
    return APIError(
        chunk.status if chunk.status >= 400 else 500,
        chunk.error_message or "the node failed", type=chunk.error_type or "server_error",
        param=chunk.error_param, code=chunk.error_code,
    )


def model_not_found(model: str) -> APIError:
    return APIError(
        404, f"The model `{model}` does not exist or you do not have access to it.",
        param="model", code="model_not_found",
    )


def _too_large(limit: int) -> APIError:
    return APIError(413, f"Request body too large: the limit is {limit} bytes.",
                    code="request_too_large")


async def read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        part: bytes = message.get("body", b"")
        if not message.get("more_body", False) and not body:
            if len(part) > limit:
                raise _too_large(limit)
            return part  # the usual case: the whole body in one message, not copied
        body += part
        if len(body) > limit:
            raise _too_large(limit)
        if not message.get("more_body", False):
            return bytes(body)


class Hangup:
    """Cancels the task serving a request when its client disconnects: once, and not
    after ``disarm`` (the request's cleanup runs to its end). Plain asyncio: the anyio
    cancel scopes this replaces cost ~6 us each to make and enter, four a request."""

    __slots__ = ("armed", "fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.armed = True
        self.fired = False

    def client_left(self) -> None:
        if self.armed and not self.fired:
            self.fired = True
            self.task.cancel()

    def disarm(self) -> None:
        self.armed = False

    def was_ours(self) -> bool:
        """Whether a CancelledError the task caught is this hang-up's and nobody else's
        (asyncio.timeout's test); if so the task is no longer being cancelled."""
        return self.fired and self.task.uncancel() == 0


async def _watch(receive: Receive, hangup: Hangup) -> None:
    """Tells ``hangup`` when the client disconnects (uvicorn's send then just drops
    what is sent, so without this a stream would run on for nobody)."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a server that cannot tell us: nothing to watch
        return
    hangup.client_left()


class _Endpoint:
    """An ASGI app (not a function, which Starlette's Route would call with a Request)
    behind the FastAPI app's middleware, which adds the request id."""

    def __init__(self, front: CompletionsFront, kind: RequestKind) -> None:
        self.front, self.kind = front, kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id: str = scope["state"]["request_id"]
        await self.front.handle(scope, receive, Reply(send, request_id, scope["path"], None),
                                self.kind)


class CompletionsFront:
    """The ASGI app the gateway serves: the completion routes here, the rest to ``app``."""

    def __init__(self, ctx: GatewayContext, app: ASGIApp) -> None:
        self.ctx = ctx
        self.app = app
        self.in_flight: dict[str, Gauge] = {
            r: ctx.metrics.in_flight.labels(r) for r in KINDS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            kind = KINDS.get(scope["path"])
            if kind is not None:
                await self.handle(scope, receive, Reply(send, new_request_id(), scope["path"],
                                                        self.ctx.metrics), kind)
                return
        await self.app(scope, receive, send)

    def endpoint(self, kind: RequestKind) -> ASGIApp:
        """This handler for the FastAPI app's route table (see create_app)."""
        return _Endpoint(self, kind)

    async def handle(self, scope: Scope, receive: Receive, reply: Reply,
                     kind: RequestKind) -> None:
        """One request, answered whatever happens; only a failure after the response
        started is raised (the server then drops the connection: the stream is cut)."""
        try:
            await self.serve(scope, receive, reply, kind)
        except ClientGone:
            pass
        except Exception as exc:
            if isinstance(exc, APIError) and not reply.started:
                await reply.json(exc.status, encode_json(exc.body()), exc.headers)
                return
            # Never a stack trace to the client; the log has it.
            log.exception("unhandled error")
            if reply.started:
                raise
            await reply.json(500, SERVER_ERROR, {})

    async def serve(self, scope: Scope, receive: Receive, reply: Reply,
                    kind: RequestKind) -> None:
        ctx = self.ctx
        started = time.monotonic()
        authorization: str | None = None
        declared: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"content-length" and declared is None:
                declared = value
        caller = (await ctx.tenancy.authenticate(
            {"authorization": authorization} if authorization is not None else {})
            if ctx.tenancy else Caller(auth=None))
        body = parse_json_object(await read_body(receive, declared, ctx.max_body_bytes))
        validate = validate_chat if kind == "chat" else validate_completion
        model, stream, include_usage, forwarded = validate(body)
        klass = priority_class(body, caller.default_class)
        if not ctx.router.knows_model(model) or not Tenancy.may_use(caller, model):
            raise model_not_found(model)
        admission = await ctx.tenancy.admit(caller, forwarded) if ctx.tenancy else None
        route = reply.route
        trace = DispatchTrace()
        meter = Meter(ctx, reply.request_id, kind, model, route, trace, started, klass,
                      admission)
        chunks = ctx.dispatcher.run(reply.request_id, kind, model, forwarded, trace,
                                    klass)  # type: ignore[arg-type]
        in_flight = self.in_flight.get(route) or ctx.metrics.in_flight.labels(route)
        in_flight.inc()
        # From here a client that hangs up cancels the work, also while it waits for the
        # first token: the dispatcher then tells the node to stop. One task a request,
        # where StreamingResponse took a task group and two.
        task = asyncio.current_task()
        assert task is not None
        hangup = Hangup(task)
        watcher = asyncio.get_running_loop().create_task(_watch(receive, hangup))
        try:
            try:  # whatever happens below, the cleanup in `finally` runs once
                try:
                    first = await anext(chunks)
                except Exception as exc:  # a cancel is metered by abandon() below
                    await meter.done("error", exc.status if isinstance(exc, APIError) else 500)
                    raise
                if first.kind == "error":
                    await meter.done("error", first.status)
                    raise chunk_error(first)
                meter.first_token()
                builder = ResponseBuilder(
                    kind, f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{reply.request_id[4:]}",
                    model, int(time.time()), include_usage,
                )
                limit_headers = admission.headers if admission else {}
                if stream:
                    last = await self.stream(reply, first, chunks, builder, meter,
                                             limit_headers)
                else:
                    await self.whole(reply, first, chunks, builder, meter, limit_headers)
            finally:
                hangup.disarm()  # a hang-up from here on does not cut the cleanup short
                await chunks.aclose()
                await meter.abandon()
                in_flight.dec()
            if stream:
                await reply.send({"type": "http.response.body", "body": last,
                                  "more_body": False})
        except asyncio.CancelledError:
            if not hangup.was_ours():
                raise
        finally:
            watcher.cancel()

    @staticmethod
    async def stream(reply: Reply, first: InferChunk, chunks: AsyncIterator[InferChunk],
                     builder: ResponseBuilder, meter: Meter,
                     limit_headers: Mapping[str, str]) -> bytes:
        """Sends the SSE events but the last ones, which it returns: the caller sends
        them with the end of the body (one write) once the request is cleaned up, so a
        client that has read the whole stream finds its request metered and done."""
        send = reply.send
        # Events that are ready together leave in one write (the response's head and role
        # with the first text; finish, usage and [DONE] together): a socket write per
        # event was the largest cost of a stream. A delta may hold several tokens when the
        # node or this gateway fell behind (see Dispatcher._attempt).
        role = builder.role_chunk()
        head = sse(role) if role is not None else b""
        headers = [*SSE_HEADERS, *raw_headers(limit_headers), SSE_TYPE]
        chunk: InferChunk | None = first
        if first.kind == "delta":
            await meter.tokens(first.tokens or 1)
            await reply.start_with(200, headers, head + builder.delta_event(first.text))
            head = b""
            chunk = await anext(chunks, None)
        else:
            await reply.start(200, headers)
        last = b""
        while chunk is not None:
            if chunk.kind == "delta":
                await meter.tokens(chunk.tokens or 1)
                await send({"type": "http.response.body",
                            "body": head + builder.delta_event(chunk.text), "more_body": True})
                head = b""
            elif chunk.kind == "final":
                tail = sse(builder.finish_chunk(chunk.finish_reason or "stop"))
                if builder.include_usage and chunk.usage is not None:
                    tail += sse(builder.usage_chunk(chunk.usage))
                last, head = head + tail + b"data: [DONE]\n\n", b""
                await meter.done("ok", 200, chunk.usage)
            elif chunk.kind == "error":
                # Headers are gone; OpenAI clients raise on an "error" event.
                last, head = head + sse(chunk_error(chunk).body()), b""
                await meter.done("error", chunk.status)
            chunk = await anext(chunks, None)
        return last

    @staticmethod
    async def whole(reply: Reply, first: InferChunk, chunks: AsyncIterator[InferChunk],
                    builder: ResponseBuilder, meter: Meter,
                    limit_headers: Mapping[str, str]) -> None:
        text, finish, usage = [], "stop", None
        chunk: InferChunk | None = first
        while chunk is not None:
            if chunk.kind == "delta":
                text.append(chunk.text)
                await meter.tokens(chunk.tokens or 1)
            elif chunk.kind == "final":
                finish, usage = chunk.finish_reason or "stop", chunk.usage
            elif chunk.kind == "error":
                await meter.done("error", chunk.status)
                raise chunk_error(chunk)
            chunk = await anext(chunks, None)
        await meter.done("ok", 200, usage)
        body: dict[str, Any] = builder.full("".join(text), finish, usage)
        await reply.json(200, encode_json(body), limit_headers)
