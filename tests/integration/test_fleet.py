"""The fleet in separate OS processes: NATS with per-node credentials, PostgreSQL,
`wattpool server`, and nodes that join with tokens (three on the synthetic engine,
one on llama.cpp). Load is bounded and on loopback.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from sqlalchemy import create_engine, text

from wattpool.engines.synthetic_server import token_text

from fleettools import Fleet, Proc, engine_children, wait_until

pytestmark = pytest.mark.slow
SYNTHETIC = "synthetic"
MAX_TOKENS = 40
EXPECTED = "".join(token_text(k) for k in range(MAX_TOKENS))
MAX_BODY = 4_000_000
SYNTHETIC_SPEC = f"{SYNTHETIC},replicas=3,tokens_per_s=12"  # ~3.3 s a stream
GEMMA_SPEC = "gemma3-270m,context=512"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        f.add_site("tx1")
        f.add_site("ny1", region="us-ny")
        f.env["WATTPOOL_MAX_BODY_BYTES"] = str(MAX_BODY)
        f.start_server(SYNTHETIC_SPEC, GEMMA_SPEC)
        for i in range(3):
            f.start_node(f"syn{i}", "synthetic", f.token("tx1"))
        f.start_node("llama", "llamacpp", f.token("ny1"))
        f.wait_ready_instances(4, timeout=180)
        yield f
    finally:
        f.close()


def base_url(fleet: Fleet, index: int = 0) -> str:
    return f"http://127.0.0.1:{fleet.servers[index][1]}/v1"


async def stream_once(client: openai.AsyncOpenAI, i: int) -> tuple[str, str, int, int]:
    """(request id, text, chunks received, completion tokens reported)."""
    raw = await client.completions.with_raw_response.create(
        model=SYNTHETIC, prompt=f"request {i}", max_tokens=MAX_TOKENS, stream=True,
        stream_options={"include_usage": True},
    )
    text_parts: list[str] = []
    reported = -1
    stream = raw.parse()
    if inspect.isawaitable(stream):  # the parse() of some openai versions is async
        stream = await stream
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            text_parts.append(chunk.choices[0].text)
        if chunk.usage is not None:
            reported = chunk.usage.completion_tokens
    return raw.headers["x-request-id"], "".join(text_parts), len(text_parts), reported


async def run_load(url: str, count: int, concurrency: int, max_retries: int = 0,
                   during=None) -> list:  # type: ignore[no-untyped-def]
    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=max_retries,
                                timeout=60)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int):  # type: ignore[no-untyped-def]
        async with gate:
            try:
                return await stream_once(client, i)
            except Exception as exc:  # recorded, asserted on by the test
                return exc

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    if during is not None:
        await during()
    return await asyncio.wait_for(asyncio.gather(*tasks), timeout=180)


def usage_rows(fleet: Fleet, request_ids: list[str]) -> dict[str, tuple[int, str | None]]:
    engine = create_engine(fleet.database_url)
    try:
        deadline = time.monotonic() + 10
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT request_id, completion_tokens, node_id FROM usage_records "
                         "WHERE request_id = ANY(:ids)"), {"ids": request_ids}).all()
            if len(rows) == len(request_ids) or time.monotonic() > deadline:
                return {r[0]: (r[1], r[2]) for r in rows}
            time.sleep(0.3)
    finally:
        engine.dispose()


def test_llama_node_serves_over_nats(fleet: Fleet) -> None:
    client = openai.OpenAI(base_url=base_url(fleet), api_key="x", max_retries=0)
    reply = client.completions.create(model="gemma3-270m", prompt="The sea is", max_tokens=6,
                                      temperature=0)
    assert reply.usage is not None and reply.choices[0].text.strip()
    if reply.choices[0].finish_reason == "length":
        assert reply.usage.completion_tokens == 6
    else:  # the model may end its sentence early
        assert 0 < reply.usage.completion_tokens < 6


def test_large_prompt_crosses_nats(fleet: Fleet) -> None:
    # A 1.5 MB prompt is larger than NATS's 1 MiB payload limit: the bus splits it in parts.
    client = openai.OpenAI(base_url=base_url(fleet), api_key="x", max_retries=0)
    reply = client.completions.create(model=SYNTHETIC, prompt="x" * 1_500_000, max_tokens=2)
    assert reply.choices[0].text == token_text(0) + token_text(1)
    with pytest.raises(openai.APIStatusError) as err:
        client.completions.create(model=SYNTHETIC, prompt="x" * (MAX_BODY + 1), max_tokens=2)
    assert err.value.status_code == 413


def test_kill_a_node_under_load_loses_nothing(fleet: Fleet) -> None:
    victim = "syn1"
    victim_id = fleet.node_id(victim)
    killed_at: list[float] = []

    async def kill_mid_load() -> None:
        await asyncio.sleep(1.5)  # every node is mid-stream now (streams take ~3.3 s)
        fleet.nodes[victim].kill9()
        killed_at.append(time.monotonic())

    results = asyncio.run(run_load(base_url(fleet), count=24, concurrency=8,
                                   during=kill_mid_load))
    failures = [r for r in results if isinstance(r, Exception)]
    assert not failures, failures
    for request_id, text_received, chunks, reported in results:
        assert text_received == EXPECTED, request_id  # nothing missing, nothing repeated
        assert chunks == MAX_TOKENS and reported == MAX_TOKENS
    metrics = httpx.get(base_url(fleet).removesuffix("/v1") + "/metrics").text
    continued = [line for line in metrics.splitlines()
                 if line.startswith("wattpool_stream_continuations_total")]
    assert continued and float(continued[0].split()[-1]) >= 1, "no stream was moved"
    rows = usage_rows(fleet, [r[0] for r in results])
    assert len(rows) == len(results)
    assert sum(c for c, _ in rows.values()) == sum(r[2] for r in results)

    # The dead node leaves routing within the heartbeat timeout (2 s here) and the engine
    # it ran is gone with it.
    time.sleep(max(0.0, killed_at[0] + 2.5 - time.monotonic()))
    later = asyncio.run(run_load(base_url(fleet), count=8, concurrency=4))
    assert not [r for r in later if isinstance(r, Exception)]
    later_rows = usage_rows(fleet, [r[0] for r in later])
    assert victim_id not in {node for _, node in later_rows.values()}
    node = {n["id"]: n for n in fleet.status()["nodes"]}[victim_id]
    assert node["state"] == "unreachable"


def test_node_comes_back_with_the_same_identity(fleet: Fleet) -> None:
    name = "syn1"
    node_id = fleet.node_id(name)
    if fleet.nodes[name].alive():
        fleet.nodes[name].kill9()
    fleet.start_node(name, "synthetic", token=None)  # no token: it has an identity
    wait_until(lambda: {n["id"]: n for n in fleet.status()["nodes"]}[node_id]["state"]
               == "ready", 30, "node back")
    assert fleet.node_id(name) == node_id
    fleet.wait_ready_instances(4, timeout=60)


def test_used_and_expired_tokens_are_refused(fleet: Fleet, tmp_path: Path) -> None:
    token = fleet.token("tx1")
    first = fleet.start_node("once", "synthetic", token)
    fleet.node_id("once")
    again = Proc(["node", "join", "--nats", fleet.nats_url, "--token", token,
                  "--data-dir", str(tmp_path / "again")], tmp_path / "again.log", fleet.env)
    assert again.proc.wait(60) == 1
    assert "used already" in again.log()
    expired = fleet.token("tx1", ttl="1s")
    time.sleep(1.5)
    late = Proc(["node", "join", "--nats", fleet.nats_url, "--token", expired,
                 "--data-dir", str(tmp_path / "late")], tmp_path / "late.log", fleet.env)
    assert late.proc.wait(60) == 1
    assert "expired" in late.log() or "Authorization" in late.log()
    first.stop()


def test_control_plane_restart_under_load(fleet: Fleet) -> None:
    proc, port = fleet.servers[0]
    ready_after: list[float] = []

    def restart() -> None:
        proc.stop()
        fleet.servers.pop(0)
        fleet.start_server(SYNTHETIC_SPEC, GEMMA_SPEC, port=port)

    async def restart_mid_load() -> None:
        await asyncio.sleep(1.5)
        started = time.monotonic()
        await asyncio.to_thread(restart)
        # Serving resumes once the nodes' heartbeats reach the new process.
        async with httpx.AsyncClient() as http:
            while (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code != 200:
                assert time.monotonic() - started < 30, "not ready again"
                await asyncio.sleep(0.1)
        ready_after.append(time.monotonic() - started)

    # The openai client retries connection errors and 503 (Retry-After 1 s) by itself.
    results = asyncio.run(run_load(f"http://127.0.0.1:{port}/v1", count=24, concurrency=6,
                                   max_retries=8, during=restart_mid_load))
    for r in results:
        if isinstance(r, Exception):  # allowed: a retryable failure, never a hang
            assert isinstance(r, openai.APIConnectionError | openai.InternalServerError), r
        else:
            assert r[1] == EXPECTED
    assert sum(not isinstance(r, Exception) for r in results) >= 20
    assert ready_after and ready_after[0] < 10, ready_after


def test_engine_processes_end_with_their_node(fleet: Fleet) -> None:
    proc = fleet.nodes["syn0"]
    engines = engine_children(proc)
    assert engines, "the node runs an engine"
    proc.stop()
    _, alive = psutil.wait_procs(engines, timeout=10)
    assert not alive
