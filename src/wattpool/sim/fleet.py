"""A generated fleet of sites: region, GPUs, power price, failures and curtailment.

Sites are GPU containers at mining sites: mostly ex-mining consumer cards, some
data-centre GPUs, clustered where power is cheap. Every number below is an assumption
of ours (listed in docs/simulator.md); the generator takes a seed and is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wattpool.sim.perf import GpuProfile
from wattpool.sim.regions import REGIONS, rtt_ms

# Where sites are (mining clusters where power is cheap), and what they hold.
SITE_REGION_WEIGHTS = {
    "US-TEX-ERCO": 0.24, "US-CAL-CISO": 0.05, "US-NY-NYIS": 0.08, "US-MIDA-PJM": 0.10,
    "CA-ON": 0.08, "DE-LU": 0.07, "ES": 0.10, "SG": 0.04, "JP-TK": 0.04, "AU-NSW": 0.20,
}
GPU_MIX = {"RTX-3090": 0.35, "RTX-4090": 0.25, "A100-40GB": 0.08, "A100-80GB": 0.16,
           "H100-80GB": 0.16}
GPU_COUNTS = {"RTX-3090": (4, 8, 12), "RTX-4090": (4, 8), "A100-40GB": (8,),
              "A100-80GB": (4, 8), "H100-80GB": (4, 8)}


@dataclass(frozen=True, slots=True)
class SiteSpec:
    site_id: str
    region: str
    gpu: str  # key into the GPU profiles
    gpus: int
    price_factor: float  # the site's contract vs. the regional wholesale price
    price_adder: float  # $/MWh on top (delivery, fees)
    curtail_above: float  # $/MWh beyond which the site curtails (demand response); inf: never
    mtbf_h: float  # mean hours between failures of one instance
    mttr_s: float  # mean seconds to bring a failed instance back
    curtail_per_day: float  # grid-requested curtailments a day (random)
    curtail_s: float  # their mean length
    error_rate: float  # share of requests that fail before the first token (flaky site)


@dataclass(slots=True)
class Fleet:
    sites: list[SiteSpec]
    regions: list[str]  # region names; sites and gateways index into this
    prices: dict[str, np.ndarray]  # region -> hourly wholesale USD/MWh
    profiles: dict[str, GpuProfile]

    def site_price(self, site: SiteSpec, hour: int) -> float:
        series = self.prices[site.region]
        wholesale = float(series[min(max(hour, 0), len(series) - 1)])
        return wholesale * site.price_factor + site.price_adder

    def rtt_matrix(self) -> np.ndarray:
        """[gateway region, site region] round trips, ms."""
        return np.array([[rtt_ms(a, b) for b in self.regions] for a in self.regions])

    def instances_per_site(self) -> list[int]:
        return [s.gpus // self.profiles[s.gpu].gpus for s in self.sites]


def generate_fleet(n_sites: int, profiles: dict[str, GpuProfile],
                   prices: dict[str, np.ndarray], seed: int = 0, *,
                   mtbf_h: float = 500.0, mttr_s: float = 600.0,
                   curtail_per_day: float = 0.5, curtail_s: float = 1800.0,
                   flaky_share: float = 0.03, responsive_share: float = 0.5) -> Fleet:
    rng = np.random.default_rng(seed)
    regions = [r.name for r in REGIONS if r.name in prices]
    weights = np.array([SITE_REGION_WEIGHTS.get(r, 0.01) for r in regions])
    region_of = rng.choice(len(regions), size=n_sites, p=weights / weights.sum())
    gpu_names = [g for g in GPU_MIX if g in profiles]
    gpu_p = np.array([GPU_MIX[g] for g in gpu_names])
    gpu_of = rng.choice(len(gpu_names), size=n_sites, p=gpu_p / gpu_p.sum())
    factor = rng.uniform(0.7, 1.1, size=n_sites)  # mining contracts undercut wholesale
    adder = rng.uniform(5.0, 25.0, size=n_sites)
    responsive = rng.random(n_sites) < responsive_share
    threshold = np.where(responsive, rng.uniform(120.0, 400.0, size=n_sites), math.inf)
    flaky = rng.random(n_sites) < flaky_share
    error = np.where(flaky, rng.uniform(0.2, 0.6, size=n_sites), 0.0)
    width = len(str(max(n_sites - 1, 0)))
    sites: list[SiteSpec] = []
    for k in range(n_sites):
        gpu = gpu_names[int(gpu_of[k])]
        counts = GPU_COUNTS.get(gpu, (profiles[gpu].gpus,))
        sites.append(SiteSpec(
            site_id=f"site-{k:0{width}d}", region=regions[int(region_of[k])], gpu=gpu,
            gpus=int(counts[int(rng.integers(len(counts)))]),
            price_factor=float(factor[k]), price_adder=float(adder[k]),
            curtail_above=float(threshold[k]), mtbf_h=mtbf_h, mttr_s=mttr_s,
            curtail_per_day=curtail_per_day, curtail_s=curtail_s, error_rate=float(error[k]),
        ))
    return Fleet(sites, regions, {r: prices[r] for r in regions}, profiles)
