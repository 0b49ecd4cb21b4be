"""Runtimes that answer the same questions for any backend - ``forward(batch) -> logits``, ``prefill`` / ``decode``
with a KV cache, ``generate(batch, GenerationSettings)`` and ``stream`` - so accuracy and speed are measured through
the runtime a target will use (the :class:`~dsvl_adapt.runtimes.contract.GenerativeModel` contract):

* :class:`TorchRuntimeModel` - a transformers model (fp32, or torch-quantized) in PyTorch, transformers'
  ``DynamicCache``;
* :class:`dsvl_adapt.runtimes.onnxruntime.OnnxRuntimeModel` - an ONNX export directory (full or split graphs,
  fp32 or quantized) in ONNX Runtime; the split LM graph takes past keys/values and returns the present ones;
* :class:`dsvl_adapt.runtimes.openvino.OpenVinoModel` - OpenVINO IR converted from such an export (fp32, or int8/int4
  compressed with NNCF), the LM stateful (the KV cache lives inside the infer request).

All generate through one loop (:mod:`dsvl_adapt.runtimes.generation`): image features and the prompt once
(``prefill``), then one token per row per step (``decode``). Graphs without a cache (full graphs, exports made before
the cache) re-run the growing sequence each step through the same loop (:class:`RecomputeDecoder`). Generation needs
left padding; position ids come from the attention mask, as in the exported graphs.

Heavy libraries (torch, onnxruntime, openvino) are imported lazily.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .contract import GenerationSettings
from .generation import (
    CacheState,
    check_left_padded,
    generate_tokens,
    positions_from_mask,
    settings_from_arguments,
    stream_tokens,
)

__all__ = ["GenerationSettings", "GraphRuntimeModel", "RecomputeDecoder", "TorchRuntimeModel", "greedy_generate",
           "position_ids_from_mask", "to_numpy"]


def position_ids_from_mask(attention_mask):
    """``cumsum(mask) - 1`` clipped at 0: positions that skip left padding (torch tensors)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def to_numpy(x: Any, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x.astype(dtype, copy=False) if dtype is not None else x


def _ids_and_mask(batch: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    ids = to_numpy(batch["input_ids"], np.int64)
    mask = np.ones_like(ids) if batch.get("attention_mask") is None else to_numpy(batch["attention_mask"], np.int64)
    check_left_padded(ids, mask)
    return ids, mask


@dataclass
class RecomputeState:
    """The state of a model without a KV cache: the whole sequence so far, re-run at every step."""

    input_ids: np.ndarray
    attention_mask: np.ndarray

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])


class RecomputeDecoder:
    """``prefill`` / ``decode`` around ``next_token_logits(ids, mask) -> (B, vocab)``: no cache, each step re-runs
    the growing sequence. For graphs exported without past inputs (full graphs, older split exports)."""

    def __init__(self, next_token_logits: Callable[[np.ndarray, np.ndarray], np.ndarray]):
        self.next_token_logits = next_token_logits

    def prefill(self, batch: Mapping[str, Any]) -> tuple[np.ndarray, RecomputeState]:
        ids, mask = _ids_and_mask(batch)
        return np.asarray(self.next_token_logits(ids, mask)), RecomputeState(ids, mask)

    def decode(self, state: RecomputeState, next_tokens: np.ndarray) -> tuple[np.ndarray, RecomputeState]:
        token = np.asarray(next_tokens, dtype=np.int64).reshape(-1, 1)
        state = RecomputeState(np.concatenate([state.input_ids, token], axis=1),
                               np.concatenate([state.attention_mask, np.ones_like(token)], axis=1))
        return np.asarray(self.next_token_logits(state.input_ids, state.attention_mask)), state


def greedy_generate(next_token_logits: Callable[[np.ndarray, np.ndarray], np.ndarray], input_ids: Any,
                    attention_mask: Any | None, max_new_tokens: int, eos_token_id: int | Sequence[int] | None = None,
                    pad_token_id: int | None = None) -> np.ndarray:
    """Greedy decoding WITHOUT a cache around ``next_token_logits(ids, mask) -> (B, vocab)`` (the logits of the last
    position), through the common loop. New tokens (B, steps) int64; rows pad after their EOS."""
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    return generate_tokens(RecomputeDecoder(next_token_logits), batch,
                           GenerationSettings(max_new_tokens=int(max_new_tokens), eos_token_id=eos_token_id,
                                              pad_token_id=pad_token_id))


