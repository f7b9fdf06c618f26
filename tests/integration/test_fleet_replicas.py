"""Two `wattpool server` replicas on one PostgreSQL and one NATS: both serve, exactly
one leads (advisory lock), and leadership moves when the leader dies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import psutil
import pytest

from fleettools import Fleet, engine_children, wait_until

pytestmark = pytest.mark.slow
SPEC = "synthetic,replicas=1"


@pytest.fixture
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("replicas"))
    try:
        yield f
    finally:
        f.close()


def leaders(fleet: Fleet) -> list[bool]:
    flags = []
    for proc, port in fleet.servers:
        if proc.alive():
            flags.append(httpx.get(f"http://127.0.0.1:{port}/healthz").json()["leader"])
    return flags


def test_two_replicas_one_leader_and_failover(fleet: Fleet) -> None:
    fleet.add_site("tx1")
    fleet.start_server(SPEC)
    fleet.start_server(SPEC)
    wait_until(lambda: leaders(fleet).count(True) == 1, 15, "one leader")
    fleet.start_node("a", "synthetic", fleet.token("tx1"))
    fleet.wait_ready_instances(1)

    for _ in range(10):  # background work on exactly one replica at a time
        assert leaders(fleet).count(True) == 1
        time.sleep(0.2)
    for _, port in fleet.servers:  # both serve requests
        wait_until(lambda p=port: httpx.get(f"http://127.0.0.1:{p}/readyz").status_code == 200,
                   10, f"replica {port} ready")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                               max_retries=0)
        assert client.completions.create(model="synthetic", prompt="p", max_tokens=3).usage

    leader_index = leaders(fleet).index(True)
    leader_proc, _ = fleet.servers[leader_index]
    survivor_port = fleet.servers[1 - leader_index][1]
    leader_proc.kill9()
    started = time.monotonic()
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{survivor_port}/healthz").json()["leader"],
               10, "the survivor leads")
    assert time.monotonic() - started < 10

    # Work that needs the leader goes on: a new node joins (joins are answered by the
    # leader) and the survivor serves.
    fleet.start_node("b", "synthetic", fleet.token("tx1"))
    fleet.node_id("b")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{survivor_port}/v1", api_key="x",
                           max_retries=0)
    reply = client.completions.create(model="synthetic", prompt="p", max_tokens=3)
    assert reply.choices[0].text == "alpha bravo charlie "


def test_lost_node_instances_are_replaced_after_grace(fleet: Fleet) -> None:
    fleet.env["WATTPOOL_REPLACE_GRACE_S"] = "2"
    fleet.add_site("tx1")
    _, port = fleet.start_server(SPEC)
    fleet.start_node("a", "synthetic", fleet.token("tx1"))
    fleet.wait_ready_instances(1)
    fleet.start_node("b", "synthetic", fleet.token("tx1"))
    node_ids = {name: fleet.node_id(name) for name in ("a", "b")}
    (instance,) = [i for i in fleet.status()["instances"] if i["state"] == "ready"]
    holder = next(name for name, nid in node_ids.items() if nid == instance["node_id"])
    other = "b" if holder == "a" else "a"

    fleet.nodes[holder].kill9()
    lost_at = time.monotonic()

    def replaced() -> bool:
        ready = [i for i in fleet.status()["instances"] if i["state"] == "ready"]
        return [i["node_id"] for i in ready] == [node_ids[other]]

    wait_until(replaced, 30, "instance re-placed on the other node")
    # Heartbeat timeout (2 s) + grace (2 s) + engine start: not before the grace ran out.
    assert time.monotonic() - lost_at > 2
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                           max_retries=0)
    assert client.completions.create(model="synthetic", prompt="p", max_tokens=2).usage


def test_llama_stream_continues_on_another_node(fleet: Fleet) -> None:
    """Two llama.cpp nodes; the one generating a stream dies; the stream goes on."""
    fleet.add_site("ny1", region="us-ny")
    _, port = fleet.start_server("gemma3-270m,context=512,replicas=2")
    for name in ("l1", "l2"):
        fleet.start_node(name, "llamacpp", fleet.token("ny1"))
    fleet.wait_ready_instances(2, timeout=180)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                           max_retries=0)
    # A base model sometimes ends its text early: before the kill point (then nothing is
    # killed), or just after it, before the gateway noticed (then nothing is continued,
    # the killed node comes back, and the next prompt is tried).
    prompts = ["Here is a long story about a lighthouse keeper.",
               "Once upon a time, in a small village by the sea,",
               "The history of the Roman Empire begins with",
               "Chapter one. The storm had been building for days"]
    for prompt in prompts:
        chunks: list = []  # type: ignore[type-arg]
        killed: str | None = None
        before = continuations(port)
        # Both idle: the router's own decision says which node will serve it.
        busy = fleet.serving_node("gemma3-270m", prompt, port)
        stream = client.completions.create(
            model="gemma3-270m", prompt=prompt, max_tokens=120, temperature=0, stream=True,
            stream_options={"include_usage": True})
        for chunk in stream:
            chunks.append(chunk)
            if killed is None and len(chunks) == 4:
                engines = engine_children(fleet.nodes[busy])
                fleet.nodes[busy].kill9()
                psutil.wait_procs(engines, timeout=10)
                killed = busy
        finish = [c.choices[0].finish_reason for c in chunks if c.choices
                  and c.choices[0].finish_reason]
        assert finish in (["length"], ["stop"]), finish  # one clean end, never an error
        if killed is None:
            continue
        if continuations(port) == before + 1:
            text_chunks = [c for c in chunks if c.choices and c.choices[0].text]
            usage = chunks[-1].usage
            # The continuation may stop at once; every text chunk the client got counts.
            assert usage is not None and usage.completion_tokens >= len(text_chunks)
            if finish == ["length"]:
                assert usage.completion_tokens == 120
            return
        fleet.start_node(killed, "llamacpp", None)  # rejoins with its saved identity
        fleet.wait_ready_instances(2, timeout=180)
    pytest.fail("no prompt streamed long enough to be continued")


def continuations(port: int) -> float:
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    key = 'wattpool_stream_continuations_total{model="gemma3-270m"} '
    return sum(float(line[len(key):]) for line in metrics.splitlines()
               if line.startswith(key))
