"""Fleet commands: `wattpool server`, `node join`, `tokens`, `nats init` (sites: cli_sites)."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from wattpool import loop
from wattpool.config import Settings

tokens_app = typer.Typer(help="One-time join tokens for sites (operator side).",
                         no_args_is_help=True)
node_app = typer.Typer(help="Run a node at a site.", no_args_is_help=True)
nats_app = typer.Typer(help="NATS set-up for the fleet bus.", no_args_is_help=True)

DataDirOpt = Annotated[Path | None, typer.Option(
    help="Data folder (env WATTPOOL_DATA_DIR; default ~/.local/share/wattpool).")]
DbOpt = Annotated[str | None, typer.Option(
    help="SQLAlchemy URL of the pool's database, e.g. postgresql+psycopg://host/db "
         "(env WATTPOOL_DATABASE_URL; default SQLite in the data folder).")]


def _console():  # type: ignore[no-untyped-def]
    from wattpool.cli import console, err_console

    return console, err_console


def _settings(**overrides: object) -> Settings:
    from wattpool.cli import load_settings

    return load_settings(**overrides)


def _db(settings: Settings):  # type: ignore[no-untyped-def]
    from wattpool.store import make_engine, migrate

    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    return engine


def parse_duration(text: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", text)
    if not match:
        raise typer.BadParameter(f"{text!r}: use a number and s, m, h or d, like 30m or 2h")
    value, unit = int(match.group(1)), match.group(2)
    return timedelta(seconds=value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


@tokens_app.command("create")
def tokens_create(
    site: Annotated[str, typer.Option(help="Site the node will belong to.")],
    ttl: Annotated[str, typer.Option(help="Lifetime, e.g. 30m, 2h, 7d.")] = "1h",
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    nats_authority: Annotated[Path | None, typer.Option(
        help="NATS authority file (default <data_dir>/nats/authority.json if it exists); "
             "the token then carries credentials that may only ask to join.")] = None,
) -> None:
    """Create a one-time join token for a site; it is shown once."""
    import secrets

    from wattpool.control.jointoken import JoinerCreds, JoinToken
    from wattpool.control.natsauth import NatsAuthority
    from wattpool.store.fleet import FleetError, create_join_token

    console, err = _console()
    settings = _settings(data_dir=data_dir, database_url=database_url,
                         nats_authority=nats_authority)
    lifetime = parse_duration(ttl)
    engine = _db(settings)
    try:
        secret, row = create_join_token(engine, site, lifetime)
    except FleetError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    joiner = None
    authority_file = settings.nats_file(settings.nats_authority, "authority.json")
    if authority_file is not None:
        authority = NatsAuthority.load(authority_file)
        inbox = secrets.token_hex(8)
        _, creds = authority.joiner_creds(inbox, int(time.time() + lifetime.total_seconds()))
        jwt, seed = _split_creds(creds)
        joiner = JoinerCreds(jwt, seed, inbox)
    token = JoinToken(secret, joiner).encode()
    err.print(f"join token for site {site}, valid until "
              f"{row.expires_at:%Y-%m-%d %H:%M} UTC, usable once (shown only now):")
    console.print(token, soft_wrap=True, markup=False, highlight=False)


def _split_creds(creds: str) -> tuple[str, str]:
    blocks = re.findall(r"-----BEGIN [^-]+-----\s*(\S+)\s*------END", creds)
    if len(blocks) != 2:
        raise RuntimeError("unexpected creds format")
    return blocks[0], blocks[1]


@node_app.command("join")
def node_join(
    nats: Annotated[str, typer.Option(help="The pool's NATS, e.g. nats://pool.example:4222.")],
    token: Annotated[str | None, typer.Option(
        help="Join token from 'wattpool tokens create' (only the first time).")] = None,
    engines: Annotated[str | None, typer.Option(
        help="Engines this node may run, comma-separated: llamacpp,synthetic (default any).",
    )] = None,
    name: Annotated[str | None, typer.Option(help="Node name (default hostname).")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for llama.cpp.")] = None,
    data_dir: DataDirOpt = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")]
    = None,
) -> None:
    """Join a pool (first time, with --token) and serve until stopped. Dials out only."""
    from wattpool.cli import setup_logging

    settings = _settings(nats_url=nats, node_engines=engines, node_name=name,
                         engine_threads=threads, data_dir=data_dir, log_level=log_level)
    setup_logging(settings.log_level)
    raise typer.Exit(loop.run(_run_node(settings, token), slice_us=settings.loop_slice_us))


async def _run_node(settings: Settings, token: str | None) -> int:
    from wattpool.bus import BusError
    from wattpool.control.jointoken import BadToken
    from wattpool.node.agent import JoinRefused
    from wattpool.node.runner import NodeSetupError, SiteNode
    from wattpool.runtime import install_stop_signals

    console, err = _console()
    stop = asyncio.Event()
    install_stop_signals(stop)
    node = SiteNode(settings, token)
    try:
        try:
            node_id = await node.start()
        except (NodeSetupError, BadToken, JoinRefused, BusError) as exc:
            err.print(f"[red]{exc}[/red]")
            return 1
        console.print(f"node [bold]{node_id}[/bold] is in the pool at {settings.nats_url}; "
                      "Ctrl-C to leave")
        await stop.wait()
        return 0
    finally:
        await node.stop()


@nats_app.command("init")
def nats_init(
    data_dir: DataDirOpt = None,
    host: Annotated[str, typer.Option(help="Address nats-server will listen on.")]
    = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port nats-server will listen on.")] = 4222,
) -> None:
    """Create the NATS authority (secret), a nats-server config and the server's creds."""
    from wattpool.server import write_nats_setup

    console, _ = _console()
    settings = _settings(data_dir=data_dir)
    paths = write_nats_setup(settings.data_dir, host, port)
    console.print(f"authority (secret, keep it safe): {paths['authority']}")
    console.print(f"server credentials: {paths['creds']}")
    console.print(f"start NATS with:  nats-server -c {paths['config']}")


