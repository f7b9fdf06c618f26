"""The load generator's logic: percentiles, the arrival schedule, loopback refusal, the
SSE timing reader and the JSON report. No timed assertions: times are fed in."""

from __future__ import annotations

import asyncio
import json
import math
import random
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wattpool.benchtools import (
    LoadResult,
    LoadSpec,
    RequestResult,
    TargetRefused,
    check_target,
    describe,
    is_loopback_host,
    percentile,
    poisson_arrivals,
    run_load,
    summarize,
    table,
)
from wattpool.benchtools.runner import _SseReader

# --- percentiles -------------------------------------------------------------------


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([5.0], 50, 5.0),
    ([5.0], 99, 5.0),
    ([1.0, 2.0], 50, 1.5),
    ([3.0, 1.0, 2.0], 0, 1.0),
    ([3.0, 1.0, 2.0], 100, 3.0),
    ([float(i) for i in range(1, 101)], 50, 50.5),
    ([float(i) for i in range(1, 101)], 90, 90.1),
    ([float(i) for i in range(1, 101)], 99, 99.01),
], ids=["one value is every percentile", "one value at p99", "two values meet halfway",
        "p0 is the minimum", "p100 is the maximum", "1..100 p50", "1..100 p90", "1..100 p99"])
def test_percentile_table(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_none_and_bad_q_is_refused() -> None:
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        percentile([1.0], -1)


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=200),
       st.floats(0, 100))
def test_percentile_matches_numpy_linear(values: list[float], q: float) -> None:
    ours = percentile(values, q)
    assert ours is not None
    assert ours == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-6)


def test_describe_reports_milliseconds() -> None:
    d = describe([0.001, 0.002, 0.003, 0.004])
    assert d is not None
    assert (d.count, d.min, d.max) == (4, 1.0, 4.0)
    assert d.mean == pytest.approx(2.5)
    assert d.p50 == pytest.approx(2.5)
    assert describe([]) is None


# --- arrival schedule --------------------------------------------------------------


def test_schedule_is_bounded_by_count() -> None:
    arrivals = poisson_arrivals(1000.0, max_requests=50, max_duration_s=3600,
                                rng=random.Random(1))
    assert len(arrivals) == 50


def test_schedule_is_bounded_by_time() -> None:
    arrivals = poisson_arrivals(100.0, max_requests=10**9, max_duration_s=2.0,
                                rng=random.Random(1))
    assert arrivals and all(0 < t < 2.0 for t in arrivals)
    # ~200 expected; a Poisson count this far off would be a broken generator.
    assert 120 < len(arrivals) < 280


@given(st.floats(0.5, 5000), st.integers(0, 500), st.floats(0, 5), st.integers(0, 2**32))
def test_schedule_bounds_hold_for_any_input(rate: float, count: int, duration: float,
                                            seed: int) -> None:
    arrivals = poisson_arrivals(rate, max_requests=count, max_duration_s=duration,
                                rng=random.Random(seed))
    assert len(arrivals) <= count
    assert all(0 < t < duration for t in arrivals)
    assert arrivals == sorted(arrivals)


def test_schedule_mean_gap_is_one_over_rate_and_seed_repeats() -> None:
    a = poisson_arrivals(50.0, max_requests=20_000, max_duration_s=10**6, rng=random.Random(7))
    b = poisson_arrivals(50.0, max_requests=20_000, max_duration_s=10**6, rng=random.Random(7))
    assert a == b
    gaps = np.diff([0.0, *a])
    assert gaps.mean() == pytest.approx(1 / 50.0, rel=0.05)
    # Exponential gaps: the standard deviation equals the mean.
    assert gaps.std() == pytest.approx(1 / 50.0, rel=0.05)


def test_schedule_refuses_a_rate_of_zero() -> None:
    with pytest.raises(ValueError):
        poisson_arrivals(0.0, max_requests=1, max_duration_s=1, rng=random.Random(0))


# --- loopback only -----------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/v1", "http://127.5.6.7/v1", "http://[::1]:9000/v1",
    "http://localhost:8000/v1", "https://127.0.0.1/v1",
], ids=["127.0.0.1", "anywhere in 127/8", "ipv6 loopback", "localhost", "https loopback"])
def test_loopback_targets_are_accepted(url: str) -> None:
    check_target(url)


@pytest.mark.parametrize("url", [
    "http://10.0.0.1:8000/v1", "http://192.168.1.10/v1", "http://[2001:db8::1]/v1",
    "http://example.com/v1", "http://0.0.0.0:8000/v1", "http://128.0.0.1/v1",
    "ftp://127.0.0.1/v1",
], ids=["private v4", "lan", "public v6", "a name is not resolved", "0.0.0.0 is not loopback",
        "just outside 127/8", "not http"])
