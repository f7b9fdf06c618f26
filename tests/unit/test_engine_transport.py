"""The node's engine transport against a real socket server on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from wattpool.node.engine_http import EngineTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A raw HTTP/1.1 server whose answers each test writes byte by byte."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.host = host
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                await self.handler(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def sse_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                 b"transfer-encoding: chunked\r\n\r\n")
    for i in range(3):
        event = b"data: {\"n\": %d}\n\n" % i
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.write(b"0\r\n\r\n")


async def json_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = b'{"ok": true}'
    writer.write(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\nx-engine: synthetic\r\n\r\n%s" % (len(body), body))


def client(url: str, **kw: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, transport=EngineTransport(), **kw)  # type: ignore[arg-type]


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([part async for part in stream])


async def test_content_length_response_and_request_on_the_wire() -> None:
    async with Server(json_answer) as srv, client(srv.url) as http:
        resp = await http.post("/v1/x?q=1", json={"a": 1})
        assert resp.status_code == 201
        assert resp.json() == {"ok": True}
        assert resp.headers["x-engine"] == "synthetic"
        head, _, body = srv.requests[0].partition(b"\r\n\r\n")
        assert head.startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n")
        assert b"\r\ncontent-length: 7" in head.lower()
        assert body == b'{"a":1}'


async def test_chunked_stream_arrives_in_order_and_the_connection_is_reused() -> None:
    async with Server(sse_answer) as srv, client(srv.url) as http:
        for _ in range(3):
            async with http.stream("POST", "/s", content=b"{}") as resp:
                assert resp.status_code == 200
                data = await collect(resp.aiter_raw())
            assert data == b"".join(b"data: {\"n\": %d}\n\n" % i for i in range(3))
        assert srv.connections == 1
        assert len(srv.requests) == 3


async def test_a_stream_left_early_closes_its_connection() -> None:
    async with Server(sse_answer) as srv, client(srv.url) as http:
        async with http.stream("POST", "/s", content=b"{}") as resp:
            async for _ in resp.aiter_raw():
                break
        resp = await http.post("/s", content=b"{}")
        assert resp.status_code == 200
        assert srv.connections == 2


async def test_silence_after_the_head_is_a_read_timeout() -> None:
    async def stalls(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(5)

    async with Server(stalls) as srv, client(srv.url) as http:
        with pytest.raises(httpx.ReadTimeout):
            async with http.stream("POST", "/s", content=b"{}", timeout=0.3) as resp:
                await collect(resp.aiter_raw())


async def test_no_answer_is_a_read_timeout() -> None:
    async def silent(_: asyncio.StreamReader, __: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with Server(silent) as srv, client(srv.url) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/s", content=b"{}", timeout=0.3)


def writes_then_closes(raw: bytes) -> Handler:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        writer.close()

    return handler


async def test_a_body_cut_short_is_a_protocol_error() -> None:
    dies = writes_then_closes(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
    async with Server(dies) as srv, client(srv.url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post("/s", content=b"{}")


async def test_garbage_is_a_protocol_error() -> None:
    async def garbage(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SMTP ready\r\n\r\n")

    async with Server(garbage) as srv, client(srv.url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post("/s", content=b"{}", timeout=2)


async def test_a_body_ended_by_close_is_complete() -> None:
    until_close = writes_then_closes(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
    async with Server(until_close) as srv, client(srv.url) as http:
        resp = await http.post("/s", content=b"{}")
        assert resp.text == "all of it"


async def test_an_idle_connection_the_engine_closed_is_replaced() -> None:
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await json_answer(reader, writer)
        await writer.drain()
        writer.close()  # no keep-alive, without saying so

    async with Server(answer_once) as srv, client(srv.url) as http:
        for _ in range(3):
            resp = await http.post("/s", content=b"{}")
            assert resp.json() == {"ok": True}
            await asyncio.sleep(0.05)
        assert srv.connections == 3


async def test_nothing_listening_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client(f"http://127.0.0.1:{port}") as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/health")


async def test_concurrent_streams_each_get_their_own_connection() -> None:
    async with Server(sse_answer) as srv, client(srv.url) as http:
        async def one() -> bytes:
            async with http.stream("POST", "/s", content=b"{}") as resp:
                return await collect(resp.aiter_raw())

        results = await asyncio.gather(*(one() for _ in range(8)))
        assert len(set(results)) == 1 and results[0].count(b"data:") == 3
        assert srv.connections == 8
        results = await asyncio.gather(*(one() for _ in range(8)))
        assert srv.connections == 8  # all reused


# post_stream: the bridge's inference call, without httpx's client layers.

def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def test_post_stream_sends_a_plain_post_and_reads_the_stream() -> None:
    transport = EngineTransport()
    async with Server(sse_answer) as srv:
        host, port = address(srv.url)
        for _ in range(2):
            async with await transport.post_stream(host, port, "/v1/chat/completions",
                                                   b'{"a":1}', read_timeout=5,
                                                   connect_timeout=5) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"] == "text/event-stream"
                data = await collect(resp.aiter_raw())
            assert data == b"".join(b"data: {\"n\": %d}\n\n" % i for i in range(3))
        head, _, body = srv.requests[0].partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        assert lines[0] == b"post /v1/chat/completions http/1.1"
        assert b"content-length: 7" in lines and b"accept-encoding: identity" in lines
        assert body == b'{"a":1}'
        assert srv.connections == 1  # read to the end: the connection went back to the pool
    await transport.aclose()


async def test_post_stream_extra_headers_and_an_ipv6_host() -> None:
    transport = EngineTransport()
    async with Server(json_answer, host="::1") as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        async with await transport.post_stream(
                "::1", port, "/v1/completions", b"{}", read_timeout=5, connect_timeout=5,
                extra_headers=b"authorization: Bearer k1\r\nx-a: b\r\n") as resp:
            assert resp.status_code == 201 and await resp.aread() == b'{"ok": true}'
        head = srv.requests[0].partition(b"\r\n\r\n")[0].split(b"\r\n")
        assert f"host: [::1]:{port}".encode() in head  # bracketed, as RFC 7230 asks
        assert head[-2:] == [b"authorization: Bearer k1", b"x-a: b"]
    await transport.aclose()


async def test_post_stream_error_body_and_a_stream_left_early() -> None:
    transport = EngineTransport()
    async with Server(json_answer) as srv:
        host, port = address(srv.url)
        async with await transport.post_stream(host, port, "/x", b"{}", read_timeout=5,
                                               connect_timeout=5) as resp:
            assert (resp.status_code, await resp.aread()) == (201, b'{"ok": true}')
            assert resp.header(b"x-engine") == "synthetic" == resp.headers["x-engine"]
            assert resp.header(b"content-encoding") is None
    async with Server(sse_answer) as srv:
        host, port = address(srv.url)
        for _ in range(2):
            async with await transport.post_stream(host, port, "/s", b"{}", read_timeout=5,
                                                   connect_timeout=5) as resp:
                async for _ in resp.aiter_raw():
                    break
        assert srv.connections == 2  # a body not read to its end closes its connection
    await transport.aclose()


async def test_post_stream_timeouts_and_errors_are_httpx_exceptions() -> None:
    async def stalls(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(5)

    transport = EngineTransport()
    async with Server(stalls) as srv:
        host, port = address(srv.url)
        with pytest.raises(httpx.ReadTimeout):
            async with await transport.post_stream(host, port, "/s", b"{}", read_timeout=0.3,
                                                   connect_timeout=5) as resp:
                await collect(resp.aiter_raw())
    dies = writes_then_closes(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
    async with Server(dies) as srv:
        host, port = address(srv.url)
        with pytest.raises(httpx.RemoteProtocolError):
            async with await transport.post_stream(host, port, "/s", b"{}", read_timeout=5,
                                                   connect_timeout=5) as resp:
                await resp.aread()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await transport.post_stream("127.0.0.1", port, "/s", b"{}", read_timeout=5,
                                    connect_timeout=5)
    await transport.aclose()


async def test_a_large_body_read_late_arrives_whole() -> None:
    """More than the high-water mark unread pauses the socket; reading resumes it."""
    part = bytes(range(256)) * 256  # 64 KiB a chunk frame

    async def big(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(64):  # 4 MiB
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    transport = EngineTransport()
    async with Server(big) as srv:
        host, port = address(srv.url)
        for _ in range(2):
            async with await transport.post_stream(host, port, "/s", b"{}", read_timeout=5,
                                                   connect_timeout=5) as resp:
                await asyncio.sleep(0.3)  # let the engine get ahead of us
                data = await resp.aread()
            assert data == part * 64
        assert srv.connections == 1
    await transport.aclose()
