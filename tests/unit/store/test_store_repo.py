"""Every repository function round-trips; upserts update instead of duplicating.

The same tests run against PostgreSQL when a driver is importable and a server is
reachable at $WATTPOOL_TEST_POSTGRES_URL; otherwise those variants are skipped.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, create_engine, exc, make_url, text

from wattpool.store import (
    UsageRecord,
    delete_deployment,
    delete_instance,
    downgrade,
    insert_usage,
    list_deployments,
    list_instances,
    list_models,
    list_nodes,
    list_usage,
    make_engine,
    migrate,
    set_node_state,
    upsert_deployment,
    upsert_instance,
    upsert_model,
    upsert_node,
)

PG_URL = os.environ.get(
    "WATTPOOL_TEST_POSTGRES_URL",
    "postgresql+psycopg://postgres@127.0.0.1:5432/wattpool_test",
)


def _skip_or_fail(reason: str) -> None:
    # CI starts PostgreSQL (scripts/services.sh): there a missing server is a failure.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _ensure_database(url: str) -> None:
    """Create the test database on first use (the server's own `postgres` db exists)."""
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}
            ).scalar()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    finally:
        admin.dispose()


def _postgres_engine() -> Iterator[Engine]:
    if importlib.util.find_spec("psycopg") is None:
        _skip_or_fail("psycopg (PostgreSQL driver) is not installed")
    try:
        _ensure_database(PG_URL)
    except exc.OperationalError as err:
        _skip_or_fail(f"no PostgreSQL at {PG_URL}: {err.orig}")
    engine = make_engine(PG_URL)
    downgrade(engine, "base")  # start from an empty schema
    migrate(engine)
    try:
        yield engine
    finally:
        downgrade(engine, "base")
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_engine")
    else:
        yield from _postgres_engine()


def test_nodes_round_trip_and_upsert(engine: Engine) -> None:
    seen = datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    hw = {"cpu_count": 8, "gpus": [{"index": 0, "name": "H200", "memory_total": 1 << 30}]}
    row = upsert_node(engine, "node_a", "alpha", hw, "ready", seen)
    assert row.hardware == hw and row.last_seen == seen
    assert row.last_seen is not None and row.last_seen.tzinfo is not None

    upsert_node(engine, "node_b", "beta", {}, "ready", None)
    later = seen + timedelta(minutes=5)
    upsert_node(engine, "node_a", "alpha-2", {"cpu_count": 4}, "unreachable", later)

    nodes = {n.id: n for n in list_nodes(engine)}
    assert set(nodes) == {"node_a", "node_b"}
    a = nodes["node_a"]
    assert (a.name, a.hardware, a.state) == ("alpha-2", {"cpu_count": 4}, "unreachable")
    assert a.last_seen == later and a.last_seen.utcoffset() == timedelta(0)
    assert a.created_at == row.created_at  # an update keeps the creation time
    assert a.created_at.tzinfo is not None
    assert nodes["node_b"].last_seen is None

    assert set_node_state(engine, "node_a", "ready") is True
    assert set_node_state(engine, "node_zzz", "ready") is False
    assert {n.id: n.state for n in list_nodes(engine)}["node_a"] == "ready"


def test_rows_are_frozen_dataclasses(engine: Engine) -> None:
    row = upsert_model(engine, "m", "src", "synthetic", 512)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.engine = "x"  # type: ignore[misc]


def test_models_round_trip_and_upsert(engine: Engine) -> None:
    first = upsert_model(engine, "gemma3-270m", "gemma3-270m", "llamacpp", 2048)
    upsert_model(engine, "tiny", "/models/tiny.gguf", "synthetic", 512)
    upsert_model(engine, "gemma3-270m", "org/repo:file.gguf", "llamacpp", 4096)
    models = {m.id: m for m in list_models(engine)}
    assert set(models) == {"gemma3-270m", "tiny"}
    g = models["gemma3-270m"]
    assert (g.source, g.engine, g.context_length) == ("org/repo:file.gguf", "llamacpp", 4096)
    assert g.created_at == first.created_at


