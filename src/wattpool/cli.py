"""The wattpool command line (typer + rich).

Every option has a WATTPOOL_* environment variable (see config.Settings); an
option given on the command line wins over the environment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from wattpool import __version__, loop
from wattpool.config import Settings

app = typer.Typer(
    help="wattpool: GPU sites pooled into one OpenAI-compatible inference service.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def load_settings(**overrides: Any) -> Settings:
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except Exception as exc:  # pydantic ValidationError: show it plainly
        err_console.print(f"[red]invalid setting:[/red] {exc}")
        raise typer.Exit(2) from None


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(message)s", datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
    )
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


HostOpt = Annotated[str | None, typer.Option(help="Address to listen on (env WATTPOOL_HOST; "
                                             "default 127.0.0.1).")]
PortOpt = Annotated[int | None, typer.Option(help="Port to listen on (env WATTPOOL_PORT; "
                                             "default 8000).")]
DataDirOpt = Annotated[Path | None, typer.Option(
    help="Data folder: SQLite database, models, logs (env WATTPOOL_DATA_DIR; default "
         "~/.local/share/wattpool).")]


@app.command()
def up(
    host: HostOpt = None,
    port: PortOpt = None,
    model: Annotated[str | None, typer.Option(
        help="Model: 'gemma3-270m' (shipped), a local .gguf path, or a Hugging Face repo "
             "'org/repo[:file.gguf]' (env WATTPOOL_MODEL).")] = None,
    model_id: Annotated[str | None, typer.Option(
        help="Model id clients send; default derived from --model (env WATTPOOL_MODEL_ID).",
    )] = None,
    engine: Annotated[str | None, typer.Option(
        help="Engine: 'llamacpp' (default) or 'synthetic' (fake tokens, for tests and load "
             "only) (env WATTPOOL_ENGINE).")] = None,
    context_length: Annotated[int | None, typer.Option(
        help="Context window in tokens (env WATTPOOL_CONTEXT_LENGTH; default 2048).")] = None,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads for llama.cpp (env WATTPOOL_ENGINE_THREADS; default all).")] = None,
    data_dir: DataDirOpt = None,
    log_level: Annotated[str | None, typer.Option(
        help="debug, info, warning or error (env WATTPOOL_LOG_LEVEL).")] = None,
    open_access: Annotated[bool | None, typer.Option(
        "--open", help="No API keys: anyone who can reach the port may use it (local use "
        "only) (env WATTPOOL_OPEN_ACCESS).")] = None,
) -> None:
    """Run the whole pool on this machine: gateway, control plane and one local node."""
    settings = load_settings(
        host=host, port=port, model=model, model_id=model_id, engine=engine,
        context_length=context_length, engine_threads=threads, data_dir=data_dir,
        log_level=log_level, open_access=open_access,
    )
    setup_logging(settings.log_level if settings.log_level != "info" else "warning")
    code = loop.run(_up(settings), slice_us=settings.loop_slice_us)
    raise typer.Exit(code)


async def _up(settings: Settings) -> int:
    from wattpool.runtime import ListenError, Pool, install_stop_signals

    stop = asyncio.Event()
    install_stop_signals(stop)
    pool = Pool(settings)
    serve_task: asyncio.Task[None] | None = None
    try:
        with console.status("starting the control plane and the local node…") as status:
            try:
                await pool.start()
            except ListenError as exc:
                err_console.print(f"[red]{exc}[/red] (choose another with --port)")
                return 1
            assert pool.server is not None
            serve_task = asyncio.create_task(pool.serve())
            started = time.monotonic()
            while not stop.is_set():
                if serve_task.done():
                    err_console.print(f"[red]the gateway could not listen on "
                                      f"{settings.host}:{settings.port}[/red]")
                    return 1
                states = pool.instance_states()
                if any(state == "ready" for _, state, _ in states) and pool.server.started:
                    break
                unloadable = [err for _, state, err in states
                              if state == "failed" and err and err.startswith("ModelNotFound")]
                if unloadable:
                    # Retrying cannot help a model that does not exist: say so and stop.
                    err_console.print(f"[red]cannot load the model:[/red] {unloadable[0]}")
                    return 1
                line = ", ".join(f"{iid} {state}" + (f" ({err})" if err else "")
                                 for iid, state, err in states) or "placing the model"
                status.update(f"loading {pool.model_id} with {settings.engine} "
                              f"[{time.monotonic() - started:.0f}s]: {line}")
                await asyncio.sleep(0.2)
        if not stop.is_set():
            print_banner(settings, pool)
            await stop.wait()
        console.print("stopping…")
        return 0
    finally:
        if pool.server is not None:
            pool.server.should_exit = True
        if serve_task is not None:
            await serve_task
        await pool.stop()


def print_banner(settings: Settings, pool: Any) -> None:
    host = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
    port = pool.port
    base = f"http://{host}:{port}/v1"
    model_id = pool.model_id
    key = "unused"
    if settings.open_access:
        console.print("[yellow]open access: no API keys are checked; keep it on a trusted "
                      "machine[/yellow]")
    elif pool.first_run_keys:
        key, admin_key = pool.first_run_keys
        console.print("[bold]API key[/bold] (shown once, stored only as a hash):")
        console.print(f"  API key:   {key}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"  admin key: {admin_key}", markup=False, highlight=False,
                      soft_wrap=True)
    else:
        key = "$WATTPOOL_API_KEY"
        console.print("API keys: use the key printed at first start, or make one with "
                      "'wattpool keys create --tenant local'")
    console.print(f"\n[bold green]wattpool is serving[/bold green] [bold]{model_id}[/bold] "
                  f"({settings.engine}) at [bold]{base}[/bold]\n")
    if settings.engine == "synthetic":
        console.print("[yellow]synthetic engine: filler tokens for tests and load, not "
                      "inference[/yellow]\n")
    body = json.dumps({"model": model_id, "messages": [{"role": "user", "content": "Hello"}]})
    console.print("curl:", style="bold")
    auth = "" if settings.open_access else f" -H 'Authorization: Bearer {key}'"
    console.print(f"  curl {base}/chat/completions -H 'Content-Type: application/json'{auth} \\\n"
                  f"    -d '{body}'\n", markup=False, highlight=False, soft_wrap=True)
    console.print("Python (pip install openai):", style="bold")
    console.print(
        "  from openai import OpenAI\n"
        f"  client = OpenAI(base_url=\"{base}\", api_key=\"{key}\")\n"
        f"  reply = client.completions.create(model=\"{model_id}\", "
        "prompt=\"The capital of France is\", max_tokens=20)\n"
        "  print(reply.choices[0].text)\n", markup=False, highlight=False, soft_wrap=True)
    console.print(f"metrics: http://{host}:{port}/metrics   status: wattpool status   "
                  "stop: Ctrl-C\n")


@app.command()
def status(
    data_dir: DataDirOpt = None,
    database_url: Annotated[str | None, typer.Option(
        help="SQLAlchemy URL of the pool's database (env WATTPOOL_DATABASE_URL).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
    = False,
) -> None:
    """Show nodes, model instances and models as the control plane last recorded them."""
    from wattpool.store import list_instances, list_models, list_nodes, make_engine

    settings = load_settings(data_dir=data_dir, database_url=database_url)
    url = settings.resolved_database_url()
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        err_console.print(f"no pool database at {url}; start one with 'wattpool up'")
        raise typer.Exit(1)
    engine = make_engine(url)
    try:
        nodes, instances, models = list_nodes(engine), list_instances(engine), list_models(engine)
    except Exception as exc:
        err_console.print(f"[red]cannot read the pool database {url}:[/red] {exc}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    if as_json:
        console.print_json(json.dumps({
            "nodes": [{"id": n.id, "name": n.name, "state": n.state,
                       "last_seen": n.last_seen.isoformat() if n.last_seen else None}
                      for n in nodes],
            "instances": [{"id": i.id, "model_id": i.model_id, "node_id": i.node_id,
                           "state": i.state, "restarts": i.restarts, "error": i.error}
                          for i in instances],
            "models": [{"id": m.id, "engine": m.engine, "source": m.source,
                        "context_length": m.context_length} for m in models],
        }))
        return
    table = Table(title="nodes")
    for col in ("id", "name", "state", "last seen"):
        table.add_column(col)
    for n in nodes:
        table.add_row(n.id, n.name, n.state,
                      n.last_seen.strftime("%Y-%m-%d %H:%M:%S") if n.last_seen else "-")
    console.print(table)
    table = Table(title="instances")
    for col in ("id", "model", "node", "state", "restarts", "error"):
        table.add_column(col)
    colors = {"ready": "green", "failed": "red", "loading": "yellow", "scheduled": "cyan"}
    for i in instances:
        color = colors.get(i.state, "white")
        table.add_row(i.id, i.model_id, i.node_id or "-", f"[{color}]{i.state}[/{color}]",
                      str(i.restarts), i.error or "")
    console.print(table)
    table = Table(title="models")
    for col in ("id", "engine", "context", "source"):
        table.add_column(col)
    for m in models:
        table.add_row(m.id, m.engine, str(m.context_length), m.source)
    console.print(table)


@app.command()
def version() -> None:
    """Print the wattpool version."""
    console.print(__version__)



def _register_fleet_commands() -> None:
    from wattpool import cli_fleet

    app.command("server")(cli_fleet.server)
    app.add_typer(cli_fleet.node_app, name="node")

    from wattpool import cli_sites

    app.add_typer(cli_sites.sites_app, name="sites")
    app.command("route")(cli_sites.route)
    app.add_typer(cli_fleet.tokens_app, name="tokens")
    app.add_typer(cli_fleet.nats_app, name="nats")

    from wattpool import cli_tenants

    app.add_typer(cli_tenants.tenants_app, name="tenants")
    app.add_typer(cli_tenants.keys_app, name="keys")
    app.add_typer(cli_tenants.prices_app, name="prices")
    app.command("usage")(cli_tenants.usage)

    from wattpool import cli_economics

    app.add_typer(cli_economics.operators_app, name="operators")
    app.command("payouts")(cli_economics.payouts)
    app.command("invoice")(cli_economics.invoice)

    from wattpool import cli_bench, cli_sim

    app.command("sim")(cli_sim.sim)
    app.command("bench")(cli_bench.bench)
    app.command("economics")(cli_economics.economics)


_register_fleet_commands()


if __name__ == "__main__":
    app()
