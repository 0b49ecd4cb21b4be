"""Facts about the CPU this process runs on, read without importing torch.

Hosts differ in ways that change results, not only speed: on an x86 CPU without VNNI, ONNX Runtime's u8s8 int8
matrix kernels can saturate their 16-bit intermediate sums, and an int8 student drifts from its fp32 source by far
more than on a CPU with VNNI (measured here on a tiny model: max |logit diff| 0.17 without 7-bit weights on an
AVX2-only AMD EPYC, 0.018 with them). Decisions that depend on the host read it from here and record what they saw.
"""

from __future__ import annotations

import functools
import os
import platform

#: instruction-set flags (as /proc/cpuinfo names them) with int8 dot-product instructions that keep full-range
#: u8s8 products exact: AVX-512 VNNI, AVX-VNNI, and AMX int8 tiles.
INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: the flags that change figures measured here (int8 dot products, AVX-512, bf16), kept in results beside the model
#: name: one "AMD EPYC" name covers both an AVX2-only host and an AVX-512 one in this project
FLAGS_THAT_MATTER = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                               "amx_bf16"})


def cpu_description() -> dict[str, object]:
    """What a benchmark's JSON states beside every figure: the CPU's model, the flags that matter, the cores."""
    return {"cpu": cpu_model(), "cpu_flags": sorted(cpu_flags() & FLAGS_THAT_MATTER), "cores": os.cpu_count()}


def has_int8_dot_product(flags: frozenset[str] | None = None, machine: str | None = None) -> bool | None:
    """True when the x86 CPU has VNNI or AMX int8; None when it cannot be told (not x86, or no flags readable).

    ``flags`` and ``machine`` default to this host's (``cpu_flags()``, ``platform.machine()``)."""
    if (machine or platform.machine()).lower() not in ("x86_64", "amd64", "i686", "x86"):
        return None
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return None
    return bool(flags & INT8_DOT_PRODUCT_FLAGS)


#: flags of CPUs with bfloat16 arithmetic in hardware (x86 AVX-512 BF16 and AMX, Arm's BF16 extension); elsewhere
#: bf16 matmuls are emulated and run several times slower than fp32 (0.2-0.5x, measured on this project's AVX2 host)
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU computes in bfloat16 natively (see ``NATIVE_BF16_FLAGS``); ``flags`` default to this host's."""
    return bool((cpu_flags() if flags is None else flags) & NATIVE_BF16_FLAGS)


def return_freed_memory() -> bool:
    """Hand the memory this process has freed back to the system where the C library keeps it (glibc's
    ``malloc_trim(0)``: freed blocks below its mmap threshold, up to 32 MB, stay in the heap otherwise, and a model's
    weights freed layer by layer leave gigabytes resident). Returns whether anything was called; a no-op off glibc."""
    import ctypes
    import ctypes.util

    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def _proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes; None where there is none."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_bytes() -> int | None:
    """Resident memory of this process now (Linux), else None."""
    return _proc_status_bytes("VmRSS")


def process_peak_rss_bytes() -> int | None:
    """This process's own peak resident memory so far, in bytes; None where it cannot be read (Windows).

    Linux: ``VmHWM``, the high-water mark of this process's address space, which starts empty at ``exec``. Not
    ``ru_maxrss``: Linux carries a parent's resident size at the spawn into a child's (a parent holding 2 GB spawned
    a bare Python whose ``ru_maxrss`` read 1.9 GB and ``VmHWM`` 9 MB). Elsewhere ``ru_maxrss`` (bytes on macOS)."""
    own = _proc_status_bytes("VmHWM")
    if own is not None:
        return own
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if platform.system() == "Darwin" else peak * 1024)


def reset_peak_rss() -> bool:
    """Restart this process's peak resident memory from its present size (Linux >= 4.0: ``/proc/self/clear_refs``,
    5); False where it cannot be, and the peak then still covers the whole process."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return _proc_status_bytes("VmHWM") is not None
