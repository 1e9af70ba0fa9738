"""What this machine is, for every latency or INT8 figure: the CPU's instruction-set flags that
decide which kernels ONNX Runtime runs (AVX2, AVX-512, VNNI for int8 dot products, AMX)."""

from __future__ import annotations

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
