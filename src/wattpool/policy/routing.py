"""Which instance serves a request."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InstanceSnapshot:
    """What the router knows about one instance at decision time."""

    instance_id: str
    node_id: str
    model_id: str
    ready: bool
    in_flight: int


@dataclass(frozen=True, slots=True)
class RouteDecision:
    chosen: InstanceSnapshot | None
    # instance_id -> why it was not chosen; explains every decision
    rejected: dict[str, str]


def pick_least_loaded(
    model_id: str, candidates: Sequence[InstanceSnapshot], exclude: Iterable[str] = ()
) -> RouteDecision:
    """Least in-flight among ready instances of the model; ties go to the lowest id.

    ``exclude`` holds instance ids already tried for this request (failover).
    """
    excluded = set(exclude)
    rejected: dict[str, str] = {}
    eligible: list[InstanceSnapshot] = []
    for inst in candidates:
        if inst.model_id != model_id:
            continue
        if inst.instance_id in excluded:
            rejected[inst.instance_id] = "already tried for this request"
        elif not inst.ready:
            rejected[inst.instance_id] = "not ready"
        else:
            eligible.append(inst)
    if not eligible:
        return RouteDecision(chosen=None, rejected=rejected)
    chosen = min(eligible, key=lambda i: (i.in_flight, i.instance_id))
    for inst in eligible:
        if inst is not chosen:
            rejected[inst.instance_id] = f"busier ({inst.in_flight} in flight)"
    return RouteDecision(chosen=chosen, rejected=rejected)
