"""UsageWriter against real SQLite files: batching, overflow, outages, shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, event

from wattpool.store import UsageRecord, UsageWriter, downgrade, list_usage, migrate

MakeRecord = Callable[..., UsageRecord]


async def _wait_until(cond: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def _count_usage_inserts(engine: Engine) -> list[int]:
    """Record the number of rows of every INSERT into usage_records that the engine runs."""
    sizes: list[int] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _seen(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool
    ) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO USAGE_RECORDS"):
            # One executemany, or one multi-row INSERT … VALUES (…), (…) RETURNING.
            values = statement.upper().split(" VALUES ", 1)[1].split(" ON CONFLICT", 1)[0]
            sizes.append(values.count("("))

    return sizes


def _stored_ids(engine: Engine) -> list[str]:
    return sorted(r.request_id for r in list_usage(engine, limit=100_000))


async def test_writes_in_batches(sqlite_engine: Engine, make_record: MakeRecord) -> None:
    sizes = _count_usage_inserts(sqlite_engine)
    written: list[int] = []
    writer = UsageWriter(
        sqlite_engine,
        flush_interval_s=0.05,
        batch_size=3,
        buffer_size=100,
        on_written=written.append,
    )
    recs = [make_record() for _ in range(10)]
    for r in recs:
        writer.record(r)
    await writer.start()
    await _wait_until(lambda: writer.pending == 0)
    await writer.stop()
    assert sizes == [3, 3, 3, 1]
    assert written == [3, 3, 3, 1]
    assert writer.written == 10 and writer.failed_writes == 0 and writer.dropped == 0
    assert _stored_ids(sqlite_engine) == [r.request_id for r in recs]


async def test_record_never_blocks(sqlite_engine: Engine, make_record: MakeRecord) -> None:
    writer = UsageWriter(sqlite_engine, flush_interval_s=0.01, batch_size=500, buffer_size=100_000)
    await writer.start()
    recs = [make_record() for _ in range(20_000)]
    t0 = time.perf_counter()
    for r in recs:
        writer.record(r)  # plain call on the event loop thread, no await
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"record() took {elapsed:.3f}s for 20k records"
    await writer.stop()
    assert writer.pending == 0 and writer.written == 20_000


def test_record_works_without_a_running_loop(
    sqlite_engine: Engine, make_record: MakeRecord
) -> None:
    writer = UsageWriter(sqlite_engine, buffer_size=2)
    for _ in range(3):
        writer.record(make_record())
    assert writer.pending == 2 and writer.dropped == 1


async def test_overflow_drops_oldest(sqlite_engine: Engine, make_record: MakeRecord) -> None:
    writer = UsageWriter(sqlite_engine, flush_interval_s=0.05, batch_size=2, buffer_size=5)
    recs = [make_record() for _ in range(8)]
    for r in recs:
        writer.record(r)
    assert writer.dropped == 3 and writer.pending == 5
    assert await writer.flush() is True
    assert _stored_ids(sqlite_engine) == [r.request_id for r in recs[3:]]


async def test_outage_keeps_records_and_flushes_them_later(
    sqlite_engine: Engine, make_record: MakeRecord, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wattpool.store.usage_writer")
    writer = UsageWriter(sqlite_engine, flush_interval_s=0.02, batch_size=4, buffer_size=1000)
    await writer.start()
    first = [make_record() for _ in range(5)]
    for r in first:
        writer.record(r)
    await _wait_until(lambda: writer.pending == 0)

    # The database "goes away": every table is dropped, so writes fail.
    await asyncio.to_thread(downgrade, sqlite_engine, "base")
    during = [make_record() for _ in range(10)]
    for r in during:
        writer.record(r)
    await _wait_until(lambda: writer.failed_writes >= 3)
    assert writer.pending == 10
    outage_warnings = [m for m in caplog.messages if "cannot be written" in m]
    assert len(outage_warnings) == 1  # once per outage, not once per retry

    # It comes back (empty); the buffered records arrive, in order, exactly once.
    await asyncio.to_thread(migrate, sqlite_engine)
    after = [make_record() for _ in range(3)]
    for r in after:
        writer.record(r)
    await _wait_until(lambda: writer.pending == 0)
    await writer.stop()

    stored = list(reversed(list_usage(sqlite_engine, limit=1000)))  # oldest first
    assert [r.request_id for r in stored] == [r.request_id for r in during + after]
    ids = [r.id for r in stored]
    assert ids == sorted(ids)  # written in the order they were recorded
    assert writer.written == 18 and writer.dropped == 0
    assert any("written again" in m for m in caplog.messages)


async def test_stop_flushes_what_is_left(sqlite_engine: Engine, make_record: MakeRecord) -> None:
    writer = UsageWriter(sqlite_engine, flush_interval_s=60, batch_size=7, buffer_size=1000)
    await writer.start()
    recs = [make_record() for _ in range(30)]
    for r in recs:
        writer.record(r)
    await writer.stop()
    assert writer.pending == 0
    assert _stored_ids(sqlite_engine) == [r.request_id for r in recs]


async def test_stop_without_start_flushes(sqlite_engine: Engine, make_record: MakeRecord) -> None:
    writer = UsageWriter(sqlite_engine)
    writer.record(make_record())
    await writer.stop()
    assert writer.written == 1


async def test_stop_is_bounded_when_database_is_down(
    sqlite_engine: Engine, make_record: MakeRecord
) -> None:
    await asyncio.to_thread(downgrade, sqlite_engine, "base")
    writer = UsageWriter(sqlite_engine, flush_interval_s=0.05)
    await writer.start()
    for _ in range(4):
        writer.record(make_record())
    t0 = time.monotonic()
    await writer.stop(timeout=0.3)
    assert time.monotonic() - t0 < 2.0
    assert writer.pending == 4 and writer.written == 0 and writer.failed_writes >= 1


async def test_bad_record_does_not_block_the_others(
    sqlite_engine: Engine, make_record: MakeRecord
) -> None:
    writer = UsageWriter(sqlite_engine, batch_size=10)
    good = [make_record() for _ in range(4)]
    bad = make_record(model_id=None)  # violates NOT NULL: can never be written
    for r in [*good[:2], bad, *good[2:]]:
        writer.record(r)
    assert await writer.flush() is True
    assert writer.rejected == 1 and writer.written == 4 and writer.pending == 0
    assert _stored_ids(sqlite_engine) == [r.request_id for r in good]


async def test_duplicate_request_id_is_written_once(
    sqlite_engine: Engine, make_record: MakeRecord
) -> None:
    writer = UsageWriter(sqlite_engine, batch_size=10)
    rec = make_record()
    writer.record(rec)
    writer.record(rec)
    assert await writer.flush() is True
    assert writer.written == 1
    assert _stored_ids(sqlite_engine) == [rec.request_id]
