"""When requests start: open-loop Poisson arrivals, bounded in count and in time.

Open loop means arrivals do not wait for earlier answers, as real traffic does not: a slow
server faces the same offered load and its queue grows, which is what a latency
benchmark must show. (A closed loop, fixed concurrency, lets a slow server slow the
client down and hides its queueing; the runner offers it as well, as a separate mode.)
"""

from __future__ import annotations

import random


def poisson_arrivals(
    rate: float, *, max_requests: int, max_duration_s: float, rng: random.Random
) -> list[float]:
    """Arrival offsets in seconds from the start: exponential gaps of mean 1/rate.

    At most ``max_requests`` arrivals, every one strictly before ``max_duration_s``. The
    same ``rng`` state gives the same schedule, so runs against different targets can be
    offered exactly the same load.
    """
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    if max_requests < 0 or not max_duration_s >= 0:
        raise ValueError("max_requests and max_duration_s must be >= 0")
    arrivals: list[float] = []
    t = 0.0
    while len(arrivals) < max_requests:
        t += rng.expovariate(rate)
        if t >= max_duration_s:
            break
        arrivals.append(t)
    return arrivals