def server(
    nats_url: Annotated[str, typer.Option(help="NATS of the fleet bus (env WATTPOOL_NATS_URL).")],
    deploy: Annotated[list[str], typer.Option(
        help="Model to serve, repeatable: 'gemma3-270m', 'synthetic,replicas=3', "
             "'/path/model.gguf,id=NAME,context=4096,replicas=2'.")],
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    database_url: DbOpt = None,
    nats_creds: Annotated[Path | None, typer.Option(
        help="NATS credentials of this server (default <data_dir>/nats/service.creds).")]
    = None,
    nats_authority: Annotated[Path | None, typer.Option(
        help="Authority file that issues node credentials (default "
             "<data_dir>/nats/authority.json).")] = None,
    redis_url: Annotated[str | None, typer.Option(
        help="Redis for limits exact across replicas, e.g. redis://127.0.0.1:6379/0.")] = None,
    open_access: Annotated[bool | None, typer.Option(
        "--open", help="No API keys (tests and trusted networks only).")] = None,
    data_dir: DataDirOpt = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")]
    = None,
) -> None:
    """Run gateway + control plane as a service (one of any number of replicas)."""
    from wattpool.cli import setup_logging
    from wattpool.control.deployspec import DeploySpecError, parse_deploy_spec

    _, err = _console()
    settings = _settings(nats_url=nats_url, host=host, port=port, database_url=database_url,
                         nats_creds=nats_creds, nats_authority=nats_authority,
                         redis_url=redis_url, open_access=open_access,
                         data_dir=data_dir, log_level=log_level)
    try:
        deployments = [parse_deploy_spec(d, settings.context_length) for d in deploy]
    except DeploySpecError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    setup_logging(settings.log_level)
    raise typer.Exit(loop.run(_run_server(settings, deployments),
                              slice_us=settings.loop_slice_us))


async def _run_server(settings: Settings, deployments: list) -> int:  # type: ignore[type-arg]
    from wattpool.bus import BusError
    from wattpool.runtime import ListenError, install_stop_signals
    from wattpool.server import PoolServer

    console, err = _console()
    stop = asyncio.Event()
    install_stop_signals(stop)
    pool = PoolServer(settings, deployments)
    serve_task: asyncio.Task[None] | None = None
    try:
        try:
            await pool.start()
        except (ListenError, BusError) as exc:
            err.print(f"[red]{exc}[/red]")
            return 1
        serve_task = asyncio.create_task(pool.serve())
        console.print(f"wattpool server at http://{settings.host}:{pool.port}/v1 "
                      f"(NATS {settings.nats_url}); models: "
                      + ", ".join(d.model_id for d in deployments))
        await stop.wait()
        return 0
    finally:
        if pool.server is not None:
            pool.server.should_exit = True
        if serve_task is not None:
            await serve_task
        await pool.stop()


GatewayOpt = Annotated[str, typer.Option(
    "--url", help="A gateway of the pool (any replica).", envvar="WATTPOOL_URL")]
AdminKeyOpt = Annotated[str | None, typer.Option(
    "--key", help="Admin API key (not needed with --open pools).",
    envvar="WATTPOOL_ADMIN_KEY")]


def _admin_post(url: str, key: str | None, path: str, body: dict[str, object]) -> dict:  # type: ignore[type-arg]
    import httpx

    _, err = _console()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        resp = httpx.post(url.rstrip("/") + path, json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach the gateway at {url}: {exc}[/red]")
        raise typer.Exit(1) from None
    if resp.status_code != 200:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text
        err.print(f"[red]{resp.status_code}: {message}[/red]")
        raise typer.Exit(1)
    return dict(resp.json())
