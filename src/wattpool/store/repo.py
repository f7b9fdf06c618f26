"""Repository functions over the store.

They take an Engine, open and close their own session, and return frozen dataclasses
rather than ORM objects, so callers never hold sessions or lazy-loading objects.
All functions are synchronous; async callers wrap them in ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from typing import Any, Literal

from sqlalchemy import Connection, Engine, Insert, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from wattpool.store.models import (
    Deployment,
    Instance,
    Node,
    ServedModel,
    UsageDaily,
    UsageEntry,
    utcnow,
)

UsageKind = Literal["chat", "completion"]
UsageStatus = Literal["ok", "error", "cancelled"]


@dataclass(frozen=True, slots=True)
class NodeRow:
    id: str
    name: str
    hardware: dict[str, Any]
    state: str
    last_seen: datetime | None
    created_at: datetime
    site_id: str | None = None
    public_key: str | None = None
    reputation: float | None = None  # None until the node's first audit
    audits_passed: int = 0
    audits_failed: int = 0


@dataclass(frozen=True, slots=True)
class ModelRow:
    id: str
    source: str
    engine: str
    context_length: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeploymentRow:
    id: str
    model_id: str
    replicas: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class InstanceRow:
    id: str
    deployment_id: str | None
    model_id: str
    node_id: str | None
    state: str
    restarts: int
    error: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """One served request. ``id`` is None until the record has been stored."""

    request_id: str
    kind: UsageKind
    model_id: str
    prompt_tokens: int
    completion_tokens: int
    duration_ms: float
    status: UsageStatus
    http_status: int
    node_id: str | None = None
    instance_id: str | None = None
    ttft_ms: float | None = None
    created_at: datetime = field(default_factory=utcnow)
    id: int | None = None
    tenant_id: str | None = None
    key_id: str | None = None
    priority_class: str = "interactive"  # "interactive" | "batch"
    cost_micros: int = 0  # integer micro-dollars (1 USD = 1_000_000)


# --- nodes -----------------------------------------------------------------------


def _node_row(n: Node) -> NodeRow:
    return NodeRow(n.id, n.name, dict(n.hardware or {}), n.state, n.last_seen, n.created_at,
                   n.site_id, n.public_key, n.reputation, n.audits_passed or 0,
                   n.audits_failed or 0)


def upsert_node(
    engine: Engine,
    node_id: str,
    name: str,
    hardware: dict[str, Any],
    state: str,
    last_seen: datetime | None,
    *,
    site_id: str | None = None,
    public_key: str | None = None,
) -> NodeRow:
    """Create or update a node; site_id and public_key are only ever set, never cleared."""
    with Session(engine) as s, s.begin():
        node = s.get(Node, node_id)
        if node is None:
            node = Node(id=node_id, created_at=utcnow())
            s.add(node)
        node.name = name
        node.hardware = hardware
        node.state = state
        node.last_seen = last_seen
        if site_id is not None:
            node.site_id = site_id
        if public_key is not None:
            node.public_key = public_key
        s.flush()
        return _node_row(node)


def set_reputation(engine: Engine, node_id: str, score: float, passes: int,
                   fails: int) -> bool:
    """Store a node's audit reputation; False if the node is unknown."""
    with Session(engine) as s, s.begin():
        node = s.get(Node, node_id)
        if node is None:
            return False
        node.reputation, node.audits_passed, node.audits_failed = score, passes, fails
        return True


def set_node_state(engine: Engine, node_id: str, state: str) -> bool:
    """Set a node's state; False if the node is unknown."""
    with Session(engine) as s, s.begin():
        node = s.get(Node, node_id)
        if node is None:
            return False
        node.state = state
        return True


def list_nodes(engine: Engine) -> list[NodeRow]:
    with Session(engine) as s:
        return [_node_row(n) for n in s.scalars(select(Node).order_by(Node.created_at, Node.id))]


# --- models ----------------------------------------------------------------------


def _model_row(m: ServedModel) -> ModelRow:
    return ModelRow(m.id, m.source, m.engine, m.context_length, m.created_at)


def upsert_model(
    engine: Engine, model_id: str, source: str, engine_name: str, context_length: int
) -> ModelRow:
    with Session(engine) as s, s.begin():
        model = s.get(ServedModel, model_id)
        if model is None:
            model = ServedModel(id=model_id, created_at=utcnow())
            s.add(model)
        model.source = source
        model.engine = engine_name
        model.context_length = context_length
        s.flush()
        return _model_row(model)


