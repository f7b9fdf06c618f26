"""Bridges bus inference requests to the local engines.

For each InferRequest the bridge sends an ``ack``, calls the engine with a
streamed HTTP request, forwards text as ``delta`` chunks and ends with a ``final``
chunk carrying usage, or an ``error`` chunk. A CancelRequest cancels the task that
serves the request; leaving the HTTP stream closes the connection, and the engine
stops generating for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import httpx
import msgspec

from wattpool.bus import Bus, Msg, Subscription
from wattpool.engines import EngineRequestError
from wattpool.node.supervisor import ENGINE_HOST, Supervisor
from wattpool.protocol import (
    CancelRequest,
    InferChunk,
    InferRequest,
    Usage,
    cancel_subject,
    decode,
    encode,
    infer_subject,
)
from wattpool.stream_events import StreamEvent, decode_stream_event

log = logging.getLogger(__name__)


# Events are decoded typed first (wattpool.stream_events); one the typed decoder refuses
# (an odd type, NaN) comes through this generic one.
_decode_event = msgspec.json.Decoder().decode
_encode_body = msgspec.json.Encoder().encode
ENGINE_CONNECT_TIMEOUT_S = 5.0
# After [DONE], how long to wait for the end of the engine's body. Reading it to the end
# hands the connection back to the client's pool; an unread body makes httpx close it,
# and every request then pays a new TCP connection to the engine.
DRAIN_S = 1.0


class _Reply:
    """Numbered chunks to one gateway inbox."""

    def __init__(self, bus: Bus, inbox: str, request_id: str) -> None:
        self.bus, self.inbox, self.request_id = bus, inbox, request_id
        self.seq = 0
        self.sent_text = False

    async def send(self, **fields: Any) -> None:
        chunk = InferChunk(request_id=self.request_id, seq=self.seq, **fields)
        self.seq += 1
        if chunk.kind == "delta":
            self.sent_text = True
        await self.bus.publish(self.inbox, encode(chunk))

    async def error(
        self, status: int, message: str, *, retriable: bool, error_type: str = "server_error",
        code: str | None = None, param: str | None = None,
    ) -> None:
        await self.send(
            kind="error", status=status, error_message=message, error_type=error_type,
            # After text, "retriable" means the gateway may continue the stream elsewhere.
            error_code=code, error_param=param, retriable=retriable,
        )


def _parse_engine_error(status: int, raw: bytes) -> tuple[str, str, str | None, str | None]:
    """(message, type, code, param) from an engine's error body, OpenAI-shaped or not."""
    try:
        err = json.loads(raw)["error"]
        if isinstance(err, dict):
            return (
                str(err.get("message") or "engine error"),
                str(err.get("type") or "invalid_request_error"),
                err.get("code"),
                err.get("param"),
            )
    except (ValueError, KeyError, TypeError):
        pass
    kind = "invalid_request_error" if status < 500 else "server_error"
    return raw.decode(errors="replace")[:500] or f"engine answered {status}", kind, None, None


class _EngineStream:
    """Parses an engine's SSE stream and forwards its text, one delta per network read.

    Events that arrive in the same read are sent as one ``delta`` whose ``tokens`` counts
    them (one engine event carries one sampled token; llama.cpp may merge a few while it
    completes a UTF-8 character). An engine that streams faster than the bridge reads
    thus costs one bus message per read, not one per token; a paced engine still gets
    one delta per token, since each event arrives on its own.
    """

    def __init__(self, reply: _Reply) -> None:
        self.reply = reply
        self.text_parts: list[str] = []
        self.finish_reason: str | None = None
        self.reported: Usage | None = None
        self.done = False
        self._rest = b""

    async def feed(self, data: bytes) -> None:
        *lines, self._rest = (self._rest + data).split(b"\n")
        texts: list[str] = []
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                break
            try:
                self._typed_event(decode_stream_event(payload), texts)
                continue
            except msgspec.DecodeError:  # includes ValidationError
                pass
            try:
                event = _decode_event(payload)
            except msgspec.DecodeError:
                event = json.loads(payload)  # NaN/Infinity, which msgspec refuses
            self._event(event, texts)
        if texts:
            self.text_parts.extend(texts)
            await self.reply.send(kind="delta", text="".join(texts), tokens=len(texts))

    def _typed_event(self, event: StreamEvent, texts: list[str]) -> None:
        if event.usage is not None:
            self.reported = Usage(prompt_tokens=event.usage.prompt_tokens,
                                  completion_tokens=event.usage.completion_tokens)
        for choice in event.choices:
            text = choice.piece()
            if text:
                texts.append(text)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason

    def _event(self, event: Any, texts: list[str]) -> None:
        if not isinstance(event, dict):
            return
        if event.get("usage"):
            u = event["usage"]
            self.reported = Usage(
                prompt_tokens=int(u["prompt_tokens"]),
                completion_tokens=int(u["completion_tokens"]),
            )
        for choice in event.get("choices") or []:
            delta = choice.get("delta")
            text = (delta or {}).get("content") if delta is not None else choice.get("text")
            if text:
                texts.append(text)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]


