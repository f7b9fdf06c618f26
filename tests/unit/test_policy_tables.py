"""wattpool.policy.tables: the live router's tables, updated in place from heartbeats."""

from __future__ import annotations

import numpy as np

from wattpool.policy.candidates import IN_FLIGHT, PRICE, Candidate, RequestSpec
from wattpool.policy.scoring import ScoringPolicy
from wattpool.policy.tables import TableBook


def cand(name: str, model: str = "m", **kw: object) -> Candidate:
    return Candidate(instance_id=name, node_id=f"node-{name}", model_id=model,
                     region=str(kw.pop("region", "eu")), **kw)  # type: ignore[arg-type]


def test_a_heartbeat_updates_its_row_without_rebuilding() -> None:
    book = TableBook("eu")
    book.upsert(cand("b", price_per_mwh=10.0))
    book.upsert(cand("a"))
    table = book.table("m")
    assert table.ids == ["a", "b"]  # sorted: ties go to the lowest id
    book.upsert(cand("b", price_per_mwh=99.0, rtt_ms=42.0))
    assert book.table("m") is table  # same object, row written in place
    assert table.m[PRICE, table.row_of["b"]] == 99.0
    assert table.rtt[0, table.row_of["b"]] == 42.0


def test_membership_changes_rebuild_the_table() -> None:
    book = TableBook()
    book.upsert(cand("a"))
    first = book.table("m")
    book.upsert(cand("c", region="us"))  # a new instance in a new region
    second = book.table("m")
    assert second is not first and second.ids == ["a", "c"]
    book.remove("m", "a")
    assert book.table("m").ids == ["c"]
    book.remove("m", "never-there")
    assert book.table("other-model").n == 0


def test_the_routers_own_count_overrides_the_reported_one() -> None:
    book = TableBook()
    book.upsert(cand("a", in_flight=0))
    book.upsert(cand("b", in_flight=1))
    book.set_in_flight("m", "a", 5)
    table = book.table("m")
    assert table.m[IN_FLIGHT, table.row_of["a"]] == 5
    d = ScoringPolicy().choose(RequestSpec("m", 100, 10), table, np.random.default_rng(0))
    assert d.chosen == "b"