def list_models(engine: Engine) -> list[ModelRow]:
    with Session(engine) as s:
        q = select(ServedModel).order_by(ServedModel.created_at, ServedModel.id)
        return [_model_row(m) for m in s.scalars(q)]


# --- deployments -----------------------------------------------------------------


def _deployment_row(d: Deployment) -> DeploymentRow:
    return DeploymentRow(d.id, d.model_id, d.replicas, d.created_at)


def upsert_deployment(
    engine: Engine, deployment_id: str, model_id: str, replicas: int
) -> DeploymentRow:
    """Create or update a deployment; ``model_id`` must already be in ``models``."""
    with Session(engine) as s, s.begin():
        dep = s.get(Deployment, deployment_id)
        if dep is None:
            dep = Deployment(id=deployment_id, created_at=utcnow())
            s.add(dep)
        dep.model_id = model_id
        dep.replicas = replicas
        s.flush()
        return _deployment_row(dep)


def list_deployments(engine: Engine) -> list[DeploymentRow]:
    with Session(engine) as s:
        q = select(Deployment).order_by(Deployment.created_at, Deployment.id)
        return [_deployment_row(d) for d in s.scalars(q)]


def delete_deployment(engine: Engine, deployment_id: str) -> bool:
    """Delete a deployment (its instances keep running, detached); False if unknown."""
    with Session(engine) as s, s.begin():
        res = s.execute(delete(Deployment).where(Deployment.id == deployment_id))
        return bool(res.rowcount)  # type: ignore[attr-defined]


# --- instances -------------------------------------------------------------------


def _instance_row(i: Instance) -> InstanceRow:
    return InstanceRow(
        i.id, i.deployment_id, i.model_id, i.node_id, i.state, i.restarts, i.error, i.updated_at
    )


def upsert_instance(
    engine: Engine,
    instance_id: str,
    model_id: str,
    node_id: str | None,
    state: str,
    restarts: int = 0,
    error: str | None = None,
    deployment_id: str | None = None,
) -> InstanceRow:
    """Create or update an instance; ``node_id``/``deployment_id`` must exist if set."""
    with Session(engine) as s, s.begin():
        inst = s.get(Instance, instance_id)
        if inst is None:
            inst = Instance(id=instance_id)
            s.add(inst)
        inst.model_id = model_id
        inst.node_id = node_id
        inst.state = state
        inst.restarts = restarts
        inst.error = error
        inst.deployment_id = deployment_id
        # Set explicitly: onupdate only fires when some column actually changed.
        inst.updated_at = utcnow()
        s.flush()
        return _instance_row(inst)


def list_instances(engine: Engine) -> list[InstanceRow]:
    with Session(engine) as s:
        return [_instance_row(i) for i in s.scalars(select(Instance).order_by(Instance.id))]


def delete_instance(engine: Engine, instance_id: str) -> bool:
    with Session(engine) as s, s.begin():
        res = s.execute(delete(Instance).where(Instance.id == instance_id))
        return bool(res.rowcount)  # type: ignore[attr-defined]


# --- usage -----------------------------------------------------------------------


def _usage_insert(dialect: str) -> Insert:
    """An INSERT that skips request_ids already stored.

    This makes a retried batch harmless when the first attempt did commit but its
    outcome was lost (connection dropped during COMMIT, writer cancelled mid-write).
    """
    table = UsageEntry.__table__
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=["request_id"])
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=["request_id"])
    return insert(table)


# The columns the daily roll-up is built from, returned by the usage INSERT.
_ROLLUP_COLUMNS = ("created_at", "tenant_id", "model_id", "priority_class",
                   "prompt_tokens", "completion_tokens", "cost_micros")
_DailyKey = tuple[date, str, str, str]


def _daily_totals(rows: Iterable[Any]) -> dict[_DailyKey, list[int]]:
    """Sum rows by (UTC day, tenant or "", model, class): [requests, prompt, completion, cost]."""
    totals: dict[_DailyKey, list[int]] = {}
    for r in rows:
        created = r.created_at
        if created.tzinfo is not None:
            created = created.astimezone(UTC)
        key = (created.date(), r.tenant_id or "", r.model_id, r.priority_class)
        t = totals.setdefault(key, [0, 0, 0, 0])
        t[0] += 1
        t[1] += r.prompt_tokens
        t[2] += r.completion_tokens
        t[3] += r.cost_micros
    return totals


