"""The simulator's clock: virtual time that only the event loop moves."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SimClock:
    """Satisfies ``wattpool.clock.Clock``; ``now`` is seconds since the run began."""

    now: float = 0.0
    epoch: float = 0.0  # wall-clock time (Unix seconds) the run stands for at now == 0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.epoch + self.now
