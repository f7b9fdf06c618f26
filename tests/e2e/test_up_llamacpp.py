"""`wattpool up` on the real llama.cpp engine and the shipped Gemma 3 270M model.

Everything is real: the CLI in its own process, llama-cpp-python's server as the
engine subprocess, SQLite in the data folder, the official `openai` client.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from wattpool.engines.chat_template import render_gemma
from wattpool.store import list_instances, list_usage, make_engine

from pooltools import WATTPOOL, PoolProcess

pytestmark = pytest.mark.slow
MODEL = "gemma3-270m"
CONTEXT = 512


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolProcess]:
    p = PoolProcess(tmp_path_factory.mktemp("llama-pool"), "--context-length", str(CONTEXT))
    try:
        p.wait_ready()
        yield p
    finally:
        p.stop()


@pytest.fixture
def client(pool: PoolProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{pool.base_url}/v1", api_key="unused", max_retries=0)


def engine_usage(pool: PoolProcess, prompt: str, max_tokens: int) -> tuple[str, dict[str, int]]:
    """Ask the engine directly (not through wattpool) what it generates and counts."""
    resp = httpx.post(
        f"http://127.0.0.1:{pool.engine_port()}/v1/completions",
        json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": False},
        timeout=60,
    )
    resp.raise_for_status()
    body = resp.json()
    return body["choices"][0]["text"], body["usage"]


def usage_record(pool: PoolProcess, request_id: str):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{pool.data_dir / 'wattpool.db'}")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = list_usage(engine, request_id=request_id)
            if rows:
                return rows[0]
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise AssertionError(f"no usage record for {request_id}")


def test_model_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


ATTEMPTS = 3  # see compare_with_engine


def compare_with_engine(pool: PoolProcess, prompt: str, max_tokens: int, through_gateway):  # type: ignore[no-untyped-def]
    """Run the same greedy request through wattpool and straight on the engine.

    llama.cpp reuses the KV cache of the previous prompt, and evaluating a prompt in other
    batches can flip a near-tie even at temperature 0, so the two texts can differ now and
    then. The prompt count must always agree; the texts and completion counts are
    compared on the first attempt whose texts agree (of ATTEMPTS).
    """
    for _ in range(ATTEMPTS):
        engine_usage(pool, prompt, max_tokens)  # the same cache state before each call
        request_id, text, usage = through_gateway()
        engine_text, counts = engine_usage(pool, prompt, max_tokens)
        assert usage.prompt_tokens == counts["prompt_tokens"]
        if text == engine_text:
            assert usage.completion_tokens == counts["completion_tokens"]
            return request_id, text, usage
    raise AssertionError(f"texts differed in {ATTEMPTS} attempts: {text!r} / {engine_text!r}")


def test_completion_counts_match_engine(pool: PoolProcess, client: openai.OpenAI) -> None:
    prompt = "The capital of France is"

    def gateway():  # type: ignore[no-untyped-def]
        raw = client.completions.with_raw_response.create(
            model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
        reply = raw.parse()
        assert reply.usage is not None
        return raw.headers["x-request-id"], reply.choices[0].text, reply.usage

    request_id, text, usage = compare_with_engine(pool, prompt, 8, gateway)
    assert text.strip()
    record = usage_record(pool, request_id)
    assert (record.prompt_tokens, record.completion_tokens) == (
        usage.prompt_tokens, usage.completion_tokens)
    assert record.status == "ok" and record.kind == "completion"


def test_streamed_chat_with_usage(pool: PoolProcess, client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Name a large city in Europe."},
    ]

    def gateway():  # type: ignore[no-untyped-def]
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, max_tokens=24, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(raw.parse())
        pieces = [c.choices[0].delta.content for c in chunks
                  if c.choices and c.choices[0].delta.content]
        assert len(pieces) >= 3, "text should arrive in several chunks"
        usage_chunks = [c for c in chunks if c.usage is not None]
        assert len(usage_chunks) == 1 and chunks[-1].usage is not None
        assert chunks[-1].choices == []
        return raw.headers["x-request-id"], "".join(pieces), chunks[-1].usage

    request_id, _, usage = compare_with_engine(pool, render_gemma(messages), 24, gateway)
    record = usage_record(pool, request_id)
    assert (record.prompt_tokens, record.completion_tokens) == (
        usage.prompt_tokens, usage.completion_tokens)
    assert record.ttft_ms is not None and record.ttft_ms <= record.duration_ms


def test_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True))
    assert all(c.usage is None for c in chunks)
    # A sampled model may also end its text before max_tokens.
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_prompt_longer_than_context(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="word " * (CONTEXT * 2), max_tokens=4)
    assert err.value.code == "context_length_exceeded"
    assert err.value.body["param"] == "prompt"  # type: ignore[index]


def status_json(pool: PoolProcess) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [*WATTPOOL, "status", "--json", "--data-dir", str(pool.data_dir)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    return json.loads(out)


def test_killed_engine_is_restarted(pool: PoolProcess, client: openai.OpenAI) -> None:
    (engine,) = pool.engine_processes()
    db = make_engine(f"sqlite:///{pool.data_dir / 'wattpool.db'}")
    engine.kill()
    seen: list[str] = []
    got_503 = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            states = [i.state for i in list_instances(db) if i.state != "stopped"]
            seen += [s for s in states if not seen or seen[-1] != s]
            if not got_503 and httpx.get(f"{pool.base_url}/readyz").status_code == 503:
                with pytest.raises(openai.APIStatusError) as err:
                    client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
                assert err.value.status_code == 503
                assert int(err.value.response.headers["retry-after"]) > 0
                assert err.value.code == "no_capacity"
                got_503 = True
            if "failed" in seen and states == ["ready"]:
                break
            time.sleep(0.05)
    finally:
        db.dispose()
    assert "failed" in seen and seen[-1] == "ready", seen
    assert got_503
    (instance,) = [i for i in status_json(pool)["instances"] if i["state"] != "stopped"]
    assert instance["state"] == "ready" and instance["restarts"] == 1
    assert pool.engine_processes()[0].pid != engine.pid
    reply = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0)
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_everything(tmp_path: Path, sig: signal.Signals) -> None:
    p = PoolProcess(tmp_path / "pool")
    try:
        p.wait_ready()
        engines = p.engine_processes()
        assert len(engines) == 1
    finally:
        code = p.stop(sig)
    assert code == 0, p.log()
    _, alive = psutil.wait_procs(engines, timeout=10)
    assert not alive, f"engine left behind: {alive}"
    assert "wattpool is serving" in p.log() and MODEL in p.log()
    status = subprocess.run(
        [*WATTPOOL, "status", "--json", "--data-dir", str(p.data_dir)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert {i["state"] for i in json.loads(status)["instances"]} == {"stopped"}
