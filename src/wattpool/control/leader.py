"""Which control-plane replica runs the background work (placement, clean-up).

Every replica serves HTTP and keeps its own live registry from heartbeats; exactly
one, the leader, places instances, answers heartbeats and joins, and writes fleet
state. On PostgreSQL the leader holds a session-level advisory lock on a dedicated
connection: if its process dies, PostgreSQL ends the session, the lock is freed and
another replica takes it within one poll period. SQLite means one replica, which
is always the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

# pg advisory lock key: any constant shared by all replicas of one pool.
LEADER_LOCK_KEY = 0x77617474  # "watt"


class Leadership:
    """Always leader: the single replica of an SQLite (one-machine) pool."""

    def __init__(self) -> None:
        self.is_leader = True
        self.on_change: Callable[[bool], None] | None = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class PostgresLeadership(Leadership):
    def __init__(self, db: Engine, poll_s: float = 1.0, key: int = LEADER_LOCK_KEY) -> None:
        super().__init__()
        self.is_leader = False
        self.db = db
        self.poll_s = poll_s
        self.key = key
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            log.warning("this replica %s the leader", "is now" if leader else "is no longer")
            if self.on_change:
                self.on_change(leader)

    def _poll(self) -> bool:
        """Blocking: keep or try to take the lock; True when this replica holds it."""
        try:
            if self._conn is None:
                self._conn = self.db.connect()
            if self.is_leader:
                self._conn.execute(text("SELECT 1"))  # the session (and the lock) is alive
                return True
            got = self._conn.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}
            ).scalar()
            self._conn.commit()
            return bool(got)
        except Exception as exc:
            log.warning("leader lock check failed: %s", exc)
            self._drop_connection()
            return False

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.invalidate()
                self._conn.close()
            self._conn = None

    async def _run(self) -> None:
        while True:
            self._set(await asyncio.to_thread(self._poll))
            await asyncio.sleep(self.poll_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Closing the session releases the lock for the next replica at once.
        await asyncio.to_thread(self._drop_connection)
        self._set(False)


def leadership_for(db: Engine) -> Leadership:
    if db.dialect.name == "postgresql":
        return PostgresLeadership(db)
    return Leadership()
