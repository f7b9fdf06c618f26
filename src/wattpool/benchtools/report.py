"""What a load run measured, as JSON (for scripts) and as a rich table (for people)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from rich.table import Table

from wattpool.benchtools.runner import LoadResult, LoadSpec, RequestResult
from wattpool.benchtools.stats import Distribution, describe

REPORT_VERSION = 1


def latencies(results: Iterable[RequestResult]) -> dict[str, Distribution | None]:
    """TTFT, inter-token and end-to-end distributions (ms) of the successful requests."""
    ok = [r for r in results if r.ok]
    return {
        "ttft": describe(r.ttft for r in ok if r.ttft is not None),
        "itl": describe(g for r in ok for g in r.gaps),
        "e2e": describe(r.e2e for r in ok if r.e2e is not None),
    }


def summarize(result: LoadResult) -> dict[str, Any]:
    """The JSON report of one run (shape versioned by ``report_version``)."""
    spec: LoadSpec = result.spec
    rs = result.results
    ok = [r for r in rs if r.ok]
    errors = Counter(r.error or f"http_{r.status}" for r in rs if not r.ok)
    wall = result.wall_s
    tokens = sum(r.tokens for r in ok)
    lag = describe(max(0.0, r.started - r.scheduled) for r in rs)
    return {
        "report_version": REPORT_VERSION,
        "started_at": result.started_at.isoformat(timespec="seconds"),
        "target": {"base_url": spec.base_url, "model": spec.model, "kind": spec.kind,
                   "stream": spec.stream, "max_tokens": spec.max_tokens},
        "load": {"mode": spec.mode, "rate": spec.rate, "concurrency": spec.concurrency,
                 "max_requests": spec.max_requests, "max_duration_s": spec.max_duration_s,
                 "timeout_s": spec.timeout_s, "seed": spec.seed,
                 "client": "lean" if spec.lean else "httpx"},
        "wall_s": round(wall, 4),
        "requests": {"sent": len(rs), "ok": len(ok), "errors": len(rs) - len(ok),
                     "error_kinds": dict(sorted(errors.items()))},
        "throughput": {
            "requests_per_s": round(len(ok) / wall, 3) if wall > 0 else 0.0,
            "tokens_per_s": round(tokens / wall, 3) if wall > 0 else 0.0,
            "completion_tokens": tokens,
        },
        "latency_ms": {name: (d.as_dict() if d else None)
                       for name, d in latencies(rs).items()},
        # How late the client sent requests; large values mean the client was overloaded.
        "client_lag_ms": lag.as_dict() if lag else None,
    }


def _ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(report: dict[str, Any], title: str | None = None) -> Table:
    """One run's report as a table: a row per latency, then counts."""
    req, thr = report["requests"], report["throughput"]
    load = report["load"]
    shape = (f"{load['rate']} req/s open loop" if load["mode"] == "rate"
             else f"{load['concurrency']} clients")
    heading = title or (f"{report['target']['base_url']} ({report['target']['model']}, "
                        f"{shape}, {'streamed' if report['target']['stream'] else 'whole'})")
    out = Table(title=heading)
    for col in ("latency (ms)", "count", "mean", "p50", "p90", "p99", "max"):
        out.add_column(col, justify="right" if col != "latency (ms)" else "left")
    names = {"ttft": "time to first token", "itl": "inter-token", "e2e": "end to end"}
    for key, name in names.items():
        d = report["latency_ms"][key]
        if d is None:
            out.add_row(name, "0", *("-" for _ in range(5)))
        else:
            out.add_row(name, str(d["count"]), *(_ms(d[k]) for k in
                                                   ("mean", "p50", "p90", "p99", "max")))
    errors = ", ".join(f"{k}: {v}" for k, v in req["error_kinds"].items()) or "none"
    out.caption = (f"{req['ok']}/{req['sent']} ok in {report['wall_s']:.2f} s; "
                   f"{thr['requests_per_s']:.1f} req/s, {thr['tokens_per_s']:.0f} tokens/s; "
                   f"errors: {errors}")
    return out
