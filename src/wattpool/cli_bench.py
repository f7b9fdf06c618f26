"""``wattpool bench``: a bounded load against an OpenAI-compatible server, on loopback.

Registered in ``wattpool.cli``. The same runner drives bench/overhead.py and
bench/soak.py (see docs/benchmarks.md, "Gateway overhead").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, cast

import typer
from rich.console import Console

from wattpool import loop
from wattpool.benchtools import LoadSpec, TargetRefused, run_load, summarize, table
from wattpool.benchtools.runner import ClientKind

console = Console()
err_console = Console(stderr=True)


def bench(
    url: Annotated[str, typer.Option(help="OpenAI base URL of the server under load.")
                   ] = "http://127.0.0.1:8000/v1",
    model: Annotated[str, typer.Option(help="Model id to request.")] = "synthetic",
    rate: Annotated[float | None, typer.Option(
        min=0.001, help="Open loop: Poisson arrivals at this many requests/s.")] = None,
    concurrency: Annotated[int | None, typer.Option(
        min=1, help="Closed loop: this many clients, each sending when its last answer "
        "ends (used when --rate is not given; default 8).")] = None,
    requests: Annotated[int, typer.Option(min=1, help="At most this many requests.")] = 1000,
    duration: Annotated[float, typer.Option(
        min=0.1, help="At most this many seconds of sending.")] = 30.0,
    max_tokens: Annotated[int, typer.Option(min=1, help="max_tokens of every request.")] = 64,
    stream: Annotated[bool, typer.Option(help="Streamed (SSE) or whole answers.")] = True,
    kind: Annotated[str, typer.Option(help="'chat' (/chat/completions) or 'completion' "
                                      "(/completions).")] = "chat",
    prompt: Annotated[str, typer.Option(help="Prompt text.")
                      ] = "Say something about benchmarks.",
    timeout: Annotated[float, typer.Option(
        min=0.1, help="Per-request timeout, seconds; also the grace after the last send.")
    ] = 30.0,
    api_key: Annotated[str | None, typer.Option(
        envvar="WATTPOOL_API_KEY", help="Bearer key (env WATTPOOL_API_KEY).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the arrival schedule.")] = 0,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the report as JSON to this file ('-': stdout, no table)."),
    ] = None,
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="Allow a non-loopback target (only a host you own).")] = False,
    client: Annotated[str, typer.Option(
        help="HTTP client: 'lean' (wattpool's HTTP/1.1 transport, plain http:// only; "
        "cheapest on the cores it shares with the server), 'httpx', or 'auto' (lean for "
        "http://, httpx for https://).")] = "auto",
) -> None:
    """Send a bounded load (open-loop rate or fixed concurrency) and report TTFT,
    inter-token and end-to-end latency (p50/p90/p99), throughput and errors."""
    if kind not in ("chat", "completion"):
        raise typer.BadParameter("--kind must be 'chat' or 'completion'")
    if rate is None and concurrency is None:
        concurrency = 8
    elif rate is not None and concurrency is not None:
        raise typer.BadParameter("give --rate or --concurrency, not both")
    kind_: Literal["chat", "completion"] = "chat" if kind == "chat" else "completion"
    spec = LoadSpec(
        base_url=url, model=model, kind=kind_, stream=stream, max_tokens=max_tokens,
        prompt=prompt, rate=rate, concurrency=concurrency, max_requests=requests,
        max_duration_s=duration, timeout_s=timeout, api_key=api_key, seed=seed,
        allow_remote=allow_remote, client=cast(ClientKind, client),  # spec.check() refuses others
    )
    try:
        spec.check()
    except TargetRefused as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    result = loop.run(run_load(spec))
    report = summarize(result)
    text = json.dumps(report, indent=2)
    if json_out is not None and str(json_out) == "-":
        print(text)
    else:
        console.print(table(report))
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(text + "\n")
    if report["requests"]["ok"] == 0:
        raise typer.Exit(1)
