"""dsvl-adapt plugin: the ExecuTorch runtime backend (XNNPACK on CPU), the route to phones and NPU delegates.

Supplies the ``executorch`` runtime backend (:class:`~dsvl_adapt_executorch.backend.ExecuTorchBackend`) through the
``dsvl_adapt_register_runtimes`` hook and two hardware targets that use it, ``phone-cpu`` and ``edge-arm``. Built only
on dsvl-adapt's runtime contract (:mod:`dsvl_adapt.runtimes.contract`); ExecuTorch and torch are imported when a
model is prepared or loaded, so ``dsvl-adapt plugins`` / ``targets`` stay fast.
"""

from __future__ import annotations

from dsvl_adapt import hookimpl
from dsvl_adapt.schemas import HardwareTarget

from .backend import ExecuTorchBackend

__version__ = "0.1.0"
__all__ = ["ExecuTorchBackend", "TARGETS"]

TARGETS = (
    HardwareTarget(
        name="phone-cpu", description="mid-range Android phone, ExecuTorch + XNNPACK on its Arm big cores",
        device="cpu", runtime="executorch", memory_gb=3, dtypes=["fp32", "int8"],
        peak_tops={"fp32": 0.1, "int8": 0.4}, memory_bandwidth_gbps=25, latency_p90_ms=500, sequence_length=1024,
    ),
    HardwareTarget(
        name="edge-arm", description="Arm single-board computer (Cortex-A76 class), ExecuTorch + XNNPACK, int8",
        device="cpu", runtime="executorch", memory_gb=1, dtypes=["int8"], peak_tops={"int8": 0.2},
        memory_bandwidth_gbps=10, latency_p90_ms=1000, sequence_length=512,
    ),
)


@hookimpl
def dsvl_adapt_register_runtimes(register):
    register(ExecuTorchBackend())


@hookimpl
def dsvl_adapt_register_hardware_targets(register):
    for target in TARGETS:
        register(target)
