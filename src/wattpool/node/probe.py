"""What hardware this node has: NVIDIA GPUs through NVML when present, else CPU and RAM."""

from __future__ import annotations

import logging
import os

import psutil

from wattpool.protocol import Gpu, Hardware

log = logging.getLogger(__name__)


def probe_gpus() -> list[Gpu]:
    """NVIDIA GPUs via nvidia-ml-py; an empty list when there is no driver or GPU."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.debug("no NVIDIA driver: %s", exc)
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                watts: float | None = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            except Exception:
                watts = None
            gpus.append(
                Gpu(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total=int(memory.total),
                    memory_used=int(memory.used),
                    power_watts=watts,
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def probe() -> Hardware:
    memory = psutil.virtual_memory()
    return Hardware(
        cpu_count=os.cpu_count() or 1,
        memory_total=int(memory.total),
        memory_available=int(memory.available),
        gpus=probe_gpus(),
    )
