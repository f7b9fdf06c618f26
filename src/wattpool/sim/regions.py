"""Regions the simulated fleet lives in: where they are, their currency, and round trips.

Each region is a power market with an hourly price file in the GreenDCC data. The
coordinates are a representative city (for the round-trip model, not the grid's
centre); the exchange rates are 2023 averages, rounded. Both are our assumptions and are
listed in docs/simulator.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Region:
    name: str  # GreenDCC folder name
    city: str
    lat: float
    lon: float
    currency: str
    usd_per_unit: float  # 2023 average exchange rate, rounded
    utc_offset_h: int  # of naive timestamps in the price file, in August (0: already UTC)
    demand_weight: float  # share of requests that enter through a gateway here


REGIONS: tuple[Region, ...] = (
    Region("US-TEX-ERCO", "Dallas", 32.8, -96.8, "USD", 1.0, 0, 0.16),
    Region("US-CAL-CISO", "Sacramento", 38.6, -121.5, "USD", 1.0, 0, 0.16),
    Region("US-NY-NYIS", "Albany", 42.7, -73.8, "USD", 1.0, 0, 0.12),
    Region("US-MIDA-PJM", "Ashburn", 39.0, -77.5, "USD", 1.0, 0, 0.16),
    Region("CA-ON", "Toronto", 43.7, -79.4, "CAD", 0.74, -4, 0.05),
    Region("DE-LU", "Frankfurt", 50.1, 8.7, "EUR", 1.08, 2, 0.12),
    Region("ES", "Madrid", 40.4, -3.7, "EUR", 1.08, 2, 0.05),
    Region("SG", "Singapore", 1.35, 103.8, "SGD", 0.745, 8, 0.08),
    Region("JP-TK", "Tokyo", 35.7, 139.7, "JPY", 0.0071, 9, 0.06),
    Region("AU-NSW", "Sydney", -33.9, 151.2, "USD", 1.0, 10, 0.04),
)
BY_NAME = {r.name: r for r in REGIONS}

FIBRE_KM_PER_MS = 200.0  # light in glass: about 2/3 of c
ROUTE_FACTOR = 1.5  # real paths are longer than great circles
LOCAL_MS = 2.0  # last mile, switching, TLS already set up


def great_circle_km(a: Region, b: Region) -> float:
    la1, lo1, la2, lo2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = (math.sin((la2 - la1) / 2) ** 2
         + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2)
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def rtt_ms(a: str, b: str) -> float:
    """Round trip between two regions' cities over fibre, ms."""
    ra, rb = BY_NAME[a], BY_NAME[b]
    return LOCAL_MS + 2 * ROUTE_FACTOR * great_circle_km(ra, rb) / FIBRE_KM_PER_MS
