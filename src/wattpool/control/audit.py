"""The auditor: canary prompts sent to nodes as ordinary traffic, and reputations.

The leader runs it. Every ``interval_s`` it picks a model with at least two ready
instances and sends each of them the same canary, greedy and seeded, as a plain
inference request on the node's own subject (a node cannot tell it from customer
traffic). ``policy.audit.judge`` compares the answers; each verdict moves the node's
reputation, and every replica hears the new reputation on the bus: a node whose
reputation falls gets less traffic, then none (quarantine).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable

import msgspec

from wattpool.bus import Bus, BusError, Msg, Subscription
from wattpool.control.registry import Registry
from wattpool.policy.audit import Reputation, judge, update
from wattpool.protocol import (
    REPUTATION,
    InferChunk,
    InferRequest,
    ReputationUpdate,
    decode,
    encode,
    infer_subject,
)

log = logging.getLogger(__name__)

CANARIES = (
    "List the planets of the solar system in order from the sun:",
    "Write the numbers from one to twenty in words:",
    "The first line of a well-known nursery rhyme is",
    "Translate 'good morning, how are you?' into French, Spanish and German:",
    "Define photosynthesis in one sentence:",
    "Name the days of the week, starting with Monday:",
)


class Auditor:
    def __init__(self, bus: Bus, registry: Registry, is_leader: Callable[[], bool], *,
                 interval_s: float, max_tokens: int = 16, timeout_s: float = 30.0,
                 rng: random.Random | None = None,
                 on_fail: Callable[[str, str], None] | None = None,
                 on_verdict: Callable[[str, Reputation], None] | None = None) -> None:
        self.bus = bus
        self.registry = registry
        self.is_leader = is_leader
        self.on_fail = on_fail  # (node id, audit id): the ledger claws back its credit
        self.on_verdict = on_verdict  # (node id, new reputation): stored by the leader
        self.interval_s = interval_s
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.rng = rng or random.Random()
        self.rounds = 0
        self._task: asyncio.Task[None] | None = None
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.bus.subscribe(REPUTATION, self._on_reputation)
        if self.interval_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_reputation(self, msg: Msg) -> None:
        try:
            upd = decode(msg.data, ReputationUpdate)
        except msgspec.DecodeError:
            return
        reputation = Reputation(upd.score, upd.passes, upd.fails)
        self.registry.reputations[upd.node_id] = reputation
        node = self.registry.nodes.get(upd.node_id)
        if node is not None:
            node.reputation = reputation

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.is_leader():
                continue
            try:
                await self.audit_round()
            except Exception:
                log.exception("audit round failed")

    async def audit_round(self) -> None:
        targets: dict[str, list[tuple[str, str]]] = {}
        for view in self.registry.instances.values():
            node = self.registry.nodes.get(view.node_id)
            if (view.state == "ready" and node is not None and node.reachable
                    and node.power_state == "on" and not node.reputation.quarantined):
                targets.setdefault(view.model_id, []).append((view.node_id, view.instance_id))
        candidates = [m for m, insts in targets.items() if len(insts) >= 2]
        if not candidates:
            return
        model = self.rng.choice(sorted(candidates))
        canary = self.rng.choice(CANARIES)
        body: dict[str, object] = {"prompt": canary, "max_tokens": self.max_tokens,
                                   "temperature": 0, "seed": 7}
        answers = await asyncio.gather(*(self._ask(node_id, instance_id, body)
                                         for node_id, instance_id in targets[model]))
        by_node = {node_id: text for (node_id, _), text in zip(targets[model], answers,
                                                               strict=True)
                   if text is not None}
        self.rounds += 1
        audit_id = f"audit_{uuid.uuid4().hex[:12]}"
        for node_id, passed in judge(by_node).items():
            node = self.registry.nodes.get(node_id)
            if node is None:
                continue
            before = node.reputation
            after = update(before, passed)
            node.reputation = after
            self.registry.reputations[node_id] = after
            if self.on_verdict is not None:
                self.on_verdict(node_id, after)
            if not passed:
                if self.on_fail is not None:
                    self.on_fail(node_id, audit_id)
                log.warning("audit: node %s failed a canary for %s (reputation %.2f -> %.2f)",
                            node_id, model, before.score, after.score)
            if after.quarantined and not before.quarantined:
                log.error("audit: node %s quarantined after %d audit(s)", node_id,
                          after.passes + after.fails)
            await self.bus.publish(REPUTATION, encode(ReputationUpdate(
                node_id=node_id, score=after.score, passes=after.passes, fails=after.fails)))

    async def _ask(self, node_id: str, instance_id: str,
                   body: dict[str, object]) -> str | None:
        """One canary to one instance: its text, or None when it did not finish in time."""
        request_id = f"req_{uuid.uuid4().hex}"  # indistinguishable from customer requests
        request = InferRequest(request_id=request_id, instance_id=instance_id,
                               kind="completion", body=body)
        parts: list[str] = []
        stream = self.bus.stream(infer_subject(node_id), encode(request),
                                 first_timeout=self.timeout_s, idle_timeout=self.timeout_s)
        try:
            async for raw in stream:
                chunk = decode(raw, InferChunk)
                if chunk.kind == "delta":
                    parts.append(chunk.text)
                elif chunk.kind == "final":
                    return "".join(parts)
                elif chunk.kind == "error":
                    return None
        except BusError:
            return None
        finally:
            await stream.aclose()
        return None
