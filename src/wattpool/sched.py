"""Ask Linux for a short CPU time slice for the thread that runs the event loop.

The gateway and the node bridge do little work per event but wait on many: a client's
request, the engine's first token, each chunk. When such a write wakes another process
on the same host (the engine; in a benchmark, the client too), the kernel often runs
that process on the writer's CPU, and the loop waits for its CPU again until that one's
time slice ends. Under EEVDF (Linux 6.12 and later) a thread may ask for a shorter slice
(``sched_attr.sched_runtime``): it then has an earlier deadline, so it runs first when it
wakes and is not made to wait out a long-running neighbour. It gets no more CPU time than
before; it waits less for it. Measured on a 2-vCPU VM, 100 req/s through `wattpool up`:
the added time to first token went from 2.24 to 1.59 ms (docs/benchmarks.md, change 17).

No privilege is needed. Nice value and policy are kept. ``SCHED_RESET_ON_FORK`` makes
threads and child processes (engines, worker threads) start with the kernel's default
again: only the loop's own thread asks to go first. Elsewhere (another OS, an older
kernel, a real-time policy) nothing is changed.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

# (sched_setattr, sched_getattr) system call numbers; glibc wraps neither before 2.41.
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}
_SCHED_OTHER, _SCHED_BATCH = 0, 3
_SCHED_FLAG_RESET_ON_FORK = 0x01
MIN_SLICE_US, MAX_SLICE_US = 100, 100_000  # the kernel clamps a slice to this range


class _SchedAttr(ctypes.Structure):
    """``struct sched_attr`` (include/uapi/linux/sched/types.h), version 1."""

    _fields_ = [
        ("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64), ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32), ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64), ("sched_period", ctypes.c_uint64),
        ("sched_util_min", ctypes.c_uint32), ("sched_util_max", ctypes.c_uint32),
    ]


def _syscalls() -> tuple[int, int] | None:
    if platform.system() != "Linux":
        return None
    return _SYSCALLS.get(platform.machine())


def current_slice_us(tid: int = 0) -> int | None:
    """The slice of thread ``tid`` (0: the calling one) in us; None where the kernel does
    not say (not Linux, an unknown architecture, a kernel without EEVDF slices)."""
    calls = _syscalls()
    if calls is None:
        return None
    attr = _get(calls[1], tid)
    if attr is None or attr.sched_runtime == 0:
        return None
    return int(attr.sched_runtime // 1000)


def request_slice(slice_us: int) -> str:
    """Ask for a ``slice_us`` time slice for the calling thread; returns what happened,
    for the log. 0 leaves the thread as it is."""
    if slice_us == 0:
        return "kernel default kept"
    if not MIN_SLICE_US <= slice_us <= MAX_SLICE_US:
        raise ValueError(f"a time slice is 0 (kernel default) or {MIN_SLICE_US}-"
                         f"{MAX_SLICE_US} us, not {slice_us}")
    calls = _syscalls()
    if calls is None:
        return f"not supported on {platform.system()} {platform.machine()}"
    attr = _get(calls[1], 0)
    if attr is None or attr.sched_runtime == 0:
        return "not supported by this kernel (EEVDF time slices need Linux 6.12 or later)"
    if attr.sched_policy not in (_SCHED_OTHER, _SCHED_BATCH):
        return f"left alone: scheduling policy {attr.sched_policy} is not a fair one"
    attr.size = ctypes.sizeof(_SchedAttr)
    attr.sched_runtime = slice_us * 1000
    attr.sched_flags |= _SCHED_FLAG_RESET_ON_FORK
    if _libc().syscall(calls[0], 0, ctypes.byref(attr), 0) != 0:
        errno = ctypes.get_errno()
        return f"refused by the kernel: {os.strerror(errno)}"
    return f"{slice_us} us"


def _get(number: int, tid: int) -> _SchedAttr | None:
    attr = _SchedAttr()
    if _libc().syscall(number, tid, ctypes.byref(attr), ctypes.sizeof(_SchedAttr), 0) != 0:
        return None
    return attr


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
