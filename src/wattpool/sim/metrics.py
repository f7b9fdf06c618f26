"""From a run's raw outcome to the numbers the report shows.

Definitions (docs/simulator.md):
- TTFT: arrival to first token at the client (includes the gateway-site round trip);
- TPOT: (last token - first token) / (output tokens - 1), for outputs longer than one;
- E2E: arrival to last token at the client;
- goodput: finished requests meeting both the TTFT and the TPOT bound, per second of
  the arrival window;
- prefix-cache hit rate: prompt tokens found cached / prompt tokens sent to instances;
- energy cost per Mtok: dollars of energy attributed to the requests / million tokens
  served (prompt + output of finished requests); ``fleet_...`` adds the idle draw of
  every instance for the whole run;
- utilisation per site: slot-seconds used / (slots x the run, until the last stream
  ends); revenue per site:
  tokens served there x the price per Mtok.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from wattpool.sim.faults import DONE, REJECTED
from wattpool.sim.types import SimResult

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_s: float = 5.0
    tpot_s: float = 0.2


def _pct(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {f"p{p}": None for p in PERCENTILES}
    got = np.percentile(values, PERCENTILES)
    return {f"p{p}": round(float(v), 4) for p, v in zip(PERCENTILES, got, strict=True)}


def latencies(res: SimResult) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(done mask, TTFT s, TPOT s, E2E s) for finished requests (nan where undefined)."""
    done = res.status == DONE
    rtt_s = res.rtt / 1000.0
    ttft = res.first_token - res.arrival + rtt_s
    e2e = res.finish - res.arrival + rtt_s
    steps = np.maximum(res.output - 1, 1)
    tpot = np.where(res.output > 1, (res.finish - res.first_token) / steps, np.nan)
    return done, ttft, tpot, e2e


def summarize(res: SimResult, slo: Slo = Slo(), usd_per_mtok: float = 0.88) -> dict[str, Any]:
    done, ttft, tpot, e2e = latencies(res)
    n = len(res.status)
    rejected = res.status == REJECTED
    tpot_ok = np.where(np.isnan(tpot), True, tpot <= slo.tpot_s)
    good = done & (ttft <= slo.ttft_s) & tpot_ok
    served_tokens = float((res.prompt[done] + res.output[done]).sum())
    mtok = served_tokens / 1e6
    energy_usd = float(res.energy_usd.sum())
    slot_cap = res.site_slots * max(res.end_s, res.duration_s)
    util = np.divide(res.site_busy_s, slot_cap, out=np.zeros_like(slot_cap), where=slot_cap > 0)
    revenue = res.site_tokens / 1e6 * usd_per_mtok
    reasons = Counter(_reason_kind(r) for r in res.reasons.values())
    return {
        "policy": res.policy,
        "requests": n,
        "finished": int(done.sum()),
        "rejected": int(rejected.sum()),
        "rejected_reasons": dict(reasons.most_common(10)),
        "duration_s": round(res.duration_s, 3),
        "throughput_rps": round(int(done.sum()) / res.duration_s, 4),
        "goodput_rps": round(int(good.sum()) / res.duration_s, 4),
        "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s},
        "slo_attainment": round(int(good.sum()) / max(n, 1), 4),
        "ttft_s": _pct(ttft[done]),
        "tpot_s": _pct(tpot[done & ~np.isnan(tpot)]),
        "e2e_s": _pct(e2e[done]),
        "prefix_hit_rate": round(float(res.cached.sum()) / max(float(res.prefilled.sum()), 1.0),
                                 4),
        "energy_kwh": round(float(res.energy_j.sum()) / 3.6e6, 3),
        "energy_usd": round(energy_usd, 4),
        "energy_usd_per_mtok": round(energy_usd / mtok, 5) if mtok else None,
        "fleet_energy_usd_per_mtok": (round((energy_usd + res.idle_energy_usd) / mtok, 5)
                                      if mtok else None),
        "tokens_served": int(served_tokens),
        "tokens_delivered_output": int(res.delivered.sum()),
        "utilisation": {"mean": round(float(util.mean()), 4) if len(util) else 0.0,
                        **_pct(util)},
        "revenue_usd": round(float(revenue.sum()), 2),
        "revenue_per_site_usd": _pct(revenue),
        "counters": dict(res.counters),
        "explanations": res.explanations,
    }


def per_site(res: SimResult, usd_per_mtok: float = 0.88) -> list[dict[str, Any]]:
    slot_cap = res.site_slots * max(res.end_s, res.duration_s)
    util = np.divide(res.site_busy_s, slot_cap, out=np.zeros_like(slot_cap), where=slot_cap > 0)
    return [{"site": sid, "utilisation": round(float(u), 4),
             "revenue_usd": round(float(tok) / 1e6 * usd_per_mtok, 4)}
            for sid, u, tok in zip(res.site_ids, util, res.site_tokens, strict=True)]


def _reason_kind(reason: str) -> str:
    """Group reasons: '0/12 instances available: 7 queue full, 5 curtailed' -> its first
    named cause; 'failed on 4 instances' as is."""
    if ": " in reason:
        first = reason.split(": ", 1)[1].split(", ")[0]
        return "no capacity: " + first.split(" ", 1)[-1]
    return reason


def check_invariants(res: SimResult) -> list[str]:
    """What must hold for any run; returns the violations (empty when all hold)."""
    problems: list[str] = []
    done = res.status == DONE
    rejected = res.status == REJECTED
    if not np.all(done | rejected):
        problems.append(f"{int((~(done | rejected)).sum())} requests neither finished nor "
                        "rejected")
    missing = [int(r) for r in np.flatnonzero(rejected) if not res.reasons.get(int(r))]
    if missing:
        problems.append(f"{len(missing)} rejected requests without a reason")
    if not np.array_equal(res.delivered[done], res.output[done]):
        problems.append("a finished request delivered a different number of tokens")
    if np.any(res.delivered[rejected] >= res.output[rejected]):
        problems.append("a rejected request delivered all its tokens")
    if np.any(res.delivered < 0) or np.any(res.cached > res.prefilled):
        problems.append("negative tokens or more cached than sent")
    if np.any(res.first_token[done] < res.arrival[done] - 1e-9) or np.any(
            res.finish[done] < res.first_token[done] - 1e-9):
        problems.append("time runs backwards for some request")
    served = float((res.prompt[done] + res.output[done]).sum())
    if abs(float(res.site_tokens.sum()) - served) > 0.5:
        problems.append("tokens per site do not add up to the tokens served")
    return problems
