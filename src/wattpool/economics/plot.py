"""A PNG of mine-or-infer decisions over a price series (matplotlib, Agg backend).

matplotlib is optional: it is imported only here, with a message that says how to get it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wattpool.economics.mine_or_infer import Decision

COLOURS = {"mine": "#e69f00", "infer": "#0072b2", "idle": "#bbbbbb"}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def plot_decisions(decisions: Sequence[Decision], path: Path, title: str) -> Path:
    """Top: power price and each option's revenue per MWh it draws. Bottom: each option's
    margin per interval, with the decision as a coloured band."""
    if not decisions:
        raise ValueError("nothing to plot")
    plt = _pyplot()
    from matplotlib import ticker

    t = [d.inputs.start for d in decisions]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    top.step(t, [d.inputs.power_usd_per_mwh for d in decisions], where="post",
             color="black", lw=0.8, label="power price")
    top.step(t, [d.mine.revenue_usd_per_mwh for d in decisions], where="post",
             color=COLOURS["mine"], lw=1.4, label="mining revenue")
    top.step(t, [d.infer.revenue_usd_per_mwh for d in decisions], where="post",
             color=COLOURS["infer"], lw=1.4, label="inference revenue (operator share)")
    revenue = max(max(d.mine.revenue_usd_per_mwh, d.infer.revenue_usd_per_mwh)
                  for d in decisions)
    # Linear up to ~the revenues, logarithmic beyond: price spikes of thousands of USD
    # stay visible without flattening the lines that decide.
    top.set_yscale("symlog", linthresh=max(revenue * 1.5, 1.0), linscale=2)
    top.set_ylabel("USD per MWh drawn")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    top.grid(alpha=0.3)
    for name in ("mine", "infer"):
        bottom.step(t, [getattr(d, name).margin_micros / 1e6 for d in decisions],
                    where="post", color=COLOURS[name], lw=1.0, label=f"{name} margin")
    bottom.axhline(0, color="black", lw=0.5)
    best = max(max(d.mine.margin_micros, d.infer.margin_micros) for d in decisions) / 1e6
    bottom.set_yscale("symlog", linthresh=max(abs(best) * 1.5, 1.0), linscale=2)
    lo, hi = bottom.get_ylim()
    # One band per run of equal choices keeps the file small.
    run_start = 0
    for i in range(1, len(decisions) + 1):
        if i == len(decisions) or decisions[i].choice != decisions[run_start].choice:
            end = decisions[i].inputs.start if i < len(decisions) else t[-1]
            bottom.axvspan(t[run_start], end, ymin=0, ymax=0.06, lw=0,
                           color=COLOURS[decisions[run_start].choice])
            run_start = i
    bottom.set_ylim(lo, hi)
    bottom.set_ylabel("USD per interval")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    bottom.legend(bottom.get_legend_handles_labels()[0] + handles,
                  [*bottom.get_legend_handles_labels()[1], "chose: mine", "chose: infer",
                   "chose: idle"], loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    bottom.grid(alpha=0.3)
    plain = ticker.FuncFormatter(lambda v, _: f"{v:,.0f}")
    for ax in (top, bottom):
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_locator(ticker.NullLocator())
    fig.suptitle(title, fontsize=10)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
