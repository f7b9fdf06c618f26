"""Fixtures of the store tests: real SQLite files in tmp_path, no mocks."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from wattpool.store import UsageRecord, make_engine, migrate


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    # A nested folder that does not exist yet: make_engine must create it.
    return f"sqlite:///{tmp_path / 'state' / 'wattpool.db'}"


@pytest.fixture
def sqlite_engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def make_record() -> Callable[..., UsageRecord]:
    counter = itertools.count()

    def make(**overrides: Any) -> UsageRecord:
        n = next(counter)
        fields: dict[str, Any] = {
            "request_id": f"req-{n:05d}",
            "kind": "chat",
            "model_id": "gemma3-270m",
            "node_id": "node_a",
            "instance_id": "inst_a",
            "prompt_tokens": 10 + n,
            "completion_tokens": 20 + n,
            "ttft_ms": 12.5,
            "duration_ms": 100.0 + n,
            "status": "ok",
            "http_status": 200,
        }
        fields.update(overrides)
        return UsageRecord(**fields)

    return make
