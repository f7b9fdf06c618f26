"""wattpool.sched: the event loop's thread asks Linux for a short time slice.

Real kernel calls in a child process (so this test runner keeps its own scheduling);
skipped where the kernel has no EEVDF time slices (before Linux 6.12).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from wattpool.config import Settings
from wattpool.sched import current_slice_us, request_slice

needs_slices = pytest.mark.skipif(
    current_slice_us() is None, reason="this kernel reports no EEVDF time slices")

PROBE = """
import json, os, subprocess, sys, threading
from wattpool.sched import current_slice_us, request_slice
os.nice(2)  # a nice value set by the operator must survive
nice = os.getpriority(os.PRIO_PROCESS, 0)
before = current_slice_us()
outcome = request_slice(int(sys.argv[1]))
seen = {}
t = threading.Thread(target=lambda: seen.update(thread=current_slice_us()))
t.start(); t.join()
child = subprocess.run([sys.executable, "-c",
                        "from wattpool.sched import current_slice_us; print(current_slice_us())"],
                       capture_output=True, text=True, check=True)
print(json.dumps({"before": before, "outcome": outcome, "after": current_slice_us(),
                  "nice_kept": os.getpriority(os.PRIO_PROCESS, 0) == nice,
                  "thread": seen["thread"],
                  "child": int(child.stdout)}))
"""


def probe(slice_us: int) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(slice_us)], capture_output=True,
                         text=True, check=True, timeout=30)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@needs_slices
def test_the_loop_thread_gets_the_slice_and_threads_and_children_do_not() -> None:
    seen = probe(100)
    default = seen["before"]
    assert isinstance(default, int) and default > 100
    assert seen["outcome"] == "100 us"
    assert seen["after"] == 100
    assert seen["nice_kept"] is True
    # Reset on fork: worker threads and engines start with the kernel's default.
    assert seen["thread"] == default
    assert seen["child"] == default


@needs_slices
def test_zero_keeps_the_kernel_default() -> None:
    seen = probe(0)
    assert seen["outcome"] == "kernel default kept"
    assert seen["after"] == seen["before"]


def test_slices_outside_the_kernel_range_are_refused() -> None:
    for bad in (1, 99, 100_001):
        with pytest.raises(ValueError, match="100-100000"):
            request_slice(bad)
    for bad in (-1, 50, 200_000):
        with pytest.raises(ValidationError, match="loop_slice_us"):
            Settings(loop_slice_us=bad)
    assert Settings().loop_slice_us == 100
    assert Settings(loop_slice_us=0).loop_slice_us == 0
