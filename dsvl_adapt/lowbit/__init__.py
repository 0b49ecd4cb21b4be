"""Below int8: int4 weight-only quantization on ONNX Runtime and OpenVINO, per-layer sensitivity, and the
mixed-precision search that meets a vertical's retention objective (issue 18, docs/precision.md).

Each algorithm lives in its own module and takes plain inputs (a graph or IR model, calibration batches,
options), so that a runtime backend can call it from ``prepare``:

* :mod:`.int4_onnxruntime` - MatMulNBits (RTN or HQQ), int4 and int8 layers in one graph.
* :mod:`.int4_openvino` - ``nncf.compress_weights`` (INT4 sym/asym, AWQ, scale estimation, GPTQ, ratio, backup).
* :mod:`.sensitivity` - how much each linear layer's output moves when its weights go to int4 / int8.
* :mod:`.plan` - the per-layer plan written next to an artifact and its size breakdown by precision.
* :mod:`.mixed` - the search: fewest bytes whose retention, measured through the deployed runtime, holds.
"""