def _add_to_daily(conn: Connection, totals: dict[_DailyKey, list[int]]) -> None:
    """Increment usage_daily by totals (creating rows as needed) on conn's transaction."""
    if not totals:
        return
    table = UsageDaily.__table__
    # Sorted, so concurrent writers lock rows in the same order (no deadlocks on PostgreSQL).
    rows = [
        {"day": k[0], "tenant_id": k[1], "model_id": k[2], "priority_class": k[3],
         "requests": v[0], "prompt_tokens": v[1], "completion_tokens": v[2], "cost_micros": v[3]}
        for k, v in sorted(totals.items())
    ]
    sums = ("requests", "prompt_tokens", "completion_tokens", "cost_micros")
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        ins = (sqlite.insert(table) if dialect == "sqlite" else postgresql.insert(table))
        stmt = ins.on_conflict_do_update(
            index_elements=["day", "tenant_id", "model_id", "priority_class"],
            set_={c: table.c[c] + ins.excluded[c] for c in sums},
        )
        conn.execute(stmt, rows)
        return
    # Other databases: update, else insert (no concurrent writers assumed there).
    for row in rows:
        res = conn.execute(
            update(table)
            .where(table.c.day == row["day"], table.c.tenant_id == row["tenant_id"],
                   table.c.model_id == row["model_id"],
                   table.c.priority_class == row["priority_class"])
            .values({c: table.c[c] + row[c] for c in sums})
        )
        if not res.rowcount:
            conn.execute(insert(table), [row])


_USAGE_COLUMNS = tuple(f.name for f in fields(UsageRecord) if f.name != "id")


def insert_usage(engine: Engine, records: Sequence[UsageRecord]) -> int:
    """Store records in one transaction (one executemany). Returns rows inserted;
    records whose request_id is already stored are skipped.

    The same transaction adds exactly the inserted rows to ``usage_daily``, so the
    roll-up can never drift from the ledger, whatever is retried or rolled back.
    """
    if not records:
        return 0
    # Scalars only: a plain getattr per column, not asdict's recursive deep copy.
    rows = [{name: getattr(r, name) for name in _USAGE_COLUMNS} for r in records]
    stmt = _usage_insert(engine.dialect.name)
    with engine.begin() as conn:
        if engine.dialect.name in ("sqlite", "postgresql"):
            # rowcount of an executemany is not reliable across drivers (psycopg reports
            # rows processed); RETURNING gives exactly the rows inserted, skipped
            # duplicates left out, and their values are what the roll-up needs.
            cols = [UsageEntry.__table__.c[c] for c in _ROLLUP_COLUMNS]
            inserted = conn.execute(stmt.returning(*cols), rows).all()
            _add_to_daily(conn, _daily_totals(inserted))
            return len(inserted)
        # A plain INSERT fails on a duplicate, so every record was inserted.
        res = conn.execute(stmt, rows)
        _add_to_daily(conn, _daily_totals(records))
        return res.rowcount if res.rowcount >= 0 else len(rows)


def _usage_record(u: UsageEntry) -> UsageRecord:
    return UsageRecord(
        id=u.id,
        request_id=u.request_id,
        kind=u.kind,  # type: ignore[arg-type]
        model_id=u.model_id,
        node_id=u.node_id,
        instance_id=u.instance_id,
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        ttft_ms=u.ttft_ms,
        duration_ms=u.duration_ms,
        status=u.status,  # type: ignore[arg-type]
        http_status=u.http_status,
        created_at=u.created_at,
        tenant_id=u.tenant_id,
        key_id=u.key_id,
        priority_class=u.priority_class,
        cost_micros=u.cost_micros,
    )


def list_usage(
    engine: Engine,
    limit: int = 100,
    request_id: str | None = None,
    tenant_id: str | None = None,
) -> list[UsageRecord]:
    """The newest ``limit`` usage records, newest first (or the one with ``request_id``),
    optionally only those of ``tenant_id``."""
    q = select(UsageEntry).order_by(UsageEntry.created_at.desc(), UsageEntry.id.desc())
    if request_id is not None:
        q = q.where(UsageEntry.request_id == request_id)
    if tenant_id is not None:
        q = q.where(UsageEntry.tenant_id == tenant_id)
    with Session(engine) as s:
        return [_usage_record(u) for u in s.scalars(q.limit(limit))]
