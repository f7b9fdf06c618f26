"""The node's HTTP transport to its engines: httpx's API on a lean HTTP/1.1 connection.

Every token of every request crosses this hop, so its cost per network read matters
more than anywhere else on the node. httpx's default transport (httpcore + h11) parses
each chunk frame in Python and wraps every read in an anyio cancel scope; profiled under
load it was about half of the node bridge's CPU. This transport keeps httpx as the one
HTTP client (``AsyncClient``, its timeouts and its exceptions) and replaces only the
wire: an asyncio protocol per connection, httptools (the C parser uvicorn uses) for the
response, a read timeout as one timer per wait, and keep-alive connections pooled per
engine address.

Plain ``http://`` only: engines listen on the node's loopback. Anything else (and HEAD,
whose response has no body to parse) goes to httpx's own transport.

The bridge's inference call skips httpx's client layers as well: ``post_stream`` sends a
prepared POST on the same pooled connections and returns an ``EngineResponse``. Building
an httpx request and response (URL merge, header objects, cookies, auth and redirect
hooks, three wrapping body iterators) cost about 0.1 ms per request, as much as the
rest of the hop. The load generator (``benchtools/runner.py``) sends its requests to
``http://`` targets the same way, so that it takes less of the cores it shares with what
it measures.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import httptools
import httpx

# An engine's stream is read as it arrives; more than this unread pauses the socket.
_HIGH_WATER = 1 << 20
_MAX_IDLE_PER_ENGINE = 128


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one response at a time."""

    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.received = False  # any byte of the current response
        self._parser: httptools.HttpResponseParser | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[None] | None = None
        self._body: deque[bytes] = deque()
        # httptools' on_body callback: a body frame goes straight to deque.append (the
        # parser looks its callbacks up when it is made; see data_received).
        self.on_body = self._body.append
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False  # the current response's body has ended
        self._keep_alive = False
        self.error: BaseException | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._parser is None:  # bytes nobody asked for: the connection is unusable
            self._fail(httpx.RemoteProtocolError("engine sent data outside a response"))
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("engine tried to upgrade the connection"))
            return
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response from engine: {exc}"))
            return
        # Accounted once per read, not in on_body: llhttp calls that once per chunk frame,
        # and an engine's stream has a frame per token.
        if self._body:
            self._buffered += len(data)
            if (self._buffered > _HIGH_WATER and not self._paused
                    and self.transport is not None):
                self._paused = True
                self.transport.pause_reading()
            self._wake()

    def eof_received(self) -> bool:
        self._lost()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # llhttp answers should_keep_alive() only inside its callbacks.
        assert self._parser is not None
        self._keep_alive = self._parser.should_keep_alive()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_message_complete(self) -> None:
        assert self._parser is not None
        self._keep_alive = self._keep_alive and self._parser.should_keep_alive()
        self.complete = True
        self._wake()

    # used by the transport and the body stream

    def start(self, head: bytes, body: bytes) -> asyncio.Future[None]:
        """Send a request; returns a future resolved when the response's head is in."""
        assert self.transport is not None
        self._headers = []
        self._body.clear()
        self._parser = httptools.HttpResponseParser(self)
        self._buffered = 0
        self.complete = False
        self._keep_alive = False
        self.received = False
        self._head = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)  # one segment; engine requests are small JSON
        return self._head

    def response_head(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        assert self._parser is not None
        return self._parser.get_status_code(), self._headers

    async def next_body(self, timeout: float | None) -> bytes | None:
        """The body bytes received so far, waiting for some; None at the end."""
        while not self._body:
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _time_out, waiter) if timeout else None
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
                self._waiter = None
        data = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def reusable(self) -> bool:
        return self.complete and not self.closed and self._keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self.error = self.error or exc
        self.close()
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # retrieved here; the caller sees it when it awaits
        self._wake()

    def _lost(self) -> None:
        self.closed = True
        if self._parser is not None and not self.complete and self.error is None:
            headers_in = self._head is not None and self._head.done()
            # A body delimited by the end of the connection ends here; any other is cut.
            if headers_in and not any(n.lower() in (b"content-length", b"transfer-encoding")
                                      for n, _ in self._headers):
                self.complete = True
            else:
                self._fail(httpx.RemoteProtocolError(
                    "engine closed the connection before the response was complete"))
                return
        self._wake()


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class EngineResponse:
    """A response from ``EngineTransport.post_stream``: status, headers, body chunks.

    ``request``, when the response answers an httpx request, goes with the exceptions.
    """

    def __init__(self, conn: _Connection, transport: EngineTransport,
                 read_timeout: float | None, request: httpx.Request | None = None) -> None:
        self.status_code, self.raw_headers = conn.response_head()
        self._conn = conn
        self._transport = transport
        self._timeout = read_timeout
        self._request = request
        self._closed = False

    def header(self, name: bytes) -> str | None:
        """One header's value (``name`` in lower case), without building ``headers``."""
        for key, value in self.raw_headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    @property
    def headers(self) -> dict[str, str]:
        return {name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in self.raw_headers}

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives, one piece per network read (chunk framing removed)."""
        conn, timeout = self._conn, self._timeout
        while True:
            try:
                data = await conn.next_body(timeout)
            except TimeoutError:
                raise httpx.ReadTimeout("engine sent nothing within the read timeout",
                                        request=self._request) from None
            except httpx.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc), request=self._request) from None
            if data is None:
                return
            yield data

    async def aread(self) -> bytes:
        return b"".join([data async for data in self.aiter_raw()])

    async def aclose(self) -> None:
        """Hands the connection back: to the pool if the body was read to its end."""
        if not self._closed:
            self._closed = True
            self._transport.release(self._conn)

    async def __aenter__(self) -> EngineResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Body(httpx.AsyncByteStream):
    """An ``EngineResponse``'s body as httpx's response stream."""

    def __init__(self, response: EngineResponse) -> None:
        self._response = response

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._response.aiter_raw()

    async def aclose(self) -> None:
        await self._response.aclose()


class EngineTransport(httpx.AsyncBaseTransport):
    """httpx transport for engines on ``http://`` addresses, keep-alive per engine."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._fallback: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http" or request.method == "HEAD":
            if self._fallback is None:
                self._fallback = httpx.AsyncHTTPTransport()
            return await self._fallback.handle_async_request(request)
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        body = await request.aread()  # already read for byte content; streams are joined
        conn = await self._exchange((url.host, url.port or 80), self._head(request, body), body,
                                    read_timeout, timeouts.get("connect"), request)
        response = EngineResponse(conn, self, read_timeout, request)
        return httpx.Response(response.status_code, headers=response.raw_headers,
                              stream=_Body(response), extensions={"http_version": b"HTTP/1.1"})

    async def post_stream(self, host: str, port: int, path: str, body: bytes, *,
                          read_timeout: float | None, connect_timeout: float | None,
                          extra_headers: bytes = b"") -> EngineResponse:
        """POST a JSON ``body`` to ``path`` and return the response once its head is in.

        ``extra_headers``: more header lines, each ending in CRLF, sent as given. Raises
        httpx's exceptions, as the client would. The caller reads the body (or not) and
        must ``aclose()`` the response: that hands the connection back.
        """
        name = f"[{host}]" if ":" in host else host  # an IPv6 address is bracketed
        head = (b"POST %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n"
                b"accept-encoding: identity\r\ncontent-length: %d\r\n%s\r\n"
                % (path.encode(), name.encode(), port, len(body), extra_headers))
        conn = await self._exchange((host, port), head, body, read_timeout, connect_timeout,
                                    None)
        return EngineResponse(conn, self, read_timeout)

    async def _exchange(self, key: tuple[str, int], head: bytes, body: bytes,
                        read_timeout: float | None, connect_timeout: float | None,
                        request: httpx.Request | None) -> _Connection:
        """Send one request on a pooled (or new) connection; returns it once the
        response's head is in."""
        while True:
            conn = self._idle_connection(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(key, connect_timeout, request)
            try:
                pending = conn.start(head, body)
                async with asyncio.timeout(read_timeout):
                    await pending
                return conn
            except TimeoutError:
                conn.close()
                raise httpx.ReadTimeout("engine did not answer within the read timeout",
                                        request=request) from None
            except httpx.RemoteProtocolError as exc:
                conn.close()
                # An idle connection the engine closed as we reused it: nothing reached
                # the engine, so the request goes again on a new connection.
                if reused and not conn.received:
                    continue
                raise httpx.RemoteProtocolError(str(exc), request=request) from None
            except BaseException:
                conn.close()  # cancelled mid-request: the connection is in an unknown state
                raise

    def release(self, conn: _Connection) -> None:
        """Back to the pool if its response was read to the end; closed otherwise."""
        idle = self._idle.setdefault(conn.key, [])
        if conn.reusable() and len(idle) < _MAX_IDLE_PER_ENGINE:
            idle.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        if self._fallback is not None:
            await self._fallback.aclose()

    def _idle_connection(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:  # the engine may have closed it while it sat here
                return conn
        return None

    @staticmethod
    async def _connect(key: tuple[str, int], timeout: float | None,
                       request: httpx.Request | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: _Connection(key), *key)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {key[0]}:{key[1]} timed out",
                                       request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc}",
                                     request=request) from None
        return conn

    @staticmethod
    def _head(request: httpx.Request, body: bytes) -> bytes:
        lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
        has_length = False
        for name, value in request.headers.raw:
            if name.lower() == b"transfer-encoding":
                continue  # the body is sent whole, with its length
            if name.lower() == b"content-length":
                has_length = True
            lines.append(name + b": " + value)
        if not has_length and (body or request.method in ("POST", "PUT", "PATCH")):
            lines.append(b"content-length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n"