def test_deployments_round_trip_and_upsert(engine: Engine) -> None:
    upsert_model(engine, "m1", "s", "synthetic", 512)
    upsert_model(engine, "m2", "s", "synthetic", 512)
    upsert_deployment(engine, "dep_1", "m1", 1)
    upsert_deployment(engine, "dep_1", "m2", 3)
    upsert_deployment(engine, "dep_2", "m1", 2)
    deps = {d.id: d for d in list_deployments(engine)}
    assert set(deps) == {"dep_1", "dep_2"}
    assert (deps["dep_1"].model_id, deps["dep_1"].replicas) == ("m2", 3)
    assert delete_deployment(engine, "dep_2") is True
    assert delete_deployment(engine, "dep_2") is False
    assert [d.id for d in list_deployments(engine)] == ["dep_1"]


def test_deployment_needs_a_known_model(engine: Engine) -> None:
    with pytest.raises(exc.IntegrityError):
        upsert_deployment(engine, "dep_x", "no-such-model", 1)


def test_instances_round_trip_and_upsert(engine: Engine) -> None:
    upsert_node(engine, "node_a", "a", {}, "ready", None)
    upsert_model(engine, "m1", "s", "synthetic", 512)
    upsert_deployment(engine, "dep_1", "m1", 1)
    first = upsert_instance(engine, "inst_1", "m1", "node_a", "scheduled", deployment_id="dep_1")
    assert (first.restarts, first.error, first.deployment_id) == (0, None, "dep_1")
    upsert_instance(engine, "inst_2", "m1", None, "scheduled")
    upsert_instance(
        engine, "inst_1", "m1", "node_a", "failed", restarts=2, error="oom", deployment_id="dep_1"
    )
    insts = {i.id: i for i in list_instances(engine)}
    assert set(insts) == {"inst_1", "inst_2"}
    i1 = insts["inst_1"]
    assert (i1.state, i1.restarts, i1.error, i1.node_id) == ("failed", 2, "oom", "node_a")
    assert i1.updated_at >= first.updated_at and i1.updated_at.tzinfo is not None
    assert insts["inst_2"].node_id is None and insts["inst_2"].deployment_id is None

    assert delete_instance(engine, "inst_2") is True
    assert delete_instance(engine, "inst_2") is False
    assert [i.id for i in list_instances(engine)] == ["inst_1"]


def test_instance_needs_a_known_node(engine: Engine) -> None:
    with pytest.raises(exc.IntegrityError):
        upsert_instance(engine, "inst_x", "m1", "node_unknown", "scheduled")


def test_usage_round_trip(engine: Engine, make_record: Callable[..., UsageRecord]) -> None:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    recs = [make_record(created_at=base + timedelta(seconds=i)) for i in range(5)]
    recs.append(
        make_record(
            kind="completion",
            node_id=None,
            instance_id=None,
            ttft_ms=None,
            status="cancelled",
            http_status=499,
            created_at=base + timedelta(seconds=10),
        )
    )
    assert insert_usage(engine, recs) == 6
    assert insert_usage(engine, []) == 0

    got = list_usage(engine)
    assert [r.request_id for r in got] == [r.request_id for r in reversed(recs)]  # newest first
    assert all(r.id is not None for r in got)
    for stored, original in zip(got, reversed(recs), strict=True):
        assert dataclasses.replace(stored, id=None) == original

    assert [r.request_id for r in list_usage(engine, limit=2)] == [
        recs[5].request_id,
        recs[4].request_id,
    ]
    one = list_usage(engine, request_id=recs[2].request_id)
    assert len(one) == 1 and one[0].prompt_tokens == recs[2].prompt_tokens
    assert list_usage(engine, request_id="nope") == []


def test_usage_insert_skips_known_request_ids(
    engine: Engine, make_record: Callable[..., UsageRecord]
) -> None:
    recs = [make_record() for _ in range(3)]
    assert insert_usage(engine, recs[:2]) == 2
    # A retried batch (first attempt committed, outcome lost) must not duplicate.
    assert insert_usage(engine, recs) == 1
    assert len(list_usage(engine)) == 3
