"""Priority classes when capacity is short, over `wattpool up --engine synthetic` with one
slot: interactive work goes first, a running batch stream is preempted and still
delivered whole, and a request that waits past its deadline gets 503 + Retry-After.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from wattpool.engines.synthetic_server import token_text

from pooltools import PoolProcess

MODEL = "synthetic"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolProcess]:
    p = PoolProcess(tmp_path_factory.mktemp("priority"), "--engine", "synthetic", env={
        "WATTPOOL_INSTANCE_SLOTS": "1", "WATTPOOL_SYNTHETIC_TOKENS_PER_S": "25",
        "WATTPOOL_QUEUE_TIMEOUT_S": "2", "WATTPOOL_RETRY_AFTER_S": "3",
    })
    try:
        p.wait_ready(timeout=60)
        yield p
    finally:
        p.stop()


def client(pool: PoolProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{pool.base_url}/v1", api_key="x", max_retries=0,
                         timeout=60)


def test_batch_stream_preempted_and_delivered_whole(pool: PoolProcess) -> None:
    batch_text: list[str] = []
    batch_done = threading.Event()

    def run_batch() -> None:
        stream = client(pool).completions.create(
            model=MODEL, prompt="batch job", max_tokens=50, stream=True,
            extra_body={"service_tier": "flex"})
        for chunk in stream:
            if chunk.choices:
                batch_text.append(chunk.choices[0].text)
        batch_done.set()

    worker = threading.Thread(target=run_batch)
    worker.start()
    time.sleep(0.8)  # the batch stream holds the only slot, ~20 tokens in
    started = time.monotonic()
    reply = client(pool).completions.create(model=MODEL, prompt="now", max_tokens=5)
    interactive_s = time.monotonic() - started
    assert reply.choices[0].text == "".join(token_text(k) for k in range(5))
    assert not batch_done.is_set(), "the interactive request ran before the batch finished"
    assert interactive_s < 1.5  # it did not wait for the batch stream's remaining ~1.2 s
    worker.join(30)
    assert "".join(batch_text) == "".join(token_text(k) for k in range(50))
    assert "preempting batch request" in pool.log() or "preempted" in pool.log()


def test_queued_past_deadline_gets_503(pool: PoolProcess) -> None:
    holder = threading.Thread(target=lambda: client(pool).completions.create(
        model=MODEL, prompt="long", max_tokens=100))
    holder.start()
    time.sleep(0.3)
    started = time.monotonic()
    resp = httpx.post(f"{pool.base_url}/v1/completions", timeout=30,
                      json={"model": MODEL, "prompt": "late", "max_tokens": 2})
    waited = time.monotonic() - started
    holder.join(30)
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"] == "3"
    assert resp.json()["error"]["code"] == "no_capacity"
    assert 1.5 < waited < 5


def test_bad_service_tier(pool: PoolProcess) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(pool).completions.create(model=MODEL, prompt="x", max_tokens=1,
                                        extra_body={"service_tier": "platinum"})
    assert err.value.body["param"] == "service_tier"  # type: ignore[index]
