"""The synthetic engine, run as a real subprocess exactly as the node agent starts it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import CompletionUsage

from wattpool.engines.synthetic_server import WORDS, token_text

MODEL = "synthetic-test"
SRC = Path(__file__).resolve().parents[3] / "src"


@dataclass
class Engine:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=10)

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.url}/stats", timeout=5).json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(*flags: str) -> Engine:
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "wattpool.engines.synthetic_server", "--host", "127.0.0.1",
         "--port", str(port), "--model-id", MODEL, *flags],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    engine = Engine(proc, port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"synthetic engine exited early ({proc.returncode}): {err}")
        try:
            if httpx.get(f"{engine.url}/health", timeout=1).status_code == 200:
                return engine
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    _stop(engine)
    raise RuntimeError("synthetic engine did not come up within 20 s")


def _stop(engine: Engine) -> None:
    if engine.proc.poll() is None:
        engine.proc.terminate()
        try:
            engine.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            engine.proc.kill()
            engine.proc.wait()
    if engine.proc.stderr:
        engine.proc.stderr.close()


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    e = _start("--ttft-s", "0.01", "--tokens-per-s", "500", "--context-length", "256")
    try:
        yield e
    finally:
        _stop(e)


@pytest.fixture
def fresh_engine() -> Iterator[list[Engine]]:
    """Engines started by one test, each stopped at its end."""
    started: list[Engine] = []
    try:
        yield started
    finally:
        for e in started:
            _stop(e)


def _expected(n: int) -> str:
    return "".join(token_text(k) for k in range(n))


def _usage(usage: CompletionUsage | None) -> tuple[int, int, int]:
    assert usage is not None
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


def _sse_events(response: httpx.Response) -> Iterator[str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: ") :]


def test_word_list_is_fixed() -> None:
    assert 45 <= len(WORDS) <= 55 and len(set(WORDS)) == len(WORDS)
    assert token_text(0) == WORDS[0] + " " and token_text(len(WORDS)) == token_text(0)


def test_health_and_models(engine: Engine) -> None:
    assert httpx.get(f"{engine.url}/health").json() == {"status": "ok"}
    models = engine.client().models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].owned_by == "wattpool-synthetic"


def test_completion_is_deterministic(engine: Engine) -> None:
    out = engine.client().completions.create(model=MODEL, prompt="one two  three", max_tokens=7)
    assert out.object == "text_completion"
    assert out.choices[0].text == _expected(7)
    assert out.choices[0].text.startswith("alpha bravo charlie ")
    assert out.choices[0].finish_reason == "length"
    assert _usage(out.usage) == (3, 7, 10)


def test_streamed_chat_matches_non_streamed(engine: Engine) -> None:
    client = engine.client()
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
    assert plain.object == "chat.completion"
    assert plain.choices[0].message.content == _expected(12)
    assert plain.usage is not None and plain.usage.prompt_tokens == 4

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_completion_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(content) == 12
    assert "".join(content) == plain.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "length"
    last = chunks[-1]
    assert last.choices == [] and _usage(last.usage) == (4, 12, 16)


def test_stop_sequences(engine: Engine) -> None:
    client = engine.client()
    out = client.completions.create(model=MODEL, prompt="x", max_tokens=20, stop=["delta"])
    assert out.choices[0].text == "alpha bravo charlie "
    assert out.choices[0].finish_reason == "stop"
    # A stop string spanning two tokens is cut before any of it is streamed.
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=20,
        stop="echo fox", stream=True,
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "alpha bravo charlie delta "
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_context_length_exceeded(engine: Engine) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        engine.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "w " * 200}], max_tokens=100
        )
    assert info.value.code == "context_length_exceeded"
    body = info.value.body
    assert isinstance(body, dict)
    assert body["param"] == "messages" and body["type"] == "invalid_request_error"
    assert "maximum context length is 256 tokens" in body["message"]
    assert "300 tokens (200 in the messages, 100 in the completion)" in body["message"]

    bad = httpx.post(f"{engine.url}/v1/completions", content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.post(f"{engine.url}/v1/chat/completions", json={"model": MODEL})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"


def test_disconnect_cancels_generation(fresh_engine: list[Engine]) -> None:
    e = _start("--ttft-s", "0.01", "--tokens-per-s", "20")
    fresh_engine.append(e)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 200,
        "stream": True,
    }
    with httpx.Client(timeout=10) as http:
        with http.stream("POST", f"{e.url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            seen = 0
            for _ in _sse_events(response):
                seen += 1
                if seen == 3:
                    break
    deadline = time.monotonic() + 3
    stats = e.stats()
    while stats["requests_cancelled"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = e.stats()
    assert stats["requests_cancelled"] == 1, stats
    assert stats["active"] == 0 and stats["requests_completed"] == 0
    first = stats["tokens_generated"]
    time.sleep(0.5)
    assert e.stats()["tokens_generated"] == first
    assert 3 <= first < 20


def test_faults(fresh_engine: list[Engine]) -> None:
    e = _start()
    fresh_engine.append(e)
    config = httpx.post(f"{e.url}/admin/faults", json={"error_rate": 1}).json()
    assert config["error_rate"] == 1.0
    r = httpx.post(f"{e.url}/v1/completions", json={"model": MODEL, "prompt": "hi"})
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error"
    assert r.json()["error"]["message"] == "synthetic fault"
    assert e.stats()["requests_failed"] == 1

    bad = httpx.post(f"{e.url}/admin/faults", json={"error_rate": 2})
    assert bad.status_code == 400

    config = httpx.post(f"{e.url}/admin/faults", json={"error_rate": 0, "die_after_tokens": 5})
    assert config.json()["die_after_tokens"] == 5
    body = {"model": MODEL, "prompt": "go", "max_tokens": 50, "stream": True}
    texts: list[str] = []
    done = False
    with pytest.raises(httpx.TransportError):  # the stream breaks mid-iteration
        with httpx.stream("POST", f"{e.url}/v1/completions", json=body, timeout=10) as response:
            for data in _sse_events(response):
                if data == "[DONE]":
                    done = True
                    break
                texts.append(json.loads(data)["choices"][0]["text"])
    assert not done
    assert "".join(texts) == _expected(len(texts)) and len(texts) <= 5
    assert e.proc.wait(timeout=5) != 0
