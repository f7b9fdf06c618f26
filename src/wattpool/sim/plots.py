"""PNG plots of a simulation report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError as exc:  # an optional dependency: say how to get it
    raise ImportError("plots need matplotlib: pip install 'wattpool[sim]' "
                      "(or run with --no-plots)") from exc


def _bar(ax: Any, names: list[str], values: list[float], title: str, ylabel: str) -> None:
    colours = ["#4C72B0" if n != "wattpool" else "#DD8452" for n in names]
    ax.bar(range(len(names)), values, color=colours)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)


def plot_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    results: dict[str, dict[str, Any]] = report["results"]
    names = list(results)
    written: list[Path] = []

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    _bar(axes[0], names, [results[n]["goodput_rps"] for n in names],
         "Goodput (both SLOs met)", "requests / s")
    _bar(axes[1], names, [results[n]["energy_usd_per_mtok"] or 0.0 for n in names],
         "Energy cost", "$ per million tokens")
    _bar(axes[2], names, [results[n]["prefix_hit_rate"] for n in names],
         "Prefix-cache hit rate", "share of prompt tokens")
    fig.tight_layout()
    path = out_dir / "policies.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, label in ((axes[0], "ttft_s", "TTFT"), (axes[1], "tpot_s", "TPOT"),
                           (axes[2], "e2e_s", "E2E")):
        for n in names:
            pct = results[n][key]
            xs = [50, 90, 99]
            ys = [pct[f"p{p}"] or 0.0 for p in xs]
            ax.plot(xs, ys, marker="o", label=n, linewidth=2.5 if n == "wattpool" else 1.2)
        ax.set_title(f"{label} percentiles")
        ax.set_xlabel("percentile")
        ax.set_ylabel("seconds")
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "latency.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    sites = report.get("per_site", {})
    if sites:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        for n in names:
            util = [s["utilisation"] for s in sites[n]]
            rev = sorted((s["revenue_usd"] for s in sites[n]), reverse=True)
            axes[0].hist(util, bins=30, histtype="step", label=n,
                         linewidth=2.5 if n == "wattpool" else 1.2)
            axes[1].plot(range(len(rev)), rev, label=n,
                         linewidth=2.5 if n == "wattpool" else 1.2)
        axes[0].set_title("Utilisation per site (slot-seconds used)")
        axes[0].set_xlabel("utilisation")
        axes[0].set_ylabel("sites")
        axes[1].set_title("Revenue per site, highest first")
        axes[1].set_xlabel("site rank")
        axes[1].set_ylabel("$")
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "sites.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
