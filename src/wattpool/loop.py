"""One way to run wattpool's async entry points: on uvloop when it is installed.

uvicorn[standard] brings uvloop, but uvicorn picks its loop only when it starts the loop
itself; ``wattpool up``, ``server`` and ``node join`` start theirs, so they ask here.
uvloop is cheaper per event than asyncio's default loop, and sets TCP_NODELAY on every
TCP socket. They also ask for a short CPU time slice for the loop's thread (see
``wattpool.sched``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


def run(main: Coroutine[Any, Any, T], *, slice_us: int = 0) -> T:
    """Run ``main`` to its end on uvloop (asyncio's loop without it); with ``slice_us``,
    first ask the kernel for that time slice for this thread, the loop's."""
    if slice_us:
        from wattpool.sched import request_slice

        log.info("event loop time slice: %s", request_slice(slice_us))
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - a plain uvicorn install
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
