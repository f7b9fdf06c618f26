"""How many instances of each model run at which sites, across regions.

The invariant that keeps the pass short: *placed replicas catch up with desired replicas
under each site's GPU budget, never more than a region's share in one region and never
more than ``max_per_site`` at one site*. Within those caps sites are taken cheapest first,
where cost mixes the site's power price with its round trip to where the demand is.

What already runs on a live site stays (moving weights costs minutes of download and
load); an instance on a curtailed site stays too, since curtailment ends, and the spread
caps are what keep the model up meanwhile. Only with ``max_moves > 0`` does a pass move
an instance, and only when the new site is cheaper by more than ``move_gain``.

A pure function of plain values, like ``placement.plan_placement`` (which the live
reconciler uses for nodes); this one plans over sites for the simulator and, later, the
multi-site reconciler.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SiteView:
    site_id: str
    region: str
    gpus: int  # GPUs the site offers the pool
    gpu_memory_bytes: int  # per GPU
    gpu_type: str = ""
    live: bool = True
    curtailed: bool = False
    price_per_mwh: float = 0.0  # power price now (or a forecast average), $/MWh


@dataclass(frozen=True, slots=True)
class ModelSpec:
    deployment_id: str
    model_id: str
    replicas: int
    memory_bytes: int  # what one instance needs, across its GPUs
    max_per_site: int = 1  # replicas one site may hold (1: one site's loss costs one)
    max_region_share: float = 0.5  # of replicas in one region, when 2+ regions can host


@dataclass(frozen=True, slots=True)
class SitePlacement:
    instance_id: str
    deployment_id: str
    model_id: str
    site_id: str
    gpus: int  # GPUs the instance takes at the site


@dataclass(frozen=True, slots=True)
class SitePlan:
    placements: list[SitePlacement]  # what should run, kept and new
    started: list[SitePlacement]  # new this pass (weights to load)
    stopped: list[SitePlacement]  # removed this pass
    unplaced: dict[str, str]  # deployment id -> why replicas are missing
    notes: dict[str, list[str]] = field(default_factory=dict)  # deployment id -> what was done


def gpus_needed(model: ModelSpec, site: SiteView) -> int:
    """GPUs of this site one instance needs (memory split evenly across GPUs)."""
    if site.gpu_memory_bytes <= 0:
        return 0
    return max(1, math.ceil(model.memory_bytes / site.gpu_memory_bytes))


def demand_rtt(site: SiteView, demand: Mapping[str, float],
               rtt_ms: Callable[[str, str], float]) -> float:
    """Demand-weighted round trip from where requests come from to the site, ms."""
    total = sum(demand.values())
    if total <= 0:
        return 0.0
    return sum(w * rtt_ms(region, site.region) for region, w in demand.items()) / total


@dataclass(slots=True)
class _Tally:
    """Where one model's replicas are, against its caps, while a pass places them."""

    model: ModelSpec
    free: dict[str, int]  # site id -> free GPUs (shared by all models in the pass)
    per_site: Counter[str]
    per_region: Counter[str]
    region_cap: int
    new_id: Callable[[], str]

    def room(self, site: SiteView) -> bool:
        return (self.free[site.site_id] >= gpus_needed(self.model, site)
                and self.per_site[site.site_id] < self.model.max_per_site
                and self.per_region[site.region] < self.region_cap)

    def count(self, site: SiteView, delta: int) -> None:
        self.per_site[site.site_id] += delta
        self.per_region[site.region] += delta

    def take(self, site: SiteView) -> SitePlacement | None:
        if not self.room(site):
            return None
        need = gpus_needed(self.model, site)
        self.free[site.site_id] -= need
        self.count(site, +1)
        return SitePlacement(self.new_id(), self.model.deployment_id, self.model.model_id,
                             site.site_id, need)


