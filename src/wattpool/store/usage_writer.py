"""Batched, non-blocking writes of usage records.

The request path calls :meth:`UsageWriter.record`, which only appends to an in-memory
buffer; a background task moves the buffer to the database in batches. When the
database is down, records wait in the buffer (oldest dropped once it is full) and are
written once it is back. Writes are idempotent on ``request_id`` (see
``repo.insert_usage``), so a retried batch never produces duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from wattpool.store.repo import UsageRecord, insert_usage

log = logging.getLogger(__name__)

# Errors caused by the records themselves rather than by the database being
# unavailable: retrying the same batch would fail forever.
_BAD_DATA_ERRORS = (sa_exc.IntegrityError, sa_exc.DataError, TypeError, ValueError)


def _is_bad_data(err: BaseException) -> bool:
    if isinstance(err, _BAD_DATA_ERRORS):
        return True
    # A StatementError that is not a DBAPIError failed while binding parameters.
    return isinstance(err, sa_exc.StatementError) and not isinstance(err, sa_exc.DBAPIError)


class UsageWriter:
    """Buffers usage records and writes them in batches from a background task.

    ``record`` must be called from the event loop thread that runs the writer.
    """

    def __init__(
        self,
        engine: Engine,
        flush_interval_s: float = 0.5,
        batch_size: int = 200,
        buffer_size: int = 50_000,
        on_written: Callable[[int], None] | None = None,
        charge: Callable[[list[UsageRecord]], object] | None = None,
    ) -> None:
        if flush_interval_s <= 0 or batch_size <= 0 or buffer_size <= 0:
            raise ValueError("flush_interval_s, batch_size and buffer_size must be > 0")
        self.engine = engine
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self.buffer_size = buffer_size
        self.on_written = on_written
        # Posts a written batch's charges to the ledger. Best effort: whatever it misses
        # the leader charges later (ledger.post_unposted_usage), exactly once.
        self.charge = charge
        self.written = 0  # rows inserted
        self.dropped = 0  # records discarded because the buffer was full
        self.rejected = 0  # records the database refused (bad data); never retried
        self.failed_writes = 0  # write attempts that failed (each retry counts)
        self._buf: deque[UsageRecord] = deque()
        self._in_flight = 0  # records taken out of _buf by a running write
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._outage = False
        # One flush at a time, so batches reach the database in order.
        self._flush_lock = asyncio.Lock()

    @property
    def pending(self) -> int:
        """Records not yet written (buffered or being written)."""
        return len(self._buf) + self._in_flight

    # --- request path --------------------------------------------------------

    def record(self, rec: UsageRecord) -> None:
        """Queue a record. O(1); never blocks, never raises."""
        try:
            # Records being written count against the bound, but cannot be dropped;
            # if they fill it alone, the buffer overshoots until that write ends.
            if self.pending >= self.buffer_size and self._buf:
                self._buf.popleft()
                self.dropped += 1
            self._buf.append(rec)
        except Exception:  # pragma: no cover - defensive: the request path must not fail
            log.exception("usage record lost")

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def stop(self, timeout: float = 10.0) -> None:
        """Write what is left (retrying while the database fails), for at most ``timeout``
        seconds, then stop. Records still pending afterwards are lost (and logged)."""
        if self._task is None:
            try:
                async with asyncio.timeout(timeout):
                    await self._drain()
            except TimeoutError:
                pass
        else:
            assert self._stopping is not None
            self._stopping.set()
            task, self._task = self._task, None
            try:
                await asyncio.wait_for(task, timeout)
            except TimeoutError:
                pass
            except Exception:  # pragma: no cover - _run does not raise; defensive
                log.exception("usage writer failed")
        if self.pending:
            log.warning("usage writer stopped with %d records not written", self.pending)

    async def flush(self) -> bool:
        """Write everything buffered now; True if the buffer is empty afterwards."""
        async with self._flush_lock:
            while self._buf:
                if not await self._write_batch():
                    return False
            return True

    # --- internals -----------------------------------------------------------

    async def _run(self) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.flush_interval_s)
            await self._flush_logged()
        await self._drain()

    async def _drain(self) -> None:
        """Flush until empty, retrying failed writes at a short interval (shutdown)."""
        while True:
            if await self._flush_logged():
                return
            await asyncio.sleep(min(self.flush_interval_s, 0.2))

    async def _flush_logged(self) -> bool:
        try:
            return await self.flush()
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - _write_batch handles database errors
            log.exception("usage flush failed")
            return False

    async def _write_batch(self) -> bool:
        """Write the oldest batch; False (batch kept, in order) if the database failed."""
        batch = [self._buf.popleft() for _ in range(min(self.batch_size, len(self._buf)))]
        self._in_flight = len(batch)
        try:
            inserted = await asyncio.to_thread(self._insert_and_charge, batch)
        except asyncio.CancelledError:
            # The thread may still commit; requeue anyway. Writing the same request_ids
            # again later is skipped by the database, so nothing doubles.
            self._in_flight = 0
            self._requeue(batch)
            raise
        except Exception as err:
            self._in_flight = 0
            if not _is_bad_data(err):
                self._requeue(batch)
                self._write_failed(err)
                return False
            inserted, ok = await self._write_one_by_one(batch)
            self._count(inserted)
            return ok
        self._in_flight = 0
        self._write_succeeded()
        self._count(inserted)
        return True

    def _insert_and_charge(self, batch: list[UsageRecord]) -> int:
        inserted = insert_usage(self.engine, batch)
        if self.charge is not None:
            try:
                self.charge(batch)
            except Exception:
                log.warning("charging a usage batch failed; the leader retries it",
                            exc_info=True)
        return inserted

    async def _write_one_by_one(self, batch: list[UsageRecord]) -> tuple[int, bool]:
        """Isolate the records the database refuses, so one cannot block the rest."""
        inserted = 0
        for i, rec in enumerate(batch):
            self._in_flight = len(batch) - i
            try:
                inserted += await asyncio.to_thread(insert_usage, self.engine, [rec])
            except asyncio.CancelledError:
                self._in_flight = 0
                self._requeue(batch[i:])
                raise
            except Exception as err:
                if not _is_bad_data(err):
                    # The database itself failed meanwhile: keep the rest for later.
                    self._in_flight = 0
                    self._requeue(batch[i:])
                    self._write_failed(err)
                    return inserted, False
                self.rejected += 1
                log.error("usage record %s rejected by the database: %s", rec.request_id, err)
        self._in_flight = 0
        self._write_succeeded()
        return inserted, True

    def _write_failed(self, err: Exception) -> None:
        self.failed_writes += 1
        if not self._outage:  # log once per outage, not on every retry
            self._outage = True
            first_line = (str(err).splitlines() or [""])[0]
            log.warning(
                "usage records cannot be written (%s: %s); keeping them in memory and "
                "retrying every %.1fs",
                type(err).__name__,
                first_line,
                self.flush_interval_s,
            )

    def _write_succeeded(self) -> None:
        if self._outage:
            self._outage = False
            log.warning("usage records are written again (%d pending)", self.pending)

    def _requeue(self, batch: list[UsageRecord]) -> None:
        """Put unwritten records back at the front, oldest first, within the bound."""
        self._buf.extendleft(reversed(batch))
        while len(self._buf) > self.buffer_size:
            self._buf.popleft()
            self.dropped += 1

    def _count(self, inserted: int) -> None:
        if inserted <= 0:
            return
        self.written += inserted
        if self.on_written is not None:
            try:
                self.on_written(inserted)
            except Exception:
                log.exception("usage on_written hook failed")
