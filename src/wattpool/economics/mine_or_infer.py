"""Mine or infer: per interval, does a site's power earn more in bitcoin or in tokens? Pure.

Both options get the same site power budget (``site_kw``) for the interval:

- **mine**: ASICs drawing ``site_kw`` produce ``site_kw * 1000 / asic_j_per_th`` TH/s and
  earn ``hashprice`` USD per TH/s per day (the network's miners' revenue divided by its
  hash rate), less the mining pool's fee. They draw full power whenever they run.
- **infer**: GPUs sized so that ``site_kw`` is their full-load draw
  (``site_kw * 1000 / gpu_watts`` of them) sell ``utilisation`` of their full-load
  tokens/s at ``usd_per_mtok``; the operator keeps ``payout_frac`` of it (after the pool
  fee and reserve). Their draw is ``idle_watts`` plus ``utilisation`` of the span to
  ``gpu_watts``, so a half-busy site buys less power than a mining one.
- **idle**: nothing runs, nothing earned, nothing bought (margin 0).

Margin = revenue - power price x energy used. The choice is the largest margin; ties go
to idle, then mine. Every decision carries its inputs and both options' numbers, so a
log of decisions can be audited and replayed.

Rates (USD/MWh, USD/TH/day, USD per million tokens) are floats, as the data they come
from; money per interval is rounded to integer micro-dollars.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

Choice = Literal["mine", "infer", "idle"]
MICROS_PER_USD = 1_000_000
HOURS_PER_DAY = 24.0


@dataclass(frozen=True, slots=True)
class MiningParams:
    hashprice_usd_per_th_day: float  # miners' revenue per TH/s per day (subsidy + fees)
    asic_j_per_th: float  # joules per terahash of the site's ASICs
    pool_fee_frac: float = 0.0  # fee of the bitcoin mining pool, 0..1


@dataclass(frozen=True, slots=True)
class InferenceParams:
    tokens_per_s: float  # output tokens/s of one GPU at full load
    gpu_watts: float  # draw of one GPU (with its share of the host) at full load
    idle_watts: float  # draw of one GPU that holds a model but serves nothing
    usd_per_mtok: float  # what tenants pay per million output tokens
    payout_frac: float  # share of that the operator keeps (1 - pool fee - reserve)
    utilisation: float  # share of full-load throughput sold in the interval, 0..1


@dataclass(frozen=True, slots=True)
class IntervalInputs:
    start: datetime
    minutes: float  # length of the interval
    site_kw: float  # the site's power budget
    power_usd_per_mwh: float  # may be negative (paid to consume)
    mining: MiningParams
    inference: InferenceParams


@dataclass(frozen=True, slots=True)
class Option:
    revenue_micros: int
    energy_mwh: float
    power_cost_micros: int
    margin_micros: int  # revenue - power cost
    revenue_usd_per_mwh: float  # revenue per MWh this option draws (0 if it draws none)


@dataclass(frozen=True, slots=True)
class Decision:
    inputs: IntervalInputs
    mine: Option
    infer: Option
    choice: Choice
    margin_micros: int  # of the chosen option (0 for idle)
    # Tenant price per Mtok at which inference would just match the best other option
    # (mining or idle); None when the GPUs would sell no tokens.
    breakeven_usd_per_mtok: float | None

    def to_log(self) -> dict[str, Any]:
        """A JSON-ready record of the decision, its inputs and both options."""
        record = asdict(self)
        record["inputs"]["start"] = self.inputs.start.isoformat()
        return record


def _validate(inp: IntervalInputs) -> None:
    m, i = inp.mining, inp.inference
    checks = {
        "minutes": inp.minutes > 0, "site_kw": inp.site_kw >= 0,
        "hashprice_usd_per_th_day": m.hashprice_usd_per_th_day >= 0,
        "asic_j_per_th": m.asic_j_per_th > 0, "pool_fee_frac": 0 <= m.pool_fee_frac <= 1,
        "tokens_per_s": i.tokens_per_s >= 0, "gpu_watts": i.gpu_watts > 0,
        "idle_watts": 0 <= i.idle_watts <= i.gpu_watts, "usd_per_mtok": i.usd_per_mtok >= 0,
        "payout_frac": 0 <= i.payout_frac <= 1, "utilisation": 0 <= i.utilisation <= 1,
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"mine-or-infer inputs out of range: {', '.join(bad)}")


def _option(revenue_usd: float, energy_mwh: float, price: float) -> Option:
    revenue = round(revenue_usd * MICROS_PER_USD)
    cost = round(energy_mwh * price * MICROS_PER_USD)
    per_mwh = revenue_usd / energy_mwh if energy_mwh > 0 else 0.0
    return Option(revenue, energy_mwh, cost, revenue - cost, per_mwh)


def mining_option(inp: IntervalInputs) -> Option:
    m = inp.mining
    hours = inp.minutes / 60
    th_per_s = inp.site_kw * 1000 / m.asic_j_per_th  # W / (J/TH) = TH/s
    revenue = th_per_s * m.hashprice_usd_per_th_day * hours / HOURS_PER_DAY \
        * (1 - m.pool_fee_frac)
    return _option(revenue, inp.site_kw * hours / 1000, inp.power_usd_per_mwh)


def inference_option(inp: IntervalInputs) -> Option:
    i = inp.inference
    hours = inp.minutes / 60
    gpus = inp.site_kw * 1000 / i.gpu_watts
    tokens = gpus * i.tokens_per_s * i.utilisation * hours * 3600
    revenue = tokens / 1e6 * i.usd_per_mtok * i.payout_frac
    watts = gpus * (i.idle_watts + i.utilisation * (i.gpu_watts - i.idle_watts))
    return _option(revenue, watts * hours / 1e6, inp.power_usd_per_mwh)


def _breakeven(inp: IntervalInputs, infer: Option, mine: Option) -> float | None:
    # Inference revenue is linear in the price: revenue = usd_per_mtok * (USD per 1 $/Mtok).
    i = inp.inference
    per_unit_price = inference_option(IntervalInputs(
        inp.start, inp.minutes, inp.site_kw, 0.0, inp.mining,
        InferenceParams(i.tokens_per_s, i.gpu_watts, i.idle_watts, 1.0, i.payout_frac,
                        i.utilisation))).revenue_micros
    if per_unit_price <= 0:
        return None
    return (max(mine.margin_micros, 0) + infer.power_cost_micros) / per_unit_price


def decide(inp: IntervalInputs) -> Decision:
    """The better use of the site's power in one interval, with everything it used."""
    _validate(inp)
    mine, infer = mining_option(inp), inference_option(inp)
    choice: Choice = "idle"
    best = 0
    for name, option in (("mine", mine), ("infer", infer)):
        if option.margin_micros > best:
            choice, best = name, option.margin_micros  # type: ignore[assignment]
    return Decision(inp, mine, infer, choice, best, _breakeven(inp, infer, mine))


