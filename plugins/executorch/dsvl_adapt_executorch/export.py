"""Export a DeepSeek-VL model to ExecuTorch programs (``.pte``) lowered to XNNPACK, optionally int8.

Two programs and a table, the split layout the core's ONNX Runtime and OpenVINO backends use:

* ``vision.pte`` - ``pixel_values`` (1, 3, S, S) -> aligned image features (1, N, hidden); one image per call;
* ``lm.pte`` - the language model with a **static KV cache held inside the program** (mutable buffers, as
  ExecuTorch's own LLM examples and transformers' ``TorchExportableModuleWithStaticCache`` do): inputs
  ``inputs_embeds`` (B, T, hidden), ``position_ids`` (B, T), ``attention_bias`` (B, T, max_len) and
  ``cache_position`` (T,) (the cache slots the T new positions are written to); output the logits (B, T, vocab).
  T is dynamic (1 .. max_len): the prompt goes in once (prefill), then one token per step (decode). The batch B is
  fixed at export (``batch_size``; fewer rows are padded by the runtime model);
* ``embed_tokens.npy`` (or ``embed_tokens.int8.npz``) - the token table, looked up outside the programs with
  :mod:`dsvl_adapt.runtimes.embedding`, so that image features can be written at the image-token positions.

The attention bias (0 = attend, a large negative number = masked) is made by the caller from the rows' attention
masks: that is what lets left-padded rows of different lengths share one cache (slot index = step for every row,
while each row's rotary positions come from ``position_ids``). Eager attention is used for the export: it adds the
bias as given (no data-dependent mask code for ``torch.export`` to trace).

Quantization (``weights="int8"``): XNNPACK's PT2E quantizer, symmetric per-channel int8 weights with dynamically
quantized int8 activations on every Linear (the recipe ExecuTorch documents for transformer LMs on XNNPACK; it
needs no calibration set). The vision program is quantized the same way. The token table becomes per-row int8. In
the int8 LM only the quantized Linear layers are delegated to XNNPACK (as ExecuTorch's LLM export does).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_MAX_LEN", "ExportedPrograms", "export_programs", "masked_bias"]

DEFAULT_MAX_LEN = 512  # cache slots: image tokens + prompt + answer
DEFAULT_BATCH_SIZE = 1
#: Added to masked attention scores. Finite (not -inf) so that a fully padded query row stays finite.
MASK_VALUE = -1.0e9


class ExportedPrograms(dict):
    """File name -> serialized program bytes, as :func:`export_programs` returns them."""


def masked_bias(slot_valid: np.ndarray, start: int, length: int, max_len: int) -> np.ndarray:
    """The additive attention bias (B, length, max_len) for queries at cache slots ``start .. start+length-1``.

    ``slot_valid`` (B, max_len): 1 where the slot holds a real (not padding) token of this generation. A query at
    slot ``s`` sees slots ``<= s`` that are valid, and always itself (so a padding query attends to something and
    its hidden state stays finite: its value then enters later layers' caches, which every real query masks)."""
    slots = np.arange(max_len)[None, None, :]
    query = (start + np.arange(length))[None, :, None]
    allowed = (slots <= query) & ((slot_valid[:, None, :] > 0) | (slots == query))
    return np.where(allowed, 0.0, MASK_VALUE).astype(np.float32)


def _quiet():
    """transformers' data-dependent checks off (``torch.export`` cannot trace them), exporter chatter down."""
    from dsvl_adapt.export.tracing import tracing_environment

    return tracing_environment(("torch._export", "torch.export", "executorch", "torchao"))


def _modules():
    import torch
    from transformers.cache_utils import StaticCache

    class VisionProgram(torch.nn.Module):
        """pixel_values -> the aligner's image features (what replaces the image tokens' embeddings)."""

        def __init__(self, model: Any, hybrid: bool):
            super().__init__()
            self.inner = model.model
            self.hybrid = hybrid

        def forward(self, pixel_values, high_res_pixel_values=None):
            if self.hybrid:
                out = self.inner.get_image_features(pixel_values, high_res_pixel_values, return_dict=True)
            else:
                out = self.inner.get_image_features(pixel_values, return_dict=True)
            return out.pooler_output

    class CachedLanguageModel(torch.nn.Module):
        """The language model and its head over a static cache registered as buffers (mutable state of the
        program)."""

        def __init__(self, model: Any, batch_size: int, max_len: int):
            super().__init__()
            self.language_model = model.model.language_model
            self.lm_head = model.lm_head
            text = model.config.get_text_config()
            self.cache = StaticCache(max_cache_len=max_len, config=text)
            heads = text.num_key_value_heads
            head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            self.cache.early_initialization(batch_size, heads, head_dim, torch.float32, torch.device("cpu"))
            for i, layer in enumerate(self.cache.layers):
                self.register_buffer(f"key_cache_{i}", layer.keys, persistent=False)
                self.register_buffer(f"value_cache_{i}", layer.values, persistent=False)
                self.register_buffer(f"cumulative_length_{i}", layer.cumulative_length, persistent=False)

        def forward(self, inputs_embeds, position_ids, attention_bias, cache_position):
            for i, layer in enumerate(self.cache.layers):
                # the cache's layers read this module's buffers (what torch.export traces as mutable state, not
                # tensors held elsewhere), and write the new positions from cache_position[0] on
                layer.keys = getattr(self, f"key_cache_{i}")
                layer.values = getattr(self, f"value_cache_{i}")
                layer.cumulative_length = getattr(self, f"cumulative_length_{i}")
                layer.cumulative_length.copy_(cache_position[0])
            out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_bias[:, None],
                                      position_ids=position_ids, cache=self.cache, use_cache=True)
            return self.lm_head(out.last_hidden_state)

    return VisionProgram, CachedLanguageModel


