"""int4 (and int8) weight-only quantization of an ONNX graph with ONNX Runtime's MatMulNBits.

Each linear layer (a MatMul with a constant weight) gets its own precision: ``int4`` or ``int8`` become a
``com.microsoft.MatMulNBits`` node (blockwise along the input dimension, ``block_size`` weights per block, one
scale per block and, asymmetric, one zero point), ``fp32`` stays a MatMul. One quantizer pass per bit width, each
restricted to its layers, so a mixed plan is one graph.

Algorithms offered by onnxruntime 1.32 that fit here:

* ``rtn`` - round to nearest (``DefaultWeightOnlyQuantConfig``), symmetric or asymmetric, C++ kernels: fast.
* ``hqq`` - Half-Quadratic Quantization (``HQQWeightOnlyQuantConfig``): data-free, optimises scales and zero points
  of each block against the weight error; asymmetric only. Used for the int4 layers; int8 layers stay RTN.

Not offered: ORT's GPTQ (``neural_compressor.gptq_quantize``) quantizes every MatMul of the graph, ignoring
``nodes_to_exclude``, so the skip policy (vision tower fp32) could not hold; NNCF's GPTQ is available through the
openvino backend. ``accuracy_level`` is MatMulNBits' attribute: 4 computes with int8 activations on CPU (faster,
slightly less accurate), unset lets ORT decide.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["NBitsOptions", "quantize_matmul_nbits"]

LayerPrecision = Literal["int4", "int8", "fp32"]


class NBitsOptions:
    """The MatMulNBits knobs (a plain holder; :class:`~dsvl_adapt.compress.quantize.QuantizeConfig` validates
    them for the pipeline)."""

    def __init__(self, *, block_size: int = 32, symmetric: bool = False, algorithm: str = "rtn",
                 accuracy_level: int | None = None):
        if block_size < 16 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of 2 >= 16, got {block_size}")
        if algorithm not in ("rtn", "hqq"):
            raise ValueError(f"onnxruntime int4 algorithm must be rtn or hqq, got {algorithm!r}")
        if algorithm == "hqq" and symmetric:
            raise ValueError("hqq is asymmetric: set symmetric=False")
        self.block_size, self.symmetric, self.algorithm = block_size, symmetric, algorithm
        self.accuracy_level = accuracy_level

    def as_dict(self) -> dict[str, object]:
        return {"block_size": self.block_size, "symmetric": self.symmetric, "algorithm": self.algorithm,
                "accuracy_level": self.accuracy_level}


def _algo_config(bits: int, options: NBitsOptions):
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
    )

    if bits == 4 and options.algorithm == "hqq":
        return HQQWeightOnlyQuantConfig(block_size=options.block_size, bits=4, op_types_to_quantize=("MatMul",))
    return DefaultWeightOnlyQuantConfig(block_size=options.block_size, is_symmetric=options.symmetric,
                                        accuracy_level=options.accuracy_level, bits=bits,
                                        op_types_to_quantize=("MatMul",))


def quantize_matmul_nbits(model: onnx.ModelProto, layers: Mapping[str, LayerPrecision],
                          options: NBitsOptions) -> tuple[onnx.ModelProto, Counter[str]]:
    """Quantize the MatMul nodes named in ``layers`` to their precision; returns the new model and the count of
    nodes per precision. Nodes not in ``layers`` (activation x activation matmuls, skipped layers) are untouched.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    all_matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    unknown = sorted(set(layers) - all_matmuls)
    if unknown:
        raise ValueError(f"layers not found as MatMul nodes of the graph: {unknown[:5]}")
    counts: Counter[str] = Counter(layers.values())
    noisy = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = noisy.level
    noisy.setLevel(logging.WARNING)
    try:
        for bits in (4, 8):
            chosen = {name for name, p in layers.items() if p == f"int{bits}"}
            if not chosen:
                continue
            present = {n.name for n in model.graph.node if n.op_type == "MatMul"}
            quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=options.block_size,
                                             is_symmetric=options.symmetric, accuracy_level=options.accuracy_level,
                                             nodes_to_exclude=sorted(present - chosen),
                                             algo_config=_algo_config(bits, options))
            quantizer.process()
            model = quantizer.model.model
    finally:
        noisy.setLevel(level)
    return model, counts


def quantize_graph_weights(model: onnx.ModelProto, candidates: list[str], module_paths: Mapping[str, str | None],
                           config, plan_path) -> onnx.ModelProto:
    """The weight-only path of the ONNX Runtime quantizer: each candidate MatMul at the precision ``config`` gives
    its module (:meth:`~dsvl_adapt.compress.quantize.QuantizeConfig.layer_precision`: skip, ``per_layer``,
    ``lm_head`` at ``backup`` under int4); writes ``plan_path`` ({module path: precision}) beside the graph."""
    import json
    from pathlib import Path

    options = NBitsOptions(block_size=config.block_size, symmetric=config.symmetric,
                           algorithm=config.algorithm if config.bits == 4 else "rtn",
                           accuracy_level=config.accuracy_level)
    layers = {name: config.layer_precision(module_paths.get(name) or "") for name in candidates}
    model, _ = quantize_matmul_nbits(model, layers, options)
    plan = {module_paths.get(name) or name: precision for name, precision in layers.items()}
    Path(plan_path).write_text(json.dumps({"options": options.as_dict(), "layers": plan}, indent=2) + "\n")
    return model