def plan_sites(models: Sequence[ModelSpec], sites: Sequence[SiteView],
               current: Sequence[SitePlacement], new_instance_id: Callable[[], str], *,
               demand: Mapping[str, float] | None = None,
               rtt_ms: Callable[[str, str], float] | None = None,
               price_weight: float = 1.0, demand_weight: float = 1.0,
               max_moves: int = 0, move_gain: float = 0.25) -> SitePlan:
    by_site = {s.site_id: s for s in sites}
    free = {s.site_id: s.gpus for s in sites if s.live}
    rtt = rtt_ms or (lambda a, b: 0.0)
    wanted = demand or {}
    hosts = [s for s in sites if s.live and not s.curtailed and s.gpu_memory_bytes > 0]
    max_price = max((max(s.price_per_mwh, 0.0) for s in hosts), default=0.0) or 1.0
    reach = {s.site_id: demand_rtt(s, wanted, rtt) for s in hosts}
    max_reach = max(reach.values(), default=0.0) or 1.0
    # 0 (cheap, near the demand) .. price_weight + demand_weight
    cost = {s.site_id: price_weight * max(s.price_per_mwh, 0.0) / max_price
            + demand_weight * reach[s.site_id] / max_reach for s in hosts}

    placements: list[SitePlacement] = []
    started: list[SitePlacement] = []
    stopped: list[SitePlacement] = []
    unplaced: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    by_dep = {m.deployment_id: m for m in models}

    kept: dict[str, list[SitePlacement]] = {m.deployment_id: [] for m in models}
    for p in current:
        model = by_dep.get(p.deployment_id)
        site = by_site.get(p.site_id)
        if model is None or site is None or not site.live or free[p.site_id] < p.gpus:
            stopped.append(p)
            continue
        kept[p.deployment_id].append(p)
        free[p.site_id] -= p.gpus

    moves_left = max_moves
    for model in models:
        dep = model.deployment_id
        log = notes.setdefault(dep, [])
        mine = kept[dep]
        if len(mine) > model.replicas:  # too many: stop the most expensive first
            mine.sort(key=lambda p: cost.get(p.site_id, math.inf))
            for p in mine[model.replicas:]:
                stopped.append(p)
                free[p.site_id] += p.gpus
            log.append(f"stopped {len(mine) - model.replicas} beyond {model.replicas} replicas")
            del mine[model.replicas:]
        if mine:
            log.append(f"kept {len(mine)} on live sites")
        fits = [s for s in hosts if 0 < gpus_needed(model, s) <= s.gpus]
        regions = {s.region for s in fits}
        tally = _Tally(
            model, free,
            Counter(p.site_id for p in mine), Counter(by_site[p.site_id].region for p in mine),
            (max(1, math.ceil(model.replicas * model.max_region_share))
             if len(regions) >= 2 else model.replicas),
            new_instance_id,
        )
        region_cap = tally.region_cap
        order = sorted(fits, key=lambda s: (cost[s.site_id], s.site_id))

        new: list[SitePlacement] = []
        for site in order:  # one pass: each site takes what its caps allow
            while len(mine) + len(new) < model.replicas:
                p = tally.take(site)
                if p is None:
                    break
                new.append(p)
            if len(mine) + len(new) >= model.replicas:
                break
        if new:
            log.append(f"placed {len(new)} cheapest-first in "
                       f"{len({by_site[p.site_id].region for p in new})} region(s)")
        missing = model.replicas - len(mine) - len(new)
        if missing > 0:
            unplaced[dep] = (f"{missing} replica(s) need {model.memory_bytes / 2**30:.0f} GiB on "
                             f"a live, uncurtailed site with free GPUs (region cap "
                             f"{region_cap}, {model.max_per_site} per site)")

        # Optional moves: the dearest kept instance to the cheapest free fit, if worth it.
        while moves_left > 0 and mine:
            worst = max(mine, key=lambda p: (cost.get(p.site_id, math.inf), p.site_id))
            old_cost = cost.get(worst.site_id, math.inf)
            tally.count(by_site[worst.site_id], -1)
            target = next((s for s in order if s.site_id != worst.site_id
                           and cost[s.site_id] + move_gain < old_cost and tally.room(s)), None)
            if target is None:
                tally.count(by_site[worst.site_id], +1)
                break
            moved = tally.take(target)
            assert moved is not None  # the checks above are take()'s own
            mine.remove(worst)
            stopped.append(worst)
            free[worst.site_id] += worst.gpus
            new.append(moved)
            moves_left -= 1
            log.append(f"moved {worst.instance_id} from {worst.site_id} to {target.site_id} "
                       f"(cost {old_cost:.2f} -> {cost[target.site_id]:.2f})")
        placements.extend(mine)
        placements.extend(new)
        started.extend(new)
    return SitePlan(placements, started, stopped, unplaced, notes)