def decide_series(
    prices: Sequence[tuple[datetime, float]], *, minutes: float, site_kw: float,
    hashprice_at: Callable[[datetime], float], asic_j_per_th: float,
    inference: InferenceParams, mining_pool_fee: float = 0.0,
    utilisation_at: Callable[[datetime], float] | None = None,
) -> list[Decision]:
    """One decision per (interval start, USD/MWh) in ``prices``; ``hashprice_at`` and
    ``utilisation_at`` give the values in force at each start (no look-ahead)."""
    out = []
    for start, price in prices:
        inf = inference if utilisation_at is None else InferenceParams(
            inference.tokens_per_s, inference.gpu_watts, inference.idle_watts,
            inference.usd_per_mtok, inference.payout_frac, utilisation_at(start))
        mining = MiningParams(hashprice_at(start), asic_j_per_th, mining_pool_fee)
        out.append(decide(IntervalInputs(start, minutes, site_kw, price, mining, inf)))
    return out


@dataclass(frozen=True, slots=True)
class Summary:
    intervals: int
    counts: dict[str, int]  # choice -> intervals
    chosen_micros: int  # margin of following every decision
    always_mine_micros: int  # margin of mining in every interval
    always_infer_micros: int  # margin of inferring in every interval
    energy_mwh: float  # energy the chosen options drew
    price_min: float
    price_mean: float
    price_max: float


def summarize(decisions: Sequence[Decision]) -> Summary:
    if not decisions:
        raise ValueError("no decisions to summarize")
    counts = {"mine": 0, "infer": 0, "idle": 0}
    energy = 0.0
    for d in decisions:
        counts[d.choice] += 1
        if d.choice != "idle":
            energy += getattr(d, d.choice).energy_mwh
    prices = [d.inputs.power_usd_per_mwh for d in decisions]
    return Summary(
        len(decisions), counts, sum(d.margin_micros for d in decisions),
        sum(d.mine.margin_micros for d in decisions),
        sum(d.infer.margin_micros for d in decisions), energy,
        min(prices), sum(prices) / len(prices), max(prices))
