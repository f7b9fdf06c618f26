"""wattpool.control.registry.Registry and wattpool.control.router.Router."""

from __future__ import annotations

import pytest

from wattpool.control.registry import InstanceView, Registry
from wattpool.control.router import RouteHints, Router, prompt_text_of
from wattpool.policy.candidates import READY
from wattpool.protocol import (
    Hardware,
    Heartbeat,
    InstanceSpec,
    InstanceState,
    InstanceStatus,
)

TIMEOUT_S = 6.0


class FakeClock:
    """A clock the test moves by hand (satisfies wattpool.clock.Clock)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds


def hardware(memory_gib: int = 16) -> Hardware:
    return Hardware(cpu_count=4, memory_total=memory_gib * 2**30,
                    memory_available=memory_gib * 2**30)


class Fleet:
    """A registry with nodes and instances, and helpers to send heartbeats."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.registry = Registry(clock=self.clock, heartbeat_timeout_s=TIMEOUT_S)
        self.router = Router(self.registry)
        self.seq = 0

    def node(self, node_id: str) -> None:
        self.registry.add_node(node_id, f"name-{node_id}", hardware())

    def instance(self, instance_id: str, node_id: str, model_id: str = "m") -> InstanceView:
        spec = InstanceSpec(instance_id=instance_id, model_id=model_id, engine="synthetic",
                            source="synthetic")
        view = InstanceView(spec=spec, node_id=node_id)
        self.registry.instances[instance_id] = view
        self.registry.models[model_id] = 2048
        return view

    def beat(self, node_id: str, *statuses: tuple[str, InstanceState, int],
             restarts: int = 0, error: str | None = None,
             hw: Hardware | None = None) -> list[InstanceView]:
        self.seq += 1
        instances = [
            InstanceStatus(instance_id=iid, model_id=self.registry.instances[iid].model_id
                           if iid in self.registry.instances else "m",
                           state=state, in_flight=in_flight, restarts=restarts, error=error)
            for iid, state, in_flight in statuses
        ]
        return self.registry.record_heartbeat(Heartbeat(
            node_id=node_id, seq=self.seq, hardware=hw or hardware(), instances=instances,
        ))

    def ready(self, model_id: str = "m") -> dict[str, bool]:
        """instance id -> whether the router may send it new work."""
        return {c.instance_id: c.flags == READY for c in self.router.candidates(model_id)}

    def chosen(self, model_id: str = "m") -> str | None:
        return self.router.decide(model_id).chosen


@pytest.fixture
def fleet() -> Fleet:
    f = Fleet()
    f.node("n1")
    f.node("n2")
    f.instance("i1", "n1")
    f.instance("i2", "n2")
    return f


# --- registry ------------------------------------------------------------------------


def test_add_node_records_last_seen(fleet: Fleet) -> None:
    fleet.clock.advance(3)
    view = fleet.registry.add_node("n3", "third", hardware(64))
    assert fleet.registry.nodes["n3"] is view
    assert (view.name, view.last_seen, view.reachable) == ("third", fleet.clock.now, True)
    assert view.hardware.memory_total == 64 * 2**30


def test_new_instances_are_scheduled_and_not_routable(fleet: Fleet) -> None:
    assert fleet.registry.instances["i1"].state == "scheduled"
    assert fleet.ready() == {"i1": False, "i2": False}
    assert fleet.router.ready_instances("m") == 0
    assert fleet.router.pick("m") is None


def test_heartbeat_updates_state_and_returns_changed_views(fleet: Fleet) -> None:
    changed = fleet.beat("n1", ("i1", "loading", 0))
    assert changed == [fleet.registry.instances["i1"]]
    assert fleet.registry.instances["i1"].state == "loading"

    changed = fleet.beat("n1", ("i1", "ready", 2))
    assert [v.instance_id for v in changed] == ["i1"]
    view = fleet.registry.instances["i1"]
    assert (view.state, view.in_flight) == ("ready", 2)


def test_heartbeat_without_change_returns_nothing(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 0))
    # Only the in-flight count moves: not a state change worth persisting.
    assert fleet.beat("n1", ("i1", "ready", 5)) == []
    assert fleet.registry.instances["i1"].in_flight == 5


