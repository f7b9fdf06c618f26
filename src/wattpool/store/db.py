"""Engines, sessions and migrations.

Migrations run from code (no alembic.ini): :func:`alembic_config` points Alembic at the
``migrations`` folder shipped inside the package. Start-up calls :func:`migrate`, which
is idempotent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url, pool
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
DEFAULT_BUSY_TIMEOUT_MS = 5000


def _is_memory_sqlite(url: URL) -> bool:
    db = url.database or ""
    return db in ("", ":memory:") or url.query.get("mode") == "memory"


def make_engine(url: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and enforced foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)

    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if _is_memory_sqlite(parsed):
        # Each connection to :memory: is a separate database; share one across threads
        # (the usage writer writes from a worker thread).
        kwargs["poolclass"] = pool.StaticPool
    else:
        Path(parsed.database or "").expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            # WAL lets the status CLI read while the control plane writes; busy_timeout
            # makes a writer wait for a lock instead of failing at once.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            # Enforce foreign keys as PostgreSQL does, so mistakes show up on SQLite too.
            cur.execute("PRAGMA foreign_keys=ON")
        finally:
            cur.close()

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects stay readable after the session commits.
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic Config built in code, for the shipped migrations folder."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # New revision files are named "<rev>_<slug>.py" like 0001_initial.py ("%" escaped
    # because Config values go through ConfigParser interpolation).
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _run(engine_or_url: Engine | str, fn: str, revision: str) -> None:
    engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    try:
        sqlite = engine.dialect.name == "sqlite"
        with engine.connect() as conn:
            if sqlite:
                # Batch mode rebuilds tables (copy, drop, rename); with foreign keys
                # enforced, dropping a referenced table would fail or cascade.
                # The pragma only takes effect outside a transaction, so set it first.
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            try:
                getattr(command, fn)(alembic_config(connection=conn), revision)
                conn.commit()
            finally:
                if sqlite:
                    conn.rollback()
                    conn.exec_driver_sql("PRAGMA foreign_keys=ON")
    finally:
        if isinstance(engine_or_url, str):
            engine.dispose()


def migrate(engine_or_url: Engine | str, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (default: the newest). Idempotent."""
    _run(engine_or_url, "upgrade", revision)


def downgrade(engine_or_url: Engine | str, revision: str) -> None:
    """Downgrade the database to ``revision`` (``"base"`` drops every table)."""
    _run(engine_or_url, "downgrade", revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
