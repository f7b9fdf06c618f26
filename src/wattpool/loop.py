"""One way to run wattpool's async entry points: on uvloop when it is installed.

uvicorn[standard] brings uvloop, but uvicorn picks its loop only when it starts the loop
itself; ``wattpool up``, ``server`` and ``node join`` start theirs, so they ask here.
uvloop is cheaper per event than asyncio's default loop, and sets TCP_NODELAY on every
TCP socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - a plain uvicorn install
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