def test_other_targets_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused if url.startswith("http") else ValueError):
        check_target(url)


def test_allow_remote_lifts_the_rule_and_spec_checks_it() -> None:
    check_target("http://10.0.0.1:8000/v1", allow_remote=True)
    with pytest.raises(TargetRefused):
        LoadSpec(base_url="http://10.0.0.1/v1", model="m", rate=1).check()
    LoadSpec(base_url="http://10.0.0.1/v1", model="m", rate=1, allow_remote=True).check()
    assert not is_loopback_host("localhost.example.com")


@pytest.mark.parametrize("kwargs", [
    {}, {"rate": 1, "concurrency": 1}, {"rate": 0}, {"concurrency": 0},
    {"rate": 1, "max_requests": 0}, {"rate": 1, "max_duration_s": 0},
], ids=["neither rate nor concurrency", "both", "zero rate", "no clients", "no requests",
        "no time"])
def test_spec_refuses_unbounded_or_ambiguous_loads(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LoadSpec(base_url="http://127.0.0.1/v1", model="m", **kwargs).check()  # type: ignore[arg-type]


def test_request_body_asks_for_usage_when_streamed() -> None:
    chat = json.loads(LoadSpec(base_url="http://127.0.0.1/v1", model="m", rate=1).body())
    assert chat["messages"][0]["role"] == "user"
    assert chat["stream"] and chat["stream_options"] == {"include_usage": True}
    whole = json.loads(LoadSpec(base_url="http://127.0.0.1/v1", model="m", rate=1,
                                kind="completion", stream=False).body())
    assert "prompt" in whole and "stream_options" not in whole


# --- the SSE reader ----------------------------------------------------------------


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_sse_reader_times_text_events_across_split_reads() -> None:
    res = RequestResult(scheduled=0.0)
    reader = _SseReader(res, start=10.0)
    role = _event({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    one = _event({"choices": [{"delta": {"content": "a "}}]})
    two = _event({"choices": [{"text": "b "}]})
    usage = _event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7}})
    stream = role + one + two.replace(b"\n", b"\r\n") + usage + b"data: [DONE]\n\n"
    # Bytes arrive in awkward pieces, at known times.
    cut1, cut2 = len(role) + 5, len(role) + len(one) + 3
    reader.feed(stream[:cut1], 10.010)
    reader.feed(stream[cut1:cut2], 10.015)
    reader.feed(stream[cut2:], 10.018)
    assert reader.done
    assert res.ttft == pytest.approx(0.015)  # the role-only event carries no text
    assert res.gaps == [pytest.approx(0.003)]
    assert res.chunks == 2 and res.tokens == 7 and res.error is None


def test_sse_reader_flags_error_events() -> None:
    res = RequestResult(scheduled=0.0)
    reader = _SseReader(res, start=0.0)
    reader.feed(_event({"error": {"message": "boom"}}), 1.0)
    assert res.error == "stream_error" and not res.ok


def test_sse_reader_reads_events_of_other_shapes_as_plain_json() -> None:
    """Events the typed decoder refuses still count: text that is a number, a usage
    without completion_tokens, a list; JSON that does not parse is an error."""
    res = RequestResult(scheduled=0.0)
    reader = _SseReader(res, start=0.0)
    reader.feed(_event({"choices": [{"delta": {"content": 5}}]}), 1.0)
    reader.feed(_event({"choices": [{"text": "x"}], "usage": {"prompt_tokens": 2}}), 2.0)
    reader.feed(_event([1, 2]) + _event({"choices": [{"delta": None, "text": "y"}],
                                          "usage": {"completion_tokens": 9}}), 3.0)
    assert (res.ttft, res.gaps, res.chunks, res.tokens) == (1.0, [1.0, 1.0], 3, 9)
    assert res.error is None
    reader.feed(b"data: {not json\n\n", 4.0)
    assert res.error == "bad_event"


def test_spec_picks_the_client_by_scheme_and_refuses_lean_https() -> None:
    def spec(url: str, client: str) -> LoadSpec:
        return LoadSpec(base_url=url, model="m", rate=1, client=client,  # type: ignore[arg-type]
                        allow_remote=True)

    assert spec("http://127.0.0.1:1/v1", "auto").lean
    assert not spec("https://127.0.0.1:1/v1", "auto").lean
    assert not spec("http://127.0.0.1:1/v1", "httpx").lean
    with pytest.raises(ValueError, match="plain http"):
        spec("https://127.0.0.1:1/v1", "lean").check()
    with pytest.raises(ValueError, match="client must be"):
        spec("http://127.0.0.1:1/v1", "curl").check()


SSE_ANSWER = b"".join(
    _event({"choices": [{"delta": {"content": f"t{i} "}}]}) for i in range(4)
) + _event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}) + \
    b"data: [DONE]\n\n"


