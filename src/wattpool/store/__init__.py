"""wattpool's persistent state: SQLAlchemy models, Alembic migrations, repositories.

Start-up calls ``migrate(engine)``; everything else goes through the functions of
``repo`` (which return plain dataclasses) and the batched ``UsageWriter``.
"""

from wattpool.store.db import (
    alembic_config,
    current_revision,
    downgrade,
    make_engine,
    migrate,
    session_factory,
)
from wattpool.store.repo import (
    DeploymentRow,
    InstanceRow,
    ModelRow,
    NodeRow,
    UsageRecord,
    delete_deployment,
    delete_instance,
    insert_usage,
    list_deployments,
    list_instances,
    list_models,
    list_nodes,
    list_usage,
    set_node_state,
    upsert_deployment,
    upsert_instance,
    upsert_model,
    upsert_node,
)
from wattpool.store.usage_writer import UsageWriter

__all__ = [
    "DeploymentRow",
    "InstanceRow",
    "ModelRow",
    "NodeRow",
    "UsageRecord",
    "UsageWriter",
    "alembic_config",
    "current_revision",
    "delete_deployment",
    "delete_instance",
    "downgrade",
    "insert_usage",
    "list_deployments",
    "list_instances",
    "list_models",
    "list_nodes",
    "list_usage",
    "make_engine",
    "migrate",
    "session_factory",
    "set_node_state",
    "upsert_deployment",
    "upsert_instance",
    "upsert_model",
    "upsert_node",
]
