"""Alembic migrations, run from code against temporary SQLite files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from wattpool.store import (
    alembic_config,
    current_revision,
    downgrade,
    list_nodes,
    make_engine,
    migrate,
    migrate_cli,
    upsert_node,
)
from wattpool.store import db as store_db
from wattpool.store.models import Base

TABLES = {
    "nodes", "models", "deployments", "instances", "usage_records", "sites", "join_tokens",
    "tenants", "api_keys", "prices", "usage_daily",
    "operators", "ledger_transactions", "ledger_entries", "ledger_charges", "curtailments",
}
HEAD = "0006"


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_migrate_creates_all_tables(sqlite_engine: Engine) -> None:
    assert _tables(sqlite_engine) == TABLES
    assert current_revision(sqlite_engine) == HEAD
    indexes = {ix["name"] for ix in inspect(sqlite_engine).get_indexes("usage_records")}
    assert "ix_usage_records_created_at" in indexes


def test_migrate_is_idempotent_and_keeps_data(sqlite_engine: Engine) -> None:
    upsert_node(sqlite_engine, "node_1", "a", {}, "ready", None)
    migrate(sqlite_engine)
    migrate(sqlite_engine)
    assert current_revision(sqlite_engine) == HEAD
    assert [n.id for n in list_nodes(sqlite_engine)] == ["node_1"]


def test_downgrade_to_base_then_upgrade(sqlite_engine: Engine) -> None:
    downgrade(sqlite_engine, "base")
    assert _tables(sqlite_engine) == set()
    assert current_revision(sqlite_engine) is None
    migrate(sqlite_engine)
    assert _tables(sqlite_engine) == TABLES
    assert current_revision(sqlite_engine) == HEAD


def test_migration_matches_models(sqlite_engine: Engine) -> None:
    # The hand-written migration and models.py must describe the same schema.
    with sqlite_engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_migrate_from_url_creates_folder_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "w.db"
    migrate(f"sqlite:///{path}")
    assert path.exists()
    engine = make_engine(f"sqlite:///{path}")
    try:
        assert _tables(engine) == TABLES
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    finally:
        engine.dispose()


def test_env_uses_url_when_no_connection_is_given(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    command.upgrade(alembic_config(url=url), "head")
    engine = make_engine(url)
    try:
        assert _tables(engine) == TABLES
    finally:
        engine.dispose()


def test_env_uses_connection_from_attributes() -> None:
    engine = make_engine("sqlite://")  # in-memory: only the passed connection sees it
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(connection=conn), "head")
        assert _tables(engine) == TABLES
    finally:
        engine.dispose()


def test_cli_current_and_upgrade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    migrate_cli.main(["upgrade", "--url", url])
    migrate_cli.main(["current", "--url", url])
    assert capsys.readouterr().out.strip() == HEAD


def test_cli_autogenerate_finds_no_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Work on a copy so the real versions folder stays untouched.
    copy = tmp_path / "migrations"
    shutil.copytree(store_db.MIGRATIONS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(store_db, "MIGRATIONS_DIR", copy)
    monkeypatch.setattr(migrate_cli, "MIGRATIONS_DIR", copy)
    migrate_cli.main(["revision", "-m", "no changes", "--autogenerate"])
    new = copy / "versions" / f"{int(HEAD) + 1:04d}_no_changes.py"
    text = new.read_text()
    assert f"down_revision: str | None = '{HEAD}'" in text
    assert "op.create_table" not in text and "op.add_column" not in text
    compile(text, str(new), "exec")
