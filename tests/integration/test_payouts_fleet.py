"""Paid traffic becomes operator credit; a node that fails an audit inside the challenge
window loses its pending credit; the rest turns payable when the window ends.

Two operators: alice runs two honest nodes, bob one node that serves "another model"
(its synthetic engine emits other words). The pool first serves priced requests with
audits off, so every node earns; then it restarts with audits on. Every number below is
read back from the ledger through `wattpool payouts` and `wattpool operators list`.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pytest
import sqlalchemy as sa

from fleettools import Fleet, wait_until

pytestmark = pytest.mark.slow
WINDOW_S = 40
ENV = {"WATTPOOL_CHALLENGE_WINDOW_S": str(WINDOW_S), "WATTPOOL_LEDGER_INTERVAL_S": "0.5"}


@pytest.fixture
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("payouts"))
    try:
        yield f
    finally:
        f.close()


def statement(f: Fleet, operator: str, out: Path) -> dict[str, int]:
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    f.run_cli("payouts", "--operator", operator, "--period", day, "--csv", str(out),
              "--data-dir", str(f.control_dir))
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    return {r["line"]: int(r["micros"]) for r in rows if not r["node"]}


def test_audit_failure_claws_back_pending_credit(fleet: Fleet, tmp_path: Path) -> None:
    control = str(fleet.control_dir)
    for site, operator in (("tx-alice", "alice"), ("tx-bob", "bob")):
        fleet.add_site(site)
        fleet.run_cli("operators", "add", operator, "--data-dir", control)
        fleet.run_cli("operators", "assign-site", site, "--operator", operator,
                      "--data-dir", control)
    fleet.run_cli("tenants", "add", "acme", "--data-dir", control)
    key = fleet.run_cli("keys", "create", "--tenant", "acme", "--data-dir",
                        control).stdout.strip()
    fleet.run_cli("prices", "set", "synthetic", "--prompt", "1000", "--completion", "2000",
                  "--data-dir", control)
    deploy = "synthetic,replicas=3,tokens_per_s=40"
    proc, port = fleet.start_server(deploy, open_access=False,
                                    env={**ENV, "WATTPOOL_AUDIT_INTERVAL_S": "0"})
    fleet.start_node("honest1", "synthetic", fleet.token("tx-alice"))
    fleet.start_node("honest2", "synthetic", fleet.token("tx-alice"))
    fleet.start_node("cheat", "synthetic", fleet.token("tx-bob"),
                     env={"WATTPOOL_SYNTHETIC_CHEAT_SHIFT": "7"})
    fleet.wait_ready_instances(3)
    cheat_id = fleet.node_id("cheat")

    # Paid traffic, three at a time so that every node serves some.
    async def traffic() -> None:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                                    max_retries=0, timeout=60)
        for round_ in range(4):
            await asyncio.gather(*(client.completions.create(
                model="synthetic", prompt=f"job {round_}.{i}", max_tokens=8)
                for i in range(3)))
    asyncio.run(traffic())

    engine = sa.create_engine(fleet.database_url)
    try:
        def charged() -> bool:
            with engine.connect() as conn:
                return conn.scalar(sa.text("SELECT count(*) FROM ledger_charges")) == 12
        wait_until(charged, 20, "12 charges posted by the gateway")
        with engine.connect() as conn:
            served = dict(conn.execute(sa.text(
                "SELECT node_id, count(*) FROM usage_records GROUP BY node_id")).all())
    finally:
        engine.dispose()
    assert len(served) == 3 and served[cheat_id] >= 1, served

    alice = statement(fleet, "alice", tmp_path / "a.csv")
    bob = statement(fleet, "bob", tmp_path / "b.csv")
    for st in (alice, bob):
        assert st["earned"] > 0 and st["pending at end"] == st["earned"]
        assert st["payable at end"] == 0
        assert st["tenant charges on your nodes"] == (
            st["earned"] - st["pool fee"] - st["reserve"] - st["withheld: latency target missed"])

    # Audits on: the cheater is caught inside the window and loses its pending credit.
    proc.kill9()
    fleet.servers.pop()
    fleet.start_server(deploy, port=port, open_access=False,
                       env={**ENV, "WATTPOOL_AUDIT_INTERVAL_S": "0.3"})
    admin = {"Authorization": f"Bearer {admin_key(fleet)}"}

    def quarantined() -> bool:
        data = httpx.get(f"http://127.0.0.1:{port}/admin/nodes", headers=admin,
                         timeout=10).json()["data"]
        return any(n["id"] == cheat_id and n["quarantined"] for n in data)
    wait_until(quarantined, 60, "cheater quarantined")
    wait_until(lambda: statement(fleet, "bob", tmp_path / "b.csv")["pending at end"] == 0,
               20, "bob's credit clawed back")
    bob_after = statement(fleet, "bob", tmp_path / "b.csv")
    assert bob_after["clawed back (failed audits)"] == -bob["earned"]
    assert bob_after["payable at end"] == 0
    assert statement(fleet, "alice", tmp_path / "a.csv")["clawed back (failed audits)"] == 0

    # The window ends: alice's credit, untouched, turns payable (the leader matures it).
    wait_until(lambda: statement(fleet, "alice", tmp_path / "a.csv")["payable at end"]
               == alice["earned"], WINDOW_S + 30, "alice's credit payable")
    assert statement(fleet, "alice", tmp_path / "a.csv")["pending at end"] == 0
    assert statement(fleet, "bob", tmp_path / "b.csv")["payable at end"] == 0


def admin_key(fleet: Fleet) -> str:
    out = fleet.run_cli("keys", "create", "--tenant", "acme", "--admin", "--data-dir",
                        str(fleet.control_dir))
    return out.stdout.strip()