def test_restarts_and_errors_count_as_changes(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 0))
    changed = fleet.beat("n1", ("i1", "ready", 0), restarts=1)
    assert [v.instance_id for v in changed] == ["i1"]
    assert fleet.registry.instances["i1"].restarts == 1
    changed = fleet.beat("n1", ("i1", "failed", 0), restarts=1, error="engine exited")
    assert [v.instance_id for v in changed] == ["i1"]
    view = fleet.registry.instances["i1"]
    assert (view.state, view.error) == ("failed", "engine exited")


def test_heartbeat_ignores_other_nodes_instances_and_learns_new_ones(fleet: Fleet) -> None:
    # n2 reports i1, which belongs to n1 (ignored), and an instance this registry has not
    # seen: a replica that is not the leader learns the fleet from heartbeats alone.
    changed = fleet.beat("n2", ("i1", "ready", 0), ("learned", "ready", 0))
    assert [v.instance_id for v in changed] == ["learned"]
    assert fleet.registry.instances["i1"].state == "scheduled"
    learned = fleet.registry.instances["learned"]
    assert (learned.node_id, learned.state) == ("n2", "ready")


def test_heartbeat_updates_node_hardware_and_last_seen(fleet: Fleet) -> None:
    fleet.clock.advance(2.5)
    fleet.beat("n1", hw=hardware(128))
    node = fleet.registry.nodes["n1"]
    assert node.last_seen == fleet.clock.now
    assert node.hardware.memory_total == 128 * 2**30


def test_silent_node_becomes_unreachable_and_leaves_routing(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 0))
    fleet.beat("n2", ("i2", "ready", 0))
    assert fleet.ready() == {"i1": True, "i2": True}
    assert fleet.router.ready_instances("m") == 2

    fleet.clock.advance(TIMEOUT_S - 1)
    fleet.beat("n2", ("i2", "ready", 0))  # n2 keeps talking, n1 falls silent
    fleet.clock.advance(TIMEOUT_S)  # n1: 2*TIMEOUT_S - 1 > timeout; n2: exactly TIMEOUT_S
    lost = fleet.registry.mark_unreachable()
    assert [n.node_id for n in lost] == ["n1"]
    assert fleet.registry.nodes["n1"].reachable is False
    assert fleet.registry.nodes["n2"].reachable is True

    assert fleet.ready() == {"i1": False, "i2": True}
    decision = fleet.router.decide("m", explain=True)
    assert decision.chosen == "i2"
    dropped = {r.instance_id: r.reason for r in decision.report or () if r.dropped_by}
    assert list(dropped) == ["i1"] and "not ready" in dropped["i1"]

    # Marking again reports nothing new.
    assert fleet.registry.mark_unreachable() == []


def test_node_within_timeout_stays_reachable(fleet: Fleet) -> None:
    fleet.clock.advance(TIMEOUT_S)
    assert fleet.registry.mark_unreachable() == []
    fleet.clock.advance(0.001)
    assert {n.node_id for n in fleet.registry.mark_unreachable()} == {"n1", "n2"}


def test_unreachable_node_comes_back_on_next_heartbeat(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 0))
    fleet.clock.advance(TIMEOUT_S + 1)
    fleet.registry.mark_unreachable()
    assert fleet.router.pick("m") is None

    fleet.beat("n1", ("i1", "ready", 0))
    assert fleet.registry.nodes["n1"].reachable is True
    picked = fleet.router.pick("m")
    assert picked is fleet.registry.instances["i1"]


def test_only_ready_instances_are_routable(fleet: Fleet) -> None:
    for state in ("scheduled", "loading", "failed", "stopped"):
        fleet.beat("n1", ("i1", state, 0))
        assert fleet.router.pick("m") is None, state
    fleet.beat("n1", ("i1", "ready", 0))
    assert fleet.chosen() == "i1"


def test_candidates_are_per_model(fleet: Fleet) -> None:
    fleet.instance("o1", "n1", model_id="other")
    assert list(fleet.ready("other")) == ["o1"]
    assert fleet.router.candidates("unknown") == []


def test_instance_on_a_removed_node_is_not_ready(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 0))
    del fleet.registry.nodes["n1"]
    assert fleet.ready()["i1"] is False


def test_instance_missing_from_heartbeat_is_no_longer_ready(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 0))
    fleet.beat("n1")  # the node came back empty: it runs nothing now
    assert fleet.router.pick("m") is None


# --- router --------------------------------------------------------------------------


def test_router_picks_least_loaded_by_heartbeat(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 4))
    fleet.beat("n2", ("i2", "ready", 1))
    assert fleet.chosen() == "i2"


