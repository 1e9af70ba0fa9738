"""What this machine is, for every latency or INT8 figure: CPU, its instruction-set flags that
decide which kernels ONNX Runtime runs (AVX2, AVX-512, VNNI for int8 dot products, AMX), cores,
memory, library versions. Stored with every result, since a latency means nothing without its
machine."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata


# The flags that change which CPU kernels run, in the order a reader scans them.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8")


def cpu_flags() -> list[str]:
    """The KERNEL_FLAGS this CPU has ([] where /proc/cpuinfo cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return []
    have = set(line.split(":", 1)[-1].split())
    return [flag for flag in KERNEL_FLAGS if flag in have]


LIBRARIES = ("subtune", "torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "tensorrt",
             "polygraphy")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine_info(threads: int | None = None) -> dict:
    """`threads`: the intra-op thread count the timings ran with."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),  # which kernels ONNX Runtime runs (AVX2, AVX-512, VNNI, AMX)
        "usable_cores": usable_cores(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES if _version(name)},
        "threads": threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    gpu = _gpu_name()
    if gpu:
        info["gpu"] = gpu
    return info


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _gpu_name() -> str | None:
    """Only when torch is already imported: asking CUDA must not slow a CPU-only run."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return None
