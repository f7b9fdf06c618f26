"""Audits: a node serving a different model than it claims is caught and quarantined.

Three synthetic nodes; one of them cheats (its engine emits other words, as a node
serving a cheaper model would). Canaries go to every node as ordinary requests; the
cheater fails, loses reputation, then traffic, and is quarantined within 50 audits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from fleettools import Fleet, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("audits"))
    try:
        yield f
    finally:
        f.close()


def test_cheating_node_is_quarantined(fleet: Fleet) -> None:
    fleet.add_site("tx1")
    _, port = fleet.start_server("synthetic,replicas=3",
                                 env={"WATTPOOL_AUDIT_INTERVAL_S": "0.3"})
    fleet.start_node("honest1", "synthetic", fleet.token("tx1"))
    fleet.start_node("honest2", "synthetic", fleet.token("tx1"))
    fleet.start_node("cheat", "synthetic", fleet.token("tx1"),
                     env={"WATTPOOL_SYNTHETIC_CHEAT_SHIFT": "7"})
    fleet.wait_ready_instances(3)
    cheat_id = fleet.node_id("cheat")

    def nodes() -> dict[str, dict]:  # type: ignore[type-arg]
        data = httpx.get(f"http://127.0.0.1:{port}/admin/nodes").json()["data"]
        return {n["id"]: n for n in data}

    wait_until(lambda: nodes()[cheat_id]["quarantined"], 60, "cheater quarantined")
    cheat = nodes()[cheat_id]
    assert cheat["audits_passed"] + cheat["audits_failed"] <= 50
    assert cheat["audits_failed"] >= 1
    honest = [n for nid, n in nodes().items() if nid != cheat_id]
    assert all(not n["quarantined"] and n["audits_failed"] == 0 for n in honest), honest

    # Quarantined: customer traffic no longer reaches it.
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                           max_retries=0)
    ids = []
    for i in range(12):
        raw = client.completions.with_raw_response.create(model="synthetic",
                                                          prompt=f"p{i}", max_tokens=3)
        assert raw.parse().choices[0].text == "alpha bravo charlie "
        ids.append(raw.headers["x-request-id"])
    engine = create_engine(fleet.database_url)
    deadline = time.monotonic() + 10
    while True:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT node_id FROM usage_records WHERE request_id = "
                                     "ANY(:ids)"), {"ids": ids}).all()
        if len(rows) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    engine.dispose()
    assert len(rows) == len(ids)
    assert cheat_id not in {r[0] for r in rows}

    # A restart of the control plane does not forgive it: the store kept its reputation.
    proc, _ = fleet.servers.pop()
    proc.kill9()
    fleet.start_server("synthetic,replicas=3", port=port,
                       env={"WATTPOOL_AUDIT_INTERVAL_S": "0"})
    wait_until(lambda: cheat_id in nodes(), 30, "cheater back in the registry")
    again = nodes()[cheat_id]
    assert again["quarantined"] and again["audits_failed"] >= cheat["audits_failed"], again
    fleet.wait_ready_instances(3)
    for i in range(6):
        raw = client.completions.with_raw_response.create(model="synthetic",
                                                          prompt=f"q{i}", max_tokens=3)
        assert raw.parse().choices[0].text == "alpha bravo charlie "
