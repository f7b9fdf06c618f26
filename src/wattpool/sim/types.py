"""The simulator's settings and the raw outcome of a run (plain values)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class SimConfig:
    model: str = "llama-3-70b"
    block_tokens: int = 128  # prefix-cache block (coarser than engines' 16: cheaper to track)
    cache_share: float = 0.5  # of an instance's KV that holds cached prefixes
    max_attempts: int = 4  # instances one request may be tried on
    queue_factor: float = 2.0  # waiting requests an instance takes, per slot
    quarantine_error_rate: float = 0.3  # EWMA of failures beyond which a node is benched
    quarantine_s: float = 600.0
    error_ewma: float = 0.05  # weight of the newest outcome in the error-rate EWMA
    start_hour: float = 47.5  # hours into the price week at t=0: Tue 2023-08-08 23:30 UTC
    faults: bool = True  # failures, curtailment, flaky sites
    explain_samples: int = 3  # decisions recorded with explanations in the report
    router_prefix_estimate: bool = False  # policies keep their own index (else: the truth)


@dataclass(slots=True)
class SimResult:
    """Raw outcome; ``metrics.summarize`` turns it into the report."""

    policy: str
    duration_s: float
    status: np.ndarray  # per request: DONE / REJECTED
    arrival: np.ndarray
    first_token: np.ndarray  # absolute seconds (nan when none)
    finish: np.ndarray  # absolute seconds (nan when rejected)
    rtt: np.ndarray  # ms, gateway to the site that served it last
    prompt: np.ndarray
    output: np.ndarray
    delivered: np.ndarray  # output tokens generated, all attempts together
    cached: np.ndarray  # prompt tokens found in cache, all attempts
    prefilled: np.ndarray  # prompt tokens sent to instances, all attempts
    energy_j: np.ndarray
    energy_usd: np.ndarray
    attempts: np.ndarray
    reasons: dict[int, str]  # request -> why it was rejected
    site_busy_s: np.ndarray  # per site: slot-seconds used
    site_slots: np.ndarray  # per site: slots (sum of max_batch)
    site_tokens: np.ndarray  # per site: tokens served (prompt + output)
    site_ids: list[str]
    counters: dict[str, int] = field(default_factory=dict)
    explanations: list[dict[str, object]] = field(default_factory=list)
    idle_energy_usd: float = 0.0
    end_s: float = 0.0  # when the last stream finished (>= duration_s)
