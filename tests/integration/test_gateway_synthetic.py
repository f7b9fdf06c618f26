"""The gateway's contract with clients, over `wattpool up --engine synthetic`.

The synthetic engine makes these tests fast and lets them watch what the engine
does (its /stats counters); it is a test engine, not inference.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from wattpool.sched import current_slice_us
from wattpool.store import list_usage, make_engine

from pooltools import PoolProcess

MODEL = "synthetic"
MAX_BODY = 65_536
CONTEXT = 256


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolProcess]:
    p = PoolProcess(
        tmp_path_factory.mktemp("synthetic-pool"), "--engine", "synthetic",
        "--context-length", str(CONTEXT), env={"WATTPOOL_MAX_BODY_BYTES": str(MAX_BODY)},
    )
    try:
        p.wait_ready(timeout=60)
        yield p
    finally:
        p.stop()


@pytest.fixture
def client(pool: PoolProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{pool.base_url}/v1", api_key="unused", max_retries=0)


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None,
                        param: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["x-request-id"].startswith("req_")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def test_models_and_completion(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "one two three"}], max_tokens=4)
    assert reply.choices[0].message.content == "alpha bravo charlie delta "
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 4)


def test_invalid_json(pool: PoolProcess) -> None:
    resp = httpx.post(f"{pool.base_url}/v1/chat/completions", content=b"{not json",
                      headers={"content-type": "application/json"})
    assert_openai_error(resp, 400, code="invalid_json")


def test_missing_messages(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=None)  # type: ignore[arg-type]
    assert err.value.body["param"] == "messages"  # type: ignore[index]


def test_missing_prompt(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt=None)  # type: ignore[arg-type]
    assert err.value.body["param"] == "prompt"  # type: ignore[index]


def test_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found"


@pytest.mark.parametrize("max_tokens", [0, -3])
def test_bad_max_tokens(client: openai.OpenAI, max_tokens: int) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=max_tokens)
    assert err.value.body["param"] == "max_tokens"  # type: ignore[index]


@pytest.mark.parametrize("temperature", [-0.5, 2.01])
def test_bad_temperature(client: openai.OpenAI, temperature: float) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=temperature)
    assert err.value.body["param"] == "temperature"  # type: ignore[index]


def test_body_too_large(pool: PoolProcess) -> None:
    prompt = "x" * (MAX_BODY + 10)
    resp = httpx.post(f"{pool.base_url}/v1/completions",
                      json={"model": MODEL, "prompt": prompt})
    assert_openai_error(resp, 413, code="request_too_large")


def test_body_too_large_chunked(pool: PoolProcess) -> None:
    def body() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        yield b'{"model": "synthetic", "prompt": "'
        for _ in range(MAX_BODY // 1000 + 2):
            yield b"y" * 1000
        yield b'"}'
    resp = httpx.post(f"{pool.base_url}/v1/completions", content=body())
    assert_openai_error(resp, 413)


def test_context_length_exceeded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "w " * (CONTEXT + 1)}],
            max_tokens=4)
    assert err.value.code == "context_length_exceeded"


def test_unknown_route_has_openai_shape(pool: PoolProcess) -> None:
    assert_openai_error(httpx.get(f"{pool.base_url}/v1/nothing-here"), 404)


def test_still_serving_after_errors(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="a b", max_tokens=2)
    assert reply.choices[0].text == "alpha bravo "


def test_stream_ends_with_done_and_usage(pool: PoolProcess) -> None:
    with httpx.stream("POST", f"{pool.base_url}/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
        "stream": True, "stream_options": {"include_usage": True},
    }) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-request-id"].startswith("req_")
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}' in events[-2]


def test_metrics(pool: PoolProcess, client: openai.OpenAI) -> None:
    client.completions.create(model=MODEL, prompt="metrics please", max_tokens=5)
    text = httpx.get(f"{pool.base_url}/metrics").text
    assert 'wattpool_requests_total{route="/v1/completions",status="200"}' in text
    assert 'wattpool_requests_total{route="/v1/completions",status="400"}' in text
    assert "wattpool_time_to_first_token_seconds_bucket" in text
    assert "wattpool_request_duration_seconds_count" in text
    assert 'wattpool_tokens_total{kind="completion",model="synthetic"}' in text
    assert "wattpool_requests_in_flight" in text
    assert "wattpool_usage_records_dropped 0.0" in text


@pytest.mark.skipif(current_slice_us() is None, reason="no EEVDF time slices here")
def test_the_pool_loop_asks_for_a_short_slice_and_its_engine_keeps_the_default(
    pool: PoolProcess,
) -> None:
    (engine,) = pool.engine_processes()
    assert current_slice_us(pool.proc.pid) == 100  # WATTPOOL_LOOP_SLICE_US's default
    default = current_slice_us(engine.pid)
    assert default is not None and default > 100


def engine_stats(pool: PoolProcess) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{pool.engine_port()}/stats").json()


def idle_engine_stats(pool: PoolProcess, within_s: float = 10.0) -> dict[str, int]:
    """The engine's counters once no request is active, so a stream left by an earlier
    test (the pool is shared) cannot pass for tokens of the one under test."""
    deadline = time.monotonic() + within_s
    while (stats := engine_stats(pool))["active"]:
        assert time.monotonic() < deadline, f"engine still busy: {stats}"
        time.sleep(0.05)
    return stats


def test_client_disconnect_stops_the_engine(pool: PoolProcess) -> None:
    engine = f"http://127.0.0.1:{pool.engine_port()}"
    httpx.post(f"{engine}/admin/faults", json={"tokens_per_s": 20}).raise_for_status()
    try:
        before = idle_engine_stats(pool)
        with httpx.stream("POST", f"{pool.base_url}/v1/completions", json={
            "model": MODEL, "prompt": "go", "max_tokens": 200, "stream": True,
        }) as resp:
            request_id = resp.headers["x-request-id"]
            received = 0
            for line in resp.iter_lines():
                received += line.startswith("data: ")
                if received == 3:
                    break  # leaving the block closes the connection mid-stream
        deadline = time.monotonic() + 5
        while engine_stats(pool)["requests_cancelled"] == before["requests_cancelled"]:
            assert time.monotonic() < deadline, "engine never saw the cancellation"
            time.sleep(0.1)
        first = engine_stats(pool)["tokens_generated"]
        time.sleep(0.5)
        after = engine_stats(pool)
        assert after["tokens_generated"] == first, "engine kept generating"
        assert after["tokens_generated"] - before["tokens_generated"] < 50
        assert after["active"] == 0
    finally:
        httpx.post(f"{engine}/admin/faults", json={"tokens_per_s": 200})
    db = make_engine(f"sqlite:///{pool.data_dir / 'wattpool.db'}")
    try:
        deadline = time.monotonic() + 5
        while not (rows := list_usage(db, request_id=request_id)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        db.dispose()
    assert rows[0].status == "cancelled" and rows[0].completion_tokens >= 3


def test_client_gone_before_first_token_stops_the_engine(pool: PoolProcess) -> None:
    """A client that gives up while the engine is still thinking (no headers yet) frees
    the engine too, not only one that leaves mid-stream."""
    engine = f"http://127.0.0.1:{pool.engine_port()}"
    ttft = httpx.post(f"{engine}/admin/faults", json={}).json()["ttft_s"]
    httpx.post(f"{engine}/admin/faults", json={"ttft_s": 4.0}).raise_for_status()
    try:
        before = idle_engine_stats(pool)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{pool.base_url}/v1/completions", timeout=httpx.Timeout(5, read=0.5),
                       json={"model": MODEL, "prompt": "go", "max_tokens": 5, "stream": True})
        deadline = time.monotonic() + 2.5  # well before the engine's first token
        while engine_stats(pool)["requests_cancelled"] == before["requests_cancelled"]:
            assert time.monotonic() < deadline, "engine never saw the cancellation"
            time.sleep(0.05)
        assert engine_stats(pool)["tokens_generated"] == before["tokens_generated"]
    finally:
        httpx.post(f"{engine}/admin/faults", json={"ttft_s": ttft})