def _quantize_int8(module: Any, example: tuple, dynamic_shapes: Any) -> Any:
    """XNNPACK PT2E: per-channel symmetric int8 weights, dynamic int8 activations (Linear layers)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                               is_dynamic=True))
    graph = torch.export.export(module, example, dynamic_shapes=dynamic_shapes, strict=False).module()
    prepared = prepare_pt2e(graph, quantizer)
    prepared(*example)  # observers see one batch (dynamic activations need no calibration statistics)
    return convert_pt2e(prepared)


def _lower(module: Any, example: tuple, dynamic_shapes: Any, *, quantized_linears_only: bool = False) -> bytes:
    """``torch.export`` -> edge -> XNNPACK -> ``.pte`` bytes. ``quantized_linears_only``: delegate only the dynamically
    quantized Linear layers (ExecuTorch's LLM recipe for int8 LMs; the greedy partitioner makes a partition with a
    dependency cycle around the KV-cache writes of the quantized LM); the rest runs on ExecuTorch's CPU kernels."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackDynamicallyQuantizedPartitioner,
        XnnpackPartitioner,
    )
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(module, example, dynamic_shapes=dynamic_shapes, strict=False)
    partitioner = XnnpackDynamicallyQuantizedPartitioner() if quantized_linears_only else XnnpackPartitioner()
    lowered = to_edge_transform_and_lower(program, partitioner=[partitioner])
    return lowered.to_executorch().buffer


def export_programs(model: Any, *, weights: str = "fp32", batch_size: int = DEFAULT_BATCH_SIZE,
                    max_len: int = DEFAULT_MAX_LEN) -> ExportedPrograms:
    """Export ``model`` (a float32 DeepSeek-VL module; not modified) to ``vision.pte`` and ``lm.pte`` bytes.

    ``weights``: "fp32" or "int8" (see the module's docstring)."""
    import copy

    import torch

    if weights not in ("fp32", "int8"):
        raise ValueError(f"ExecuTorch export: weights={weights!r} is not supported; use 'fp32' or 'int8'")
    config = model.config
    hybrid = getattr(config, "high_res_vision_config", None) is not None
    model = copy.deepcopy(model).float().eval().requires_grad_(False)
    model.config._attn_implementation = "eager"
    model.model.language_model.config._attn_implementation = "eager"
    VisionProgram, CachedLanguageModel = _modules()
    text = config.get_text_config()
    hidden = int(text.hidden_size)
    vision_cfg = config.vision_config
    size = int(vision_cfg.image_size)
    programs = ExportedPrograms()
    with _quiet(), torch.no_grad():
        vision = VisionProgram(model, hybrid).eval()
        pixels: tuple = (torch.randn(1, 3, size, size),)
        if hybrid:
            high = int(config.high_res_vision_config.image_size)
            pixels = pixels + (torch.randn(1, 3, high, high),)
        if weights == "int8":
            vision = _quantize_int8(vision, pixels, None)
        programs["vision.pte"] = _lower(vision, pixels, None)

        lm = CachedLanguageModel(model, batch_size, max_len).eval()
        steps = min(8, max_len)
        example = (torch.randn(batch_size, steps, hidden),
                   torch.arange(steps).expand(batch_size, steps).contiguous(),
                   torch.as_tensor(masked_bias(np.ones((batch_size, max_len)), 0, steps, max_len)),
                   torch.arange(steps))
        length = torch.export.Dim("length", min=1, max=max_len)
        dynamic = ({1: length}, {1: length}, {1: length}, {0: length})
        if weights == "int8":
            lm = _quantize_int8(lm, example, dynamic)
        programs["lm.pte"] = _lower(lm, example, dynamic, quantized_linears_only=weights == "int8")
    return programs
