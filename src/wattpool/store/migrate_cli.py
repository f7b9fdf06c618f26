"""Alembic commands without an alembic.ini.

    python -m wattpool.store.migrate_cli revision -m "add foo" --autogenerate
    python -m wattpool.store.migrate_cli upgrade [--url URL] [REVISION]
    python -m wattpool.store.migrate_cli downgrade [--url URL] REVISION
    python -m wattpool.store.migrate_cli current [--url URL]
    python -m wattpool.store.migrate_cli history

``--url`` defaults to the configured database (Settings.resolved_database_url()).
``revision --autogenerate`` compares models.py with a scratch in-memory SQLite database
migrated to head, so it needs no running database and writes only the new changes.
New files go to src/wattpool/store/migrations/versions/ with the next number as id.
"""

from __future__ import annotations

import argparse
import re

from alembic import command

from wattpool.store.db import (
    MIGRATIONS_DIR,
    alembic_config,
    current_revision,
    downgrade,
    make_engine,
    migrate,
)


def _default_url() -> str:
    from wattpool.config import Settings

    return Settings().resolved_database_url()


def _next_rev_id() -> str:
    numbers = [
        int(m.group(1))
        for p in (MIGRATIONS_DIR / "versions").glob("*.py")
        if (m := re.match(r"(\d+)_", p.name))
    ]
    return f"{max(numbers, default=0) + 1:04d}"


def _revision(message: str, autogenerate: bool) -> None:
    if not autogenerate:
        command.revision(alembic_config(), message=message, rev_id=_next_rev_id())
        return
    engine = make_engine("sqlite://")
    try:
        migrate(engine)
        with engine.connect() as conn:
            cfg = alembic_config(connection=conn)
            command.revision(cfg, message=message, autogenerate=True, rev_id=_next_rev_id())
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wattpool.store.migrate_cli")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="create a new migration file")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--autogenerate", action="store_true")
    for name, default in (("upgrade", "head"), ("downgrade", None)):
        p = sub.add_parser(name)
        p.add_argument("revision", nargs="?" if default else None, default=default)
        p.add_argument("--url")
    cur = sub.add_parser("current")
    cur.add_argument("--url")
    sub.add_parser("history")
    args = parser.parse_args(argv)

    if args.cmd == "revision":
        _revision(args.message, args.autogenerate)
    elif args.cmd == "history":
        command.history(alembic_config())
    elif args.cmd == "current":
        engine = make_engine(args.url or _default_url())
        print(current_revision(engine) or "(none)")
        engine.dispose()
    elif args.cmd == "upgrade":
        migrate(args.url or _default_url(), args.revision)
    else:
        downgrade(args.url or _default_url(), args.revision)


if __name__ == "__main__":
    main()