class InferBridge:
    def __init__(
        self, bus: Bus, node_id: str, supervisor: Supervisor, default_max_tokens: int,
        idle_timeout_s: float,
    ) -> None:
        self.bus = bus
        self.node_id = node_id
        self.supervisor = supervisor
        self.default_max_tokens = default_max_tokens
        self.idle_timeout_s = idle_timeout_s
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._replies: dict[str, _Reply] = {}
        self._refusals: set[asyncio.Task[None]] = set()  # "draining" answers being sent
        self._subs: list[Subscription] = []
        self.draining: str | None = None  # why new work is refused, when it is

    @property
    def in_flight(self) -> int:
        return len(self.tasks)

    async def start(self) -> None:
        # Both handlers only start or cancel a task, so they run inline (no delivery hop).
        self._subs.append(await self.bus.subscribe_inline(infer_subject(self.node_id),
                                                          self._on_infer))
        self._subs.append(await self.bus.subscribe_inline(cancel_subject(self.node_id),
                                                          self._on_cancel))

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    def _on_infer(self, msg: Msg) -> None:
        if msg.reply is None:
            log.warning("infer request without reply inbox dropped")
            return
        req = decode(msg.data, InferRequest)
        reply = _Reply(self.bus, msg.reply, req.request_id)
        loop = asyncio.get_running_loop()
        if self.draining:
            refusal = reply.error(503, f"node is draining: {self.draining}", retriable=True)
            self._refusals.add(task := loop.create_task(refusal))
            task.add_done_callback(self._refusals.discard)
            return
        task = loop.create_task(self._serve(req, reply))
        self.tasks[req.request_id] = task
        self._replies[req.request_id] = reply

        def forget(_t: asyncio.Task[None]) -> None:
            self.tasks.pop(req.request_id, None)
            self._replies.pop(req.request_id, None)

        task.add_done_callback(forget)

    async def drain(self, reason: str) -> int:
        """Refuse new work and hand every in-flight stream back to its gateway, which
        continues it on another node from the text already sent. Returns how many."""
        self.draining = reason
        moved = 0
        for request_id, task in list(self.tasks.items()):
            reply = self._replies.get(request_id)
            task.cancel()  # closes the engine stream: the engine stops generating
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if reply is not None:
                await reply.error(503, f"node is draining: {reason}", retriable=True)
                moved += 1
        return moved

    def resume(self) -> None:
        self.draining = None

    def _on_cancel(self, msg: Msg) -> None:
        cancel = decode(msg.data, CancelRequest)
        task = self.tasks.get(cancel.request_id)
        if task is not None:
            log.info("cancelling %s: %s", cancel.request_id, cancel.reason)
            task.cancel()

    async def _serve(self, req: InferRequest, reply: _Reply) -> None:
        inst = self.supervisor.get(req.instance_id)
        if inst is None or inst.state != "ready" or inst.client is None:
            state = inst.state if inst else "unknown here"
            await reply.error(503, f"instance {req.instance_id} is {state}", retriable=True)
            return
        await reply.send(kind="ack")
        inst.in_flight += 1
        try:
            await self._call_engine(req, reply, inst.client, inst)
        except asyncio.CancelledError:
            raise
        except (httpx.HTTPError, OSError) as exc:
            # The engine died or broke the connection: another node may take over.
            log.warning("engine call for %s failed: %r", req.request_id, exc)
            await reply.error(
                502, f"the engine stopped responding ({type(exc).__name__})", retriable=True
            )
        except Exception as exc:
            log.exception("request %s failed", req.request_id)
            await reply.error(500, f"node error: {type(exc).__name__}", retriable=True)
        finally:
            inst.in_flight -= 1

    async def _call_engine(
        self, req: InferRequest, reply: _Reply, client: httpx.AsyncClient, inst: Any
    ) -> None:
        try:
            call = await inst.adapter.build_call(
                client, inst.spec, req.kind, req.body, self.default_max_tokens,
                req.continuation,
            )
        except EngineRequestError as exc:
            await reply.error(
                exc.status, exc.message, retriable=False, error_type="invalid_request_error",
                code=exc.code, param=exc.param,
            )
            return
        stream = _EngineStream(reply)
        transport = inst.transport
        assert transport is not None and inst.port is not None
        async with await transport.post_stream(
            ENGINE_HOST, inst.port, call.path, _encode_body(call.payload),
            read_timeout=self.idle_timeout_s, connect_timeout=ENGINE_CONNECT_TIMEOUT_S,
        ) as resp:
            if resp.status_code >= 400:
                raw = await resp.aread()
                message, err_type, code, param = _parse_engine_error(resp.status_code, raw)
                await reply.error(
                    resp.status_code, message, retriable=resp.status_code >= 500,
                    error_type=err_type, code=code, param=param,
                )
                return
            # Asked for identity; a stream compressed anyway cannot be read as SSE.
            encoding = resp.header(b"content-encoding") or "identity"
            if encoding.lower() != "identity":
                await reply.error(502, f"the engine compressed its stream ({encoding})",
                                  retriable=True)
                return
            body = resp.aiter_raw()
            async for data in body:
                await stream.feed(data)
                if stream.done:
                    break
            full_text = "".join(stream.text_parts)
            usage = await inst.adapter.final_usage(client, call, stream.reported, full_text,
                                                   stream.finish_reason)
            await reply.send(kind="final", finish_reason=stream.finish_reason or "stop",
                             usage=usage)
            if stream.done:
                # The client has its answer; what is left is the body's end (see DRAIN_S).
                with contextlib.suppress(httpx.HTTPError, OSError, TimeoutError):
                    async with asyncio.timeout(DRAIN_S):
                        async for _ in body:
                            pass


async def cancel_quietly(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
