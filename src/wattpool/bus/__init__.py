"""The fleet bus: how nodes and the control plane talk (see base.py)."""

from wattpool.bus.base import Bus, BusClosed, BusError, BusTimeout, Msg, Subscription

__all__ = ["Bus", "BusClosed", "BusError", "BusTimeout", "Msg", "Subscription"]
