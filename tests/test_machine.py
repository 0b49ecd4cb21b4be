"""Host facts that change results: which CPUs get ONNX Runtime's 7-bit weights."""

from __future__ import annotations

import pytest

from dsvl_adapt.compress.quantize import QuantizeConfig
from dsvl_adapt.machine import has_int8_dot_product


@pytest.mark.parametrize(("flags", "machine", "expected"), [
    ({"avx2", "fma"}, "x86_64", False),                  # AVX2-only (the AMD EPYC host of this project)
    ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", True),  # Zen 4/5, Cascade Lake and later Xeons
    ({"avx2", "avx_vnni"}, "x86_64", True),                # Alder Lake and later
    ({"avx512f", "amx_int8", "amx_tile"}, "x86_64", True),
    (set(), "x86_64", None),                             # nothing readable: cannot be told
    ({"neon", "asimddp"}, "aarch64", None),              # not x86: ONNX Runtime's ARM kernels do not saturate so
])
def test_int8_dot_product_from_flags(flags, machine, expected):
    assert has_int8_dot_product(frozenset(flags), machine) is expected


def test_reduce_range_explicit_values_win_over_the_host():
    assert QuantizeConfig(backend="onnxruntime", reduce_range=True).reduce_range_resolved is True
    assert QuantizeConfig(backend="onnxruntime", reduce_range=False).reduce_range_resolved is False
    auto = QuantizeConfig(backend="onnxruntime").reduce_range_resolved
    assert auto is (has_int8_dot_product() is False)


def test_freed_memory_goes_back_to_the_system_where_glibc_keeps_it():
    import platform

    import numpy as np

    from dsvl_adapt.machine import return_freed_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert return_freed_memory() is False
        return
    # 200 blocks of 1 MB (below glibc's mmap threshold once raised: they land in the heap), freed, then trimmed
    blocks = [np.ones(1 << 18, np.float32) for _ in range(200)]
    del blocks
    before = _resident_bytes()
    assert return_freed_memory() is True
    assert _resident_bytes() <= before


def _resident_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_cpu_description_names_the_model_the_flags_that_matter_and_the_cores():
    import os

    from dsvl_adapt.machine import FLAGS_THAT_MATTER, cpu_description, cpu_flags, cpu_model

    described = cpu_description()
    assert described["cpu"] == cpu_model() and described["cpu"]
    assert described["cores"] == os.cpu_count()
    assert described["cpu_flags"] == sorted(cpu_flags() & FLAGS_THAT_MATTER)
    assert {"avx2", "avx512_vnni"} <= FLAGS_THAT_MATTER  # what tells this project's two AMD EPYC hosts apart
