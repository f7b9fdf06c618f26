"""Every knob of wattpool in one settings class.

Each field is also an environment variable: ``WATTPOOL_<FIELD>`` (for example
``WATTPOOL_PORT=9000``). CLI options override the environment; the environment
overrides these defaults. docs/configuration.md lists them all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wattpool.sched import MAX_SLICE_US, MIN_SLICE_US

if TYPE_CHECKING:
    from wattpool.economics.payouts import PayoutPolicy

DEFAULT_MODEL = "gemma3-270m"


def default_data_dir() -> Path:
    """The user's data folder: $XDG_DATA_HOME/wattpool or ~/.local/share/wattpool."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "wattpool"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WATTPOOL_", extra="ignore")

    # --- gateway ---------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port the gateway listens on (0 = any).")
    max_body_bytes: int = Field(
        1_048_576, gt=0, description="Largest request body accepted; larger gets 413."
    )
    default_max_tokens: int = Field(
        256, gt=0, description="Completion length when a request does not set max_tokens."
    )
    retry_after_s: int = Field(
        5, gt=0, description="Retry-After sent with 503 when no instance is ready."
    )
    dispatch_attempts: int = Field(
        3, gt=0, description="Nodes tried for one request before its first token."
    )
    instance_slots: int = Field(
        4, gt=0, description="Requests one instance serves at once before more wait in the "
        "gateway's priority queue."
    )
    queue_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for capacity of an interactive request (then 503)."
    )
    batch_queue_timeout_s: float = Field(
        300.0, gt=0, description="Longest wait for capacity of a batch request (then 503)."
    )
    preemption: bool = Field(
        True, description="Interactive requests may preempt running batch streams."
    )
    ack_timeout_s: float = Field(
        3.0, gt=0, description="How long a node may take to accept a request."
    )
    first_token_timeout_s: float = Field(
        120.0, gt=0, description="How long to wait for the first token once a node accepted."
    )
    idle_timeout_s: float = Field(
        60.0, gt=0, description="Longest silence between two chunks of one stream."
    )

    # --- state -----------------------------------------------------------
    data_dir: Path = Field(default_factory=default_data_dir, description="Data folder.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default is SQLite at <data_dir>/wattpool.db."
    )
    usage_flush_interval_s: float = Field(
        0.5, gt=0, description="How often batched usage records are written."
    )
    usage_batch_size: int = Field(200, gt=0, description="Most usage records per write.")
    usage_buffer_size: int = Field(
        50_000, gt=0, description="Usage records held in memory while the database is down."
    )

    # --- fleet -----------------------------------------------------------
    heartbeat_interval_s: float = Field(2.0, gt=0, description="Node heartbeat period.")
    heartbeat_timeout_s: float = Field(
        10.0, gt=0, description="A node silent this long leaves routing."
    )
    reconcile_interval_s: float = Field(2.0, gt=0, description="Placement reconciler period.")
    replace_grace_s: float = Field(
        30.0, ge=0, description="How long a lost node keeps its instances before re-placement."
    )
    audit_interval_s: float = Field(
        60.0, ge=0, description="How often the leader sends canary audits (0: never)."
    )
    pool_fee_pct: float = Field(
        20.0, ge=0, le=100, description="Share of each charge the pool keeps, percent."
    )
    reserve_pct: float = Field(
        5.0, ge=0, le=100, description="Share of each charge set aside for refunds, percent."
    )
    late_weight_pct: float = Field(
        50.0, ge=0, le=100, description="Percent of the operator share paid when an "
        "interactive request's TTFT misses the target."
    )
    ttft_target_ms: float = Field(
        2000.0, gt=0, description="Latency target of interactive requests, for payouts."
    )
    challenge_window_s: float = Field(
        86400.0, ge=0, description="Operator credit turns payable this long after the "
        "request; an audit failure before then claws it back."
    )
    ledger_interval_s: float = Field(
        30.0, gt=0, description="How often the leader charges unposted usage and matures "
        "credit whose challenge window ended."
    )
    power_poll_s: float = Field(
        5.0, gt=0, description="How often sites' power prices are read (routing, curtailment)."
    )
    batch_price_ceiling: float | None = Field(
        None, description="Batch requests wait for an instance at a site whose power price "
        "(per MWh) is at most this, up to their deadline; unset: no waiting."
    )
    nats_url: str | None = Field(
        None, description="NATS server(s) of the fleet bus, e.g. nats://127.0.0.1:4222."
    )
    nats_creds: Path | None = Field(
        None, description="NATS credentials file of the server (default <data_dir>/nats/"
        "service.creds when it exists)."
    )
    nats_authority: Path | None = Field(
        None, description="Secret key file that issues NATS credentials to nodes (default "
        "<data_dir>/nats/authority.json when it exists)."
    )
    node_engines: str | None = Field(
        None, description="Engines a joined node may run, comma-separated (default any)."
    )

    # --- the local node and its engine ------------------------------------
    model: str = Field(
        DEFAULT_MODEL,
        description=(
            "Model to serve: 'gemma3-270m' (shipped), a path to a .gguf file, or a "
            "Hugging Face repo id 'org/repo' or 'org/repo:file.gguf'."
        ),
    )
    model_id: str | None = Field(
        None, description="Public model id clients use; default derived from --model."
    )
    engine: Literal["llamacpp", "synthetic"] = Field(
        "llamacpp", description="Engine of the local node ('synthetic' is for tests and load)."
    )
    context_length: int = Field(2048, gt=0, description="Context window of the engine.")
    engine_threads: int | None = Field(
        None, description="CPU threads for llama.cpp (default: all cores)."
    )
    engine_start_timeout_s: float = Field(
        300.0, gt=0, description="How long an engine may take to become healthy."
    )
    engine_restart_backoff_s: float = Field(
        1.0, gt=0, description="First restart delay of a dead engine; doubles up to 30 s."
    )
    node_name: str | None = Field(None, description="Name of the local node (default hostname).")
    synthetic_tokens_per_s: float = Field(
        200.0, gt=0, description="Synthetic engine: decode speed."
    )
    synthetic_ttft_s: float = Field(
        0.02, ge=0, description="Synthetic engine: time to first token."
    )

    redis_url: str | None = Field(
        None, description="Redis for rate limits exact across gateway replicas, e.g. "
        "redis://127.0.0.1:6379/0; without it limits are per process."
    )
    open_access: bool = Field(
        False, description="Serve without API keys (local use only; no limits, no tenants)."
    )

    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    loop_slice_us: int = Field(
        100, ge=0, le=MAX_SLICE_US, description="CPU time slice (us) that the event loop's "
        "thread of `up`, `server` and `node join` asks Linux (6.12 or later) for: shorter "
        "than the kernel's default, so the gateway and the node bridge run first when a "
        "socket wakes them. 0 keeps the kernel's default; else 100-100000."
    )

    @field_validator("loop_slice_us")
    @classmethod
    def _slice_in_kernel_range(cls, value: int) -> int:
        if 0 < value < MIN_SLICE_US:
            raise ValueError(f"0 (the kernel's default) or {MIN_SLICE_US}-{MAX_SLICE_US} us; "
                             f"Linux clamps a shorter slice to {MIN_SLICE_US} us")
        return value

    def payout_policy(self) -> PayoutPolicy:
        from datetime import timedelta

        from wattpool.economics.payouts import PayoutPolicy

        return PayoutPolicy.from_percent(
            pool_fee=str(self.pool_fee_pct), reserve=str(self.reserve_pct),
            late_weight=str(self.late_weight_pct), ttft_target_ms=self.ttft_target_ms,
            challenge_window=timedelta(seconds=self.challenge_window_s))

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'wattpool.db'}"

    def nats_file(self, explicit: Path | None, name: str) -> Path | None:
        """An explicit NATS file, else <data_dir>/nats/<name> if it exists."""
        if explicit is not None:
            return explicit
        default = self.data_dir / "nats" / name
        return default if default.exists() else None