def test_local_in_flight_shifts_the_choice(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 0))
    fleet.beat("n2", ("i2", "ready", 0))
    assert fleet.chosen() == "i1"  # tie: lowest id

    fleet.router.acquire("i1")
    assert fleet.chosen() == "i2"  # heartbeats still say 0, the router knows better
    fleet.router.acquire("i2")
    assert fleet.chosen() == "i1"  # 1 vs 1: tie again
    fleet.router.acquire("i2")
    assert fleet.chosen() == "i1"

    fleet.router.release("i1")
    fleet.router.release("i1")  # one release too many does not go negative
    assert "i1" not in fleet.router.local_in_flight
    fleet.router.acquire("i1")
    fleet.router.acquire("i1")
    fleet.router.acquire("i1")
    assert fleet.chosen() == "i2"  # 3 vs 2

    fleet.router.release("i2")
    fleet.router.release("i2")
    assert fleet.router.local_in_flight == {"i1": 3}
    assert fleet.chosen() == "i2"


def test_local_count_and_heartbeat_count_are_not_added(fleet: Fleet) -> None:
    # The node's count includes the router's own requests: the larger one wins.
    fleet.beat("n1", ("i1", "ready", 3))
    fleet.beat("n2", ("i2", "ready", 2))
    fleet.router.acquire("i1")
    fleet.router.acquire("i1")
    assert fleet.chosen() == "i2"  # max(3, 2) = 3 > 2
    for _ in range(3):
        fleet.router.acquire("i2")
    assert fleet.chosen() == "i1"  # 3 vs max(2, 3) = 3: tie, lowest id


def test_router_exclude_for_failover(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 0))
    fleet.beat("n2", ("i2", "ready", 9))
    assert fleet.router.pick("m", exclude=["i1"]) is fleet.registry.instances["i2"]
    assert fleet.router.pick("m", exclude=["i1", "i2"]) is None


def test_router_decision_does_not_change_registry(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 1))
    fleet.router.acquire("i1")
    fleet.router.acquire("i1")
    decision = fleet.router.decide("m")
    assert decision.chosen == "i1"
    assert [c.in_flight for c in fleet.router.candidates("m") if c.instance_id == "i1"] == [2]
    assert fleet.registry.instances["i1"].in_flight == 1


def test_knows_model(fleet: Fleet) -> None:
    assert fleet.router.knows_model("m") is True
    assert fleet.router.knows_model("unknown") is False
    assert fleet.router.decide("unknown").chosen is None
    assert fleet.router.pick("unknown") is None


def test_known_model_without_instances(fleet: Fleet) -> None:
    fleet.registry.models["lonely"] = 4096
    assert fleet.router.knows_model("lonely") is True
    assert fleet.router.pick("lonely") is None


# --- price, power and hints (the policy's filters and energy scorer, live) ----------------


def test_cheaper_site_wins_when_all_else_is_equal(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 0))
    fleet.beat("n2", ("i2", "ready", 0))
    fleet.router.node_site.update({"n1": "s1", "n2": "s2"})
    fleet.router.site_prices.update({"s1": 90.0, "s2": 30.0})
    assert fleet.chosen() == "i2"
    fleet.router.site_prices.update({"s1": 10.0})
    assert fleet.chosen() == "i1"


def test_load_still_outweighs_a_small_price_difference(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 0))
    fleet.beat("n2", ("i2", "ready", 3))
    fleet.router.node_site.update({"n1": "s1", "n2": "s2"})
    fleet.router.site_prices.update({"s1": 41.0, "s2": 40.0})
    assert fleet.chosen() == "i1"


def test_curtailed_site_is_never_picked_and_explained(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 0))
    fleet.beat("n2", ("i2", "ready", 5))
    fleet.router.node_site.update({"n1": "s1", "n2": "s2"})
    fleet.router.curtailed_sites = {"s1": object()}
    decision = fleet.router.decide("m", explain=True)
    assert decision.chosen == "i2"
    reasons = {r.instance_id: r.reason for r in decision.report or () if r.dropped_by}
    assert "curtailed" in reasons["i1"]
    fleet.router.curtailed_sites = {"s1": object(), "s2": object()}
    assert fleet.router.pick("m") is None
    assert not fleet.router.has_ready("m")
    assert fleet.router.ready_instances("m") == 0  # admission sees no capacity either


