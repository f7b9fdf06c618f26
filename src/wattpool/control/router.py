"""Chooses the instance for a request: the live fleet view in, a ``policy`` decision out.

The decision itself is ``wattpool.policy``'s, the same code the simulator runs: filters
(ready, not draining, curtailed or quarantined, room in the queue), then weighted scorers
(load, prefix affinity, expected latency, the energy cost at the site's power price now,
reliability). This module only turns the registry, the sites' prices and the router's own
in-flight counts into a candidate table.

What the live router cannot measure yet it leaves neutral, so it does not steer: the RTT
from the gateway (0 for every site), and the watts a request draws (the same for every
node, so the energy scorer ranks by price alone). A site without a price source is given
the mean price of the sites that have one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from wattpool.control.registry import InstanceView, Registry
from wattpool.policy.baselines import RoutingPolicy, make_policy
from wattpool.policy.candidates import READY, Candidate, CandidateTable, RequestSpec
from wattpool.policy.decision import Decision
from wattpool.policy.prefix import text_block_hashes

# Per-request draw the live router assumes for every node (see the module docstring).
ASSUMED_WATTS = 300.0
# Characters per token, to estimate a prompt's length before any tokenizer has seen it.
CHARS_PER_TOKEN = 4
DEFAULT_OUTPUT_TOKENS = 256


@dataclass(frozen=True, slots=True)
class RouteHints:
    """What the gateway knows about a request before sending it."""

    prompt_text: str = ""
    max_tokens: int | None = None
    # Only instances at sites whose price now is at most this (batch work waiting for
    # cheap power); None means any price.
    max_price: float | None = None


def prompt_text_of(body: Mapping[str, object]) -> str:
    """The prompt as one string: a completion's prompt, or the chat messages' contents."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "".join(p for p in prompt if isinstance(p, str))
    parts: list[str] = []
    for message in body.get("messages") or ():  # type: ignore[attr-defined]
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, str):
                parts.append(f"{message.get('role', '')}:{content}\n")
    return "".join(parts)


