"""Sends a bounded load to an OpenAI-compatible server and times every request.

Two shapes of load: open-loop Poisson arrivals at a rate (``LoadSpec.rate``), or a fixed
number of clients that each send the next request when the last one ends
(``LoadSpec.concurrency``). Either stops at ``max_requests`` or ``max_duration_s``,
whichever comes first; requests still running ``timeout_s`` after the end of the
schedule are cut and counted as errors, so a run never lasts longer than
``max_duration_s + timeout_s`` (plus connection clean-up).

Times come from ``time.perf_counter`` at the moment bytes arrive: time to first token
is the first event that carries text, inter-token latency the gaps between later
events that carry text, end to end the time until the response is complete.

The generator shares the machine's cores with what it measures, so it is kept cheap:
``http://`` targets are sent through the node's lean HTTP/1.1 transport
(``node/engine_http.py``: httptools, pooled keep-alive connections, no httpx client
layers) and stream events are decoded into typed structs. With httpx and generic JSON it
used 3.0 ms of CPU per 64-token stream from the synthetic engine, 1.7 ms this way.
``client="httpx"`` (and any ``https://`` target) uses httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import httpx
import msgspec

from wattpool.benchtools.schedule import poisson_arrivals
from wattpool.benchtools.target import check_target
from wattpool.node.engine_http import EngineTransport
from wattpool.stream_events import StreamEvent, decode_stream_event

DEFAULT_PROMPT = "Say something about benchmarks."
_decode = msgspec.json.Decoder().decode
ClientKind = Literal["auto", "lean", "httpx"]



@dataclass(frozen=True, slots=True)
class LoadSpec:
    base_url: str  # OpenAI base URL, e.g. http://127.0.0.1:8000/v1
    model: str
    kind: Literal["chat", "completion"] = "chat"
    stream: bool = True
    max_tokens: int = 64
    prompt: str = DEFAULT_PROMPT
    rate: float | None = None  # requests/s, open loop (Poisson arrivals)
    concurrency: int | None = None  # clients, closed loop
    max_requests: int = 1000
    max_duration_s: float = 60.0
    timeout_s: float = 30.0  # per request; also the grace after the schedule ends
    api_key: str | None = None
    seed: int = 0  # of the arrival schedule
    allow_remote: bool = False
    # "lean": the HTTP/1.1 transport of node/engine_http.py, for http:// only; "auto":
    # lean for http://, httpx for https://.
    client: ClientKind = "auto"

    def check(self) -> None:
        """Raise ValueError (TargetRefused for a non-loopback URL) on an unusable spec."""
        check_target(self.base_url, allow_remote=self.allow_remote)
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("give exactly one of rate (open loop) or concurrency (closed loop)")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be > 0 requests/s")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.max_requests < 1 or not self.max_duration_s > 0 or not self.timeout_s > 0:
            raise ValueError("max_requests >= 1, max_duration_s > 0 and timeout_s > 0 needed")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.client not in get_args(ClientKind):
            raise ValueError("client must be 'auto', 'lean' or 'httpx'")
        if self.client == "lean" and not self.base_url.lower().startswith("http://"):
            raise ValueError("the lean client speaks plain http:// only; use client='httpx'")

    @property
    def lean(self) -> bool:
        """Whether requests go through the lean transport (see ``client``)."""
        plain = self.base_url.lower().startswith("http://")
        return self.client == "lean" or (self.client == "auto" and plain)

    @property
    def mode(self) -> str:
        return "rate" if self.rate is not None else "concurrency"

    def path(self) -> str:
        return "/chat/completions" if self.kind == "chat" else "/completions"

    def body(self) -> bytes:
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens,
                                "stream": self.stream}
        if self.kind == "chat":
            body["messages"] = [{"role": "user", "content": self.prompt}]
        else:
            body["prompt"] = self.prompt
        if self.stream:
            # Usage at the end gives the token count even when a server merges tokens.
            body["stream_options"] = {"include_usage": True}
        return msgspec.json.encode(body)


@dataclass(slots=True)
class RequestResult:
    """One request's timings, in seconds; offsets count from the start of the run."""

    scheduled: float  # when the schedule wanted it to start
    started: float = 0.0  # when it was sent
    status: int = 0  # HTTP status, 0 when none arrived
    ttft: float | None = None
    e2e: float | None = None
    gaps: list[float] = field(default_factory=list)  # between text-carrying events
    chunks: int = 0  # events that carried text
    tokens: int = 0  # completion tokens: the server's usage, else the text events
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200