def test_max_price_hint_keeps_only_cheap_sites(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 0))
    fleet.beat("n2", ("i2", "ready", 9))
    fleet.router.node_site.update({"n1": "s1", "n2": "s2"})
    fleet.router.site_prices.update({"s1": 120.0, "s2": 20.0})
    cheap = RouteHints(max_price=50.0)
    assert fleet.router.pick("m", hints=cheap) is fleet.registry.instances["i2"]
    assert fleet.router.has_ready("m", max_price=50.0)
    assert not fleet.router.has_ready("m", max_price=10.0)
    assert fleet.router.pick("m", hints=RouteHints(max_price=10.0)) is None


def test_site_without_a_price_gets_the_mean_price(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 0))
    fleet.beat("n2", ("i2", "ready", 0))
    fleet.router.node_site.update({"n1": "s1"})
    fleet.router.site_prices.update({"s1": 80.0, "s3": 20.0})
    prices = {c.instance_id: c.price_per_mwh for c in fleet.router.candidates("m")}
    assert prices == {"i1": 80.0, "i2": 50.0}


def test_prompt_text_of_requests() -> None:
    assert prompt_text_of({"prompt": "abc"}) == "abc"
    assert prompt_text_of({"prompt": ["a", "b", 3]}) == "ab"
    chat = {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "hi"}, "junk"]}
    assert prompt_text_of(chat) == "system:be brief\nuser:hi\n"
    assert prompt_text_of({}) == ""


def test_shared_prompt_prefix_sticks_to_one_instance_until_it_is_busier(fleet: Fleet) -> None:
    fleet.beat("n1", ("i1", "ready", 0))
    fleet.beat("n2", ("i2", "ready", 0))
    system = "You are a careful assistant for ACME's billing team. " * 20  # > 1 KB
    first = fleet.router.pick("m", hints=RouteHints(system + "question one"))
    assert first is not None
    other = "i2" if first.instance_id == "i1" else "i1"
    fleet.router.acquire(first.instance_id)  # one request more than the other
    again = fleet.router.pick("m", hints=RouteHints(system + "question two"))
    assert again is not None and again.instance_id == first.instance_id
    for _ in range(4):  # now far busier: affinity yields to load
        fleet.router.acquire(first.instance_id)
    moved = fleet.router.pick("m", hints=RouteHints(system + "question three"))
    assert moved is not None and moved.instance_id == other


def test_kept_table_matches_a_fresh_one_through_every_kind_of_change(fleet: Fleet) -> None:
    """Router keeps its candidate table between decisions (rows rewritten when figures
    change, rebuilt when the instances do); after each change it must hold exactly what a
    table built from scratch holds."""
    import numpy as np

    from wattpool.policy.candidates import CandidateTable

    router = fleet.router

    def check() -> CandidateTable:
        router.decide("m")
        cands = router.candidates("m")
        kept = router._tables["m"][1]
        fresh = CandidateTable.from_candidates(cands, model_id="m")
        assert kept.ids == fresh.ids and kept.regions == fresh.regions
        assert kept.node_ids == fresh.node_ids and kept.site_ids == fresh.site_ids
        np.testing.assert_array_equal(kept.data, fresh.data)
        np.testing.assert_array_equal(kept.rtt, fresh.rtt)
        return kept

    fleet.beat("n1", ("i1", "ready", 0))
    fleet.beat("n2", ("i2", "ready", 0))
    first = check()
    router.acquire("i1")
    assert check() is first  # a figure changed: the same table, one row rewritten
    fleet.beat("n2", ("i2", "ready", 3))
    router.node_site.update({"n1": "s1", "n2": "s2"})
    router.site_prices.update({"s1": 70.0, "s2": 20.0})
    router.curtailed_sites = {"s2": object()}
    assert check() is first
    assert router.pick("m") is fleet.registry.instances["i1"]  # s2 is curtailed
    router.curtailed_sites = {}
    router.site_region.update({"s1": "EU"})  # a row's region: rebuilt
    assert check() is not first
    fleet.node("n3")
    fleet.instance("i3", "n3")
    fleet.beat("n3", ("i3", "ready", 0))
    assert check().ids == ["i1", "i2", "i3"]
    assert router.pick("m", exclude=["i1", "i2"]) is fleet.registry.instances["i3"]
    del fleet.registry.instances["i2"]
    assert check().ids == ["i1", "i3"]