class Router:
    def __init__(self, registry: Registry, *, policy: str = "wattpool", slots: int = 4,
                 seed: int = 0) -> None:
        self.registry = registry
        self.policy: RoutingPolicy = make_policy(policy)
        self.slots = max(1, slots)
        self.rng = np.random.default_rng(seed)
        # Requests this process has in flight per instance. Heartbeats lag; this does not.
        self.local_in_flight: Counter[str] = Counter()
        # Kept current by the control plane's power watch (control/power.py).
        self.node_site: dict[str, str] = {}
        self.site_region: dict[str, str] = {}
        self.site_prices: dict[str, float] = {}
        self.curtailed_sites: Mapping[str, object] = {}
        # The last table per model and the candidates it was built from (see _table).
        self._tables: dict[str, tuple[list[Candidate], CandidateTable]] = {}

    def knows_model(self, model_id: str) -> bool:
        return model_id in self.registry.models

    def site_price(self, site_id: str) -> float | None:
        return self.site_prices.get(site_id)

    # --- the decision ---------------------------------------------------------------

    def candidates(self, model_id: str, max_price: float | None = None) -> list[Candidate]:
        known = list(self.site_prices.values())
        fallback_price = sum(known) / len(known) if known else 0.0
        out = []
        for view in sorted(self.registry.instances.values(), key=lambda v: v.instance_id):
            if view.model_id != model_id:
                continue
            node = self.registry.nodes.get(view.node_id)
            site = self.node_site.get(view.node_id, "")
            price = self.site_prices.get(site, fallback_price)
            if max_price is not None and price > max_price:
                continue
            weight = node.reputation.traffic_weight if node is not None else 1.0
            in_flight = max(view.in_flight, self.local_in_flight[view.instance_id])
            out.append(Candidate(
                instance_id=view.instance_id, node_id=view.node_id, model_id=model_id,
                region=self.site_region.get(site, ""), site_id=site,
                ready=view.state == "ready" and node is not None and node.reachable,
                draining=node is not None and node.power_state == "draining",
                curtailed=(site in self.curtailed_sites
                           or (node is not None and node.power_state == "curtailed")),
                quarantined=node is not None and node.reputation.quarantined,
                in_flight=_weighted_load(in_flight, weight), max_batch=self.slots,
                max_queue=1_000_000,  # the gateway's admission queue bounds waiting
                price_per_mwh=price, watts=ASSUMED_WATTS,
                error_rate=min(1.0, max(0.0, 1.0 - weight)),
            ))
        return out

    def decide(self, model_id: str, exclude: Iterable[str] = (),
               hints: RouteHints | None = None, *, explain: bool = False) -> Decision:
        hints = hints or RouteHints()
        table = self._table(model_id, self.candidates(model_id, hints.max_price))
        text = hints.prompt_text
        request = RequestSpec(
            model_id=model_id,
            prompt_tokens=max(1, len(text) // CHARS_PER_TOKEN),
            output_tokens=hints.max_tokens or DEFAULT_OUTPUT_TOKENS,
            block_hashes=text_block_hashes(text) if text else (),
            exclude=frozenset(exclude),
        )
        decision = self.policy.choose(request, table, self.rng, explain=explain)
        if decision.chosen is not None and not explain:
            self.policy.observe(request, table, decision.row)  # remember its prefix
        return decision

    def _table(self, model_id: str, candidates: list[Candidate]) -> CandidateTable:
        """The candidates as a table, kept from one decision to the next: rebuilt when the
        instances change, rows rewritten when only their figures do (the usual case: the
        in-flight count a request moves). Building a table is ~8 numpy calls, 55 us a
        request in the pool under load; a policy only reads the table."""
        cached = self._tables.get(model_id)
        if cached is not None:
            old, table = cached
            if old == candidates:
                return table
            if (len(old) == len(candidates)
                    and all(a.instance_id == b.instance_id and a.region == b.region
                            for a, b in zip(old, candidates, strict=True))):
                regions = {r: i for i, r in enumerate(table.regions)}
                for row, (a, b) in enumerate(zip(old, candidates, strict=True)):
                    if a != b:
                        table.set_row(row, b, regions[b.region])
                        table.rtt[0, row] = b.rtt_ms
                self._tables[model_id] = (candidates, table)
                return table
        table = CandidateTable.from_candidates(candidates, model_id=model_id)
        self._tables[model_id] = (candidates, table)
        return table

    def pick(self, model_id: str, exclude: Iterable[str] = (),
             hints: RouteHints | None = None) -> InstanceView | None:
        decision = self.decide(model_id, exclude, hints)
        if decision.chosen is None:
            return None
        return self.registry.instances.get(decision.chosen)

    def has_ready(self, model_id: str, max_price: float | None = None) -> bool:
        """Whether some instance could take new work now (at most at ``max_price``)."""
        return any(c.flags == READY for c in self.candidates(model_id, max_price))

    def ready_instances(self, model_id: str) -> int:
        """Instances that could take new work now (admission sizes its slots by them)."""
        return sum(1 for c in self.candidates(model_id) if c.flags == READY)

    def node_reachable(self, node_id: str) -> bool:
        node = self.registry.nodes.get(node_id)
        return node is not None and node.reachable

    def forget_instance(self, instance_id: str) -> None:
        """The instance is gone: drop what the policy remembered of its cache."""
        self.policy.forget(instance_id)

    def acquire(self, instance_id: str) -> None:
        self.local_in_flight[instance_id] += 1

    def release(self, instance_id: str) -> None:
        self.local_in_flight[instance_id] -= 1
        if self.local_in_flight[instance_id] <= 0:
            del self.local_in_flight[instance_id]


def _weighted_load(in_flight: int, weight: float) -> int:
    """A node with a lowered reputation looks busier, so it gets less traffic."""
    if weight >= 1.0 or weight <= 0.0:
        return in_flight
    return math.ceil((in_flight + 1) / weight) - 1