@dataclass(slots=True)
class LoadResult:
    spec: LoadSpec
    started_at: datetime  # wall clock, for the report
    wall_s: float  # from the first send to the end of the last request
    results: list[RequestResult]


class _SseReader:
    """Splits an SSE byte stream into events and records the timings of one request."""

    def __init__(self, res: RequestResult, start: float) -> None:
        self.res = res
        self.start = start
        self.last: float | None = None
        self.done = False
        self._buf = b""

    def feed(self, data: bytes, now: float) -> None:
        buf = self._buf + data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        while (end := buf.find(b"\n\n")) >= 0:
            self._event(buf[:end], now)
            buf = buf[end + 2:]
        self._buf = buf

    def _event(self, event: bytes, now: float) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                self._typed(decode_stream_event(payload), now)
                continue
            except msgspec.DecodeError:  # includes ValidationError: try it as any JSON
                pass
            try:
                obj = _decode(payload)
            except msgspec.DecodeError:
                self.res.error = "bad_event"
                continue
            if not isinstance(obj, dict):
                continue
            if obj.get("error"):
                self.res.error = "stream_error"
            if any(_choice_text(c) for c in obj.get("choices") or ()):
                self._text(now)
            usage = obj.get("usage")
            if isinstance(usage, dict) and "completion_tokens" in usage:
                self.res.tokens = int(usage["completion_tokens"])

    def _typed(self, event: StreamEvent, now: float) -> None:
        if event.error:
            self.res.error = "stream_error"
        if any(choice.piece() for choice in event.choices):
            self._text(now)
        if event.usage is not None:
            self.res.tokens = event.usage.completion_tokens

    def _text(self, now: float) -> None:
        res = self.res
        if self.last is None:
            res.ttft = now - self.start
        else:
            res.gaps.append(now - self.last)
        self.last = now
        res.chunks += 1


def _choice_text(choice: Any) -> str:
    if not isinstance(choice, dict):
        return ""
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")


class _LeanSender:
    """POSTs to an ``http://`` target through ``EngineTransport.post_stream``."""

    def __init__(self, spec: LoadSpec) -> None:
        url = httpx.URL(spec.base_url.rstrip("/") + spec.path())
        self.host, self.port = url.host, url.port or 80
        self.path = url.raw_path.decode("ascii")
        self.headers = (b"authorization: Bearer %s\r\n" % spec.api_key.encode()
                        if spec.api_key else b"")
        self.timeout_s = spec.timeout_s
        self.transport = EngineTransport()

    @contextlib.asynccontextmanager
    async def post(self, body: bytes) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        resp = await self.transport.post_stream(
            self.host, self.port, self.path, body, read_timeout=self.timeout_s,
            connect_timeout=5.0, extra_headers=self.headers)
        async with resp:
            yield resp.status_code, resp.aiter_raw()

    async def aclose(self) -> None:
        await self.transport.aclose()


class _HttpxSender:
    """POSTs through an httpx client (any target, https included)."""

    def __init__(self, spec: LoadSpec, connections: int) -> None:
        self.client = make_client(spec, connections)
        self.path = spec.path()

    @contextlib.asynccontextmanager
    async def post(self, body: bytes) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        async with self.client.stream("POST", self.path, content=body) as resp:
            yield resp.status_code, resp.aiter_bytes()

    async def aclose(self) -> None:
        await self.client.aclose()


_Sender = _LeanSender | _HttpxSender