class _GeneratingMixin:
    """``generate`` and ``stream`` through the common loop, over the class's ``prefill`` / ``decode``."""

    def generate(self, batch: Mapping[str, Any], settings: GenerationSettings | int | None = None,
                 eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None, *,
                 max_new_tokens: int | None = None) -> np.ndarray:
        """New token ids (B, steps) int64. ``generate(batch, GenerationSettings(...))``; the older
        ``generate(batch, max_new_tokens, eos_token_id=..., pad_token_id=...)`` (greedy) is still accepted."""
        settings = settings_from_arguments(settings, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                                           pad_token_id=pad_token_id)
        return generate_tokens(self, batch, settings)  # type: ignore[arg-type]

    def stream(self, batch: Mapping[str, Any], settings: GenerationSettings) -> Iterator[np.ndarray]:
        """Yields each step's new tokens (B,) as they are decoded."""
        return stream_tokens(self, batch, settings)  # type: ignore[arg-type]


class TorchRuntimeModel(_GeneratingMixin):
    """A transformers DeepSeek-VL model behind the runtime interface (numpy in and out). ``prefill`` computes the
    image features once and fills a transformers ``DynamicCache``; ``decode`` feeds one token per row."""

    name = "torch"
    runtime = "torch"

    def __init__(self, model, threads: int | None = None):
        import torch

        if threads is not None:
            torch.set_num_threads(int(threads))
        self.threads = threads
        self.model = model.eval()
        config = model.config
        self.image_token_id = int(config.image_token_id)
        self.hybrid = getattr(config, "high_res_vision_config", None) is not None

    def _pixels(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        names = ["pixel_values"] + (["high_res_pixel_values"] if self.hybrid else [])
        return {n: torch.as_tensor(to_numpy(batch[n], np.float32)) for n in names if batch.get(n) is not None}

    def image_embeddings(self, batch: Mapping[str, Any]) -> np.ndarray:
        import torch

        pixels = self._pixels(batch)
        with torch.no_grad():
            inner = self.model.model
            if self.hybrid:
                out = inner.get_image_features(pixels["pixel_values"], pixels["high_res_pixel_values"],
                                               return_dict=True)
            else:
                out = inner.get_image_features(pixels["pixel_values"], return_dict=True)
        return out.pooler_output.float().numpy()

    def _inputs(self, ids: np.ndarray, image_embeds: np.ndarray | None) -> dict[str, Any]:
        """The token ids, and the image embeddings for their placeholders, as the model takes them: the model
        (and anything hooked on it, e.g. a masking token budget) sees ``input_ids`` at every step."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        ids_t = torch.as_tensor(ids)
        inputs: dict[str, Any] = {"input_ids": ids_t}
        if image_embeds is not None:
            feats = torch.as_tensor(image_embeds)
            placeholders = int((ids_t == self.image_token_id).sum())
            if placeholders * feats.shape[-1] != feats.numel():
                raise ValueError(f"{placeholders} image tokens in input_ids, "
                                 f"{feats.numel() // feats.shape[-1]} image embeddings")
            inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=feats)}
        return inputs

    def _run(self, inputs: dict[str, Any], mask: np.ndarray, positions: np.ndarray, cache: Any,
             last_only: bool) -> np.ndarray:
        import torch

        out = self.model(**inputs, attention_mask=torch.as_tensor(mask),
                         position_ids=torch.as_tensor(positions), cache=cache, use_cache=cache is not None,
                         logits_to_keep=1 if last_only else 0)
        logits = out.logits.float().numpy()
        return logits[:, -1] if last_only else logits

    def forward(self, batch: Mapping[str, Any]) -> np.ndarray:
        """Logits (B, T, vocab) as float32 numpy (no cache)."""
        import torch

        ids = to_numpy(batch["input_ids"], np.int64)
        mask = to_numpy(batch.get("attention_mask", np.ones_like(ids)), np.int64)
        image = self.image_embeddings(batch) if batch.get("pixel_values") is not None else None
        with torch.no_grad():
            return self._run(self._inputs(ids, image), mask, positions_from_mask(mask), None, last_only=False)

    __call__ = forward

    def prefill(self, batch: Mapping[str, Any]) -> tuple[np.ndarray, CacheState]:
        """Image features and the whole prompt once; logits of the last position (B, vocab) and the filled cache."""
        import torch
        from transformers import DynamicCache

        ids, mask = _ids_and_mask(batch)
        image = self.image_embeddings(batch) if batch.get("pixel_values") is not None else None
        positions = positions_from_mask(mask)
        cache = DynamicCache(config=self.model.config.get_text_config())
        with torch.no_grad():
            logits = self._run(self._inputs(ids, image), mask, positions, cache, last_only=True)
        return logits, CacheState(mask, positions[:, -1].copy(), cache)

    def decode(self, state: CacheState, next_tokens: np.ndarray) -> tuple[np.ndarray, CacheState]:
        """One new token per row (B,) against the cache; logits (B, vocab)."""
        import torch

        token = np.asarray(next_tokens, dtype=np.int64).reshape(-1, 1)
        state = state.advanced(state.cache)
        with torch.no_grad():
            logits = self._run(self._inputs(token, None), state.attention_mask, state.last_position[:, None],
                               state.cache, last_only=True)
        return logits, state

    @staticmethod
    def kv_cache_bytes(state: CacheState) -> int:
        """Bytes the keys and values of ``state`` hold."""
        return sum(int(t.numel() * t.element_size()) for layer in state.cache.layers
                   for t in (layer.keys, layer.values) if t is not None)


class GraphRuntimeModel(_GeneratingMixin, ABC):
    """What ONNX Runtime and OpenVINO models share: exported graphs, full (``model``) or split (``vision`` +
    ``lm`` on ``inputs_embeds`` with the token table of :mod:`dsvl_adapt.runtimes.embedding`). A subclass sets
    ``image_token_id``, ``hybrid``, ``_embed`` (an ``EmbeddingTable``, split exports only), ``kv_cache`` (the
    export's :class:`~dsvl_adapt.export.onnx.KvCacheInfo`, None when its LM takes no past) and ``graph_suffix``
    (e.g. ``.onnx``), and provides ``graphs`` (the loaded graphs by name), ``_infer(name, feeds)`` returning a graph's
    single output, and - for an LM with a cache - ``_lm_step``."""

    image_token_id: int
    hybrid: bool
    _embed: Any
    kv_cache: Any = None
    graph_suffix = ""

    @property
    @abstractmethod
    def graphs(self) -> dict[str, Any]:
        """The loaded graphs by name: ``model``, or ``vision`` and ``lm``."""

    @abstractmethod
    def _infer(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run graph ``name`` on ``feeds``; its single output as numpy."""

    def _lm_step(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                 cache: Any, last_only: bool = False) -> tuple[np.ndarray, Any]:
        """Run the LM with a cache: ``inputs_embeds`` (B, T, hidden) for the new positions, ``attention_mask``
        (B, past + T), ``position_ids`` (B, T); ``cache`` None starts a new request (empty past). Returns the logits
        (B, T, vocab) - (B, 1, vocab) with ``last_only`` where the export takes ``logits_positions``, so the head
        runs on the last row alone - and the cache after these positions."""
        raise NotImplementedError(f"{type(self).__name__} has no KV-cache step")

    @property
    def has_kv_cache(self) -> bool:
        """Whether decoding reuses cached keys/values (a split export whose LM takes past inputs)."""
        return self.kv_cache is not None and "lm" in self.graphs

    @staticmethod
    def _embedding_table(report: Any, directory: Any) -> Any:
        """The token table a split export's lookup reads (:mod:`dsvl_adapt.runtimes.embedding`); None for a full
        graph, which embeds inside."""
        from pathlib import Path

        from .embedding import load_embedding_table

        if report.mode != "split" or not report.embed_file:
            return None
        return load_embedding_table(Path(directory) / report.embed_file)

    def _pixel_feeds(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        names = ["pixel_values"] + (["high_res_pixel_values"] if self.hybrid else [])
        missing = [n for n in names if batch.get(n) is None]
        if missing:
            raise ValueError(f"batch lacks {missing}")
        return {n: to_numpy(batch[n], np.float32) for n in names}

    def image_embeddings(self, batch: Mapping[str, Any]) -> np.ndarray:
        """Aligned image features (images, N, hidden); split graphs only."""
        if "vision" not in self.graphs:
            raise ValueError(f"image_embeddings needs a split export (vision{self.graph_suffix})")
        return self._infer("vision", self._pixel_feeds(batch))

    def inputs_embeds(self, input_ids: np.ndarray, image_embeds: np.ndarray | None) -> np.ndarray:
        """Token embeddings with the image embeddings written at the image-token positions (split graphs)."""
        if self._embed is None:
            raise ValueError("inputs_embeds needs a split export (with its embedding table)")
        embeds = self._embed.lookup(input_ids)
        if image_embeds is not None:
            where = input_ids == self.image_token_id
            feats = image_embeds.reshape(-1, embeds.shape[-1])
            if int(where.sum()) != feats.shape[0]:
                raise ValueError(f"{int(where.sum())} image tokens in input_ids, {feats.shape[0]} image embeddings")
            embeds[where] = feats  # row-major order, as masked_scatter
        return embeds

    def _run(self, ids: np.ndarray, mask: np.ndarray, pixels: dict[str, np.ndarray] | None,
             image_embeds: np.ndarray | None) -> np.ndarray:
        """Logits (B, T, vocab) of the whole sequence, no cache kept."""
        if "model" in self.graphs:
            if pixels is None:
                raise ValueError("the full graph needs pixel_values; export split graphs for text-only input")
            return self._infer("model", {"input_ids": ids, "attention_mask": mask, **pixels})
        embeds = self.inputs_embeds(ids, image_embeds)
        if self.has_kv_cache:
            return self._lm_step(embeds, mask, positions_from_mask(mask), None)[0]
        return self._infer("lm", {"inputs_embeds": embeds, "attention_mask": mask})

    def _image_inputs(self, batch: Mapping[str, Any]) -> tuple[dict[str, np.ndarray] | None, np.ndarray | None]:
        if batch.get("pixel_values") is None:
            return None, None
        pixels = self._pixel_feeds(batch)
        return pixels, (self.image_embeddings(batch) if "vision" in self.graphs else None)

    def forward(self, batch: Mapping[str, Any]) -> np.ndarray:
        """Logits (B, T, vocab), float32 numpy."""
        ids = to_numpy(batch["input_ids"], np.int64)
        mask = to_numpy(batch.get("attention_mask", np.ones_like(ids)), np.int64)
        return self._run(ids, mask, *self._image_inputs(batch))

    __call__ = forward

    def prefill(self, batch: Mapping[str, Any]) -> tuple[np.ndarray, Any]:
        """Image features and the whole prompt once; logits of the last position (B, vocab) and the state: the
        filled cache (:class:`CacheState`), or the sequence so far for graphs without one (:class:`RecomputeState`)."""
        ids, mask = _ids_and_mask(batch)
        pixels, image = self._image_inputs(batch)
        if not self.has_kv_cache:
            decoder = RecomputeDecoder(lambda i, m: self._run(i, m, pixels, image)[:, -1])
            logits, state = decoder.prefill(batch)
            return logits, _RecomputeGraphState(state, decoder)
        positions = positions_from_mask(mask)
        logits, cache = self._lm_step(self.inputs_embeds(ids, image), mask, positions, None, last_only=True)
        return logits[:, -1], CacheState(mask, positions[:, -1].copy(), cache)

    def decode(self, state: Any, next_tokens: np.ndarray) -> tuple[np.ndarray, Any]:
        """One new token per row (B,); logits (B, vocab). With a cache only these tokens enter the LM."""
        if isinstance(state, _RecomputeGraphState):
            logits, inner = state.decoder.decode(state.inner, next_tokens)
            return logits, _RecomputeGraphState(inner, state.decoder)
        token = np.asarray(next_tokens, dtype=np.int64).reshape(-1, 1)
        grown = state.advanced(None)
        logits, cache = self._lm_step(self.inputs_embeds(token, None), grown.attention_mask,
                                      grown.last_position[:, None], state.cache, last_only=True)
        grown.cache = cache
        return logits[:, -1], grown


@dataclass
class _RecomputeGraphState:
    """A graph model's state without a cache: the sequence so far and the closure that re-runs it."""

    inner: RecomputeState
    decoder: RecomputeDecoder

    @property
    def length(self) -> int:
        return self.inner.length

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size
