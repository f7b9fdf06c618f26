"""Two `wattpool server` replicas on one PostgreSQL and one NATS: both serve, exactly
one leads (advisory lock), and leadership moves when the leader dies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from fleettools import Fleet, wait_until

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