async def send_one(sender: _Sender, spec: LoadSpec, body: bytes, res: RequestResult) -> None:
    """Send one request and fill ``res``; never raises except on cancellation."""
    start = time.perf_counter()
    try:
        async with sender.post(body) as (status, chunks):
            res.status = status
            if status != 200:
                async for _ in chunks:  # read to the end, so the connection is reused
                    pass
                res.error = f"http_{status}"
            elif spec.stream:
                reader = _SseReader(res, start)
                async for data in chunks:
                    reader.feed(data, time.perf_counter())
                if not reader.done and res.error is None:
                    res.error = "incomplete_stream"
                if res.tokens == 0:
                    res.tokens = res.chunks
            else:
                answer = _decode(b"".join([data async for data in chunks]))
                res.ttft = time.perf_counter() - start
                usage = answer.get("usage") if isinstance(answer, dict) else None
                res.tokens = int((usage or {}).get("completion_tokens") or 0)
        res.e2e = time.perf_counter() - start
    except httpx.TimeoutException:
        res.error = "timeout"
    except (httpx.HTTPError, OSError, msgspec.DecodeError) as exc:
        res.error = type(exc).__name__
    except asyncio.CancelledError:
        res.error = "cut_at_time_limit"
        raise


def make_client(spec: LoadSpec, connections: int) -> httpx.AsyncClient:
    """One pooled client per run; ``trust_env=False`` so no proxy variable redirects it."""
    headers = {"content-type": "application/json"}
    if spec.api_key:
        headers["authorization"] = f"Bearer {spec.api_key}"
    return httpx.AsyncClient(
        base_url=spec.base_url.rstrip("/"), headers=headers, trust_env=False,
        timeout=httpx.Timeout(spec.timeout_s, connect=5.0),
        limits=httpx.Limits(max_connections=connections,
                            max_keepalive_connections=connections),
    )


async def run_load(spec: LoadSpec, *,
                   on_progress: Callable[[int, int], None] | None = None) -> LoadResult:
    """Run the load described by ``spec``; ``on_progress(finished, planned)`` as it goes."""
    spec.check()
    body = spec.body()
    results: list[RequestResult] = []
    if spec.rate is not None:
        arrivals = poisson_arrivals(spec.rate, max_requests=spec.max_requests,
                                    max_duration_s=spec.max_duration_s,
                                    rng=random.Random(spec.seed))
        planned = len(arrivals)
        # Open loop: enough connections that the client pool never queues a request.
        connections = max(1, min(planned, 1024))
    else:
        assert spec.concurrency is not None
        arrivals = []
        planned = spec.max_requests
        connections = spec.concurrency
    started_at = datetime.now(UTC)
    sender = _LeanSender(spec) if spec.lean else _HttpxSender(spec, connections)
    try:
        t0 = time.perf_counter()
        deadline = t0 + spec.max_duration_s + spec.timeout_s

        async def timed(res: RequestResult) -> None:
            res.started = time.perf_counter() - t0
            try:
                await send_one(sender, spec, body, res)
            finally:
                results.append(res)
                if on_progress is not None:
                    on_progress(len(results), planned)

        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        if spec.rate is not None:
            for at in arrivals:
                delay = t0 + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.add(loop.create_task(timed(RequestResult(scheduled=at))))
        else:
            issued = 0

            async def client_loop() -> None:
                nonlocal issued
                while issued < spec.max_requests and time.perf_counter() - t0 < \
                        spec.max_duration_s:
                    issued += 1
                    offset = time.perf_counter() - t0
                    await timed(RequestResult(scheduled=offset))

            tasks = {loop.create_task(client_loop()) for _ in range(spec.concurrency or 1)}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.perf_counter()))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        ends = [r.started + (r.e2e or 0.0) for r in results]
        wall = (max(ends) if ends else 0.0) - min((r.started for r in results), default=0.0)
    finally:
        await sender.aclose()
    return LoadResult(spec=spec, started_at=started_at, wall_s=wall, results=results)