async def _sse_server(heads: list[bytes], status: int = 200) -> asyncio.Server:
    """A raw HTTP/1.1 server on loopback that answers every POST with SSE_ANSWER,
    chunked and in pieces; ``heads`` gets each request's head, and "(connection)" for
    each connection opened."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(b"(connection)")
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 %d X\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n" % status)
                for piece in (SSE_ANSWER[:40], SSE_ANSWER[40:]):
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@pytest.mark.parametrize("client", ["lean", "httpx"])
async def test_both_clients_send_the_key_and_read_the_same_answers(client: str) -> None:
    heads: list[bytes] = []
    server = await _sse_server(heads)
    port = server.sockets[0].getsockname()[1]
    spec = LoadSpec(base_url=f"http://127.0.0.1:{port}/v1", model="m", concurrency=2,
                    max_requests=6, max_duration_s=10, api_key="sk-test",
                    client=client)  # type: ignore[arg-type]
    try:
        result = await run_load(spec)
    finally:
        server.close()
    assert [(r.status, r.error, r.chunks, r.tokens) for r in result.results] == \
        [(200, None, 4, 4)] * 6
    assert all(r.ttft is not None and r.e2e is not None and r.e2e >= r.ttft
               for r in result.results)
    assert heads.count(b"(connection)") == 2  # one per client, kept alive
    requests = [h for h in heads if h != b"(connection)"]
    assert len(requests) == 6
    for head in requests:
        lines = head.lower().split(b"\r\n")
        assert lines[0] == b"post /v1/chat/completions http/1.1"
        assert b"authorization: bearer sk-test" in lines
    assert summarize(result)["load"]["client"] == client


async def test_an_error_status_is_counted_and_the_connection_kept() -> None:
    heads: list[bytes] = []
    server = await _sse_server(heads, status=503)
    port = server.sockets[0].getsockname()[1]
    spec = LoadSpec(base_url=f"http://127.0.0.1:{port}/v1", model="m", concurrency=1,
                    max_requests=3, max_duration_s=10)
    try:
        result = await run_load(spec)
    finally:
        server.close()
    assert [(r.status, r.error) for r in result.results] == [(503, "http_503")] * 3
    assert heads.count(b"(connection)") == 1  # the error body was read: connection reused


# --- the report --------------------------------------------------------------------


def _result(ttft: float, e2e: float, status: int = 200, error: str | None = None
            ) -> RequestResult:
    return RequestResult(scheduled=0.0, started=0.001, status=status, ttft=ttft, e2e=e2e,
                         gaps=[0.001, 0.002], chunks=3, tokens=64, error=error)


def test_report_json_shape_and_figures() -> None:
    spec = LoadSpec(base_url="http://127.0.0.1:1/v1", model="synthetic", rate=100,
                    max_requests=10, max_duration_s=1)
    results = [_result(0.002, 0.010), _result(0.004, 0.020),
               _result(0.0, 0.0, status=503, error="http_503"),
               RequestResult(scheduled=0.5, started=0.6, error="timeout")]
    report = summarize(LoadResult(spec, datetime(2026, 1, 1, tzinfo=UTC), 2.0, results))
    json.dumps(report)  # plain JSON, no NaN or objects
    assert set(report) == {"report_version", "started_at", "target", "load", "wall_s",
                           "requests", "throughput", "latency_ms", "client_lag_ms"}
    assert report["requests"] == {"sent": 4, "ok": 2, "errors": 2,
                                  "error_kinds": {"http_503": 1, "timeout": 1}}
    assert report["throughput"] == {"requests_per_s": 1.0, "tokens_per_s": 64.0,
                                    "completion_tokens": 128}
    lat = report["latency_ms"]
    assert set(lat) == {"ttft", "itl", "e2e"}
    assert set(lat["ttft"]) == {"count", "mean", "min", "p50", "p90", "p99", "max"}
    assert lat["ttft"]["count"] == 2 and lat["ttft"]["p50"] == pytest.approx(3.0)
    assert lat["itl"]["count"] == 4 and lat["e2e"]["max"] == pytest.approx(20.0)
    assert report["client_lag_ms"]["max"] == pytest.approx(100.0)
    assert report["load"]["mode"] == "rate" and report["target"]["stream"] is True
    assert table(report).row_count == 3


def test_report_of_a_run_where_everything_failed() -> None:
    spec = LoadSpec(base_url="http://127.0.0.1:1/v1", model="m", concurrency=2)
    report = summarize(LoadResult(spec, datetime.now(UTC), 0.0,
                                  [RequestResult(scheduled=0.0, error="ConnectError")]))
    assert report["latency_ms"] == {"ttft": None, "itl": None, "e2e": None}
    assert report["throughput"]["requests_per_s"] == 0.0
    assert not math.isnan(report["wall_s"])
    assert table(report).row_count == 3
