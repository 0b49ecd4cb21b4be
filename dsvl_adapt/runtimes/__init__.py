"""Runtimes that answer the same two questions for any backend: ``forward(batch) -> logits`` and
``generate(batch, max_new_tokens, eos_token_id) -> new token ids`` (greedy), so accuracy can be scored through the
runtime a target will use.

* :class:`TorchRuntimeModel` - a transformers model (fp32, or torch-quantized) in PyTorch;
* :class:`dsvl_adapt.runtimes.onnxruntime.OnnxRuntimeModel` - an ONNX export directory (full or split graphs,
  fp32 or quantized) in ONNX Runtime;
* :class:`dsvl_adapt.runtimes.openvino.OpenVinoModel` - OpenVINO IR converted from such an export (fp32, or int8/int4
  compressed with NNCF), at an explicitly pinned inference precision (f32 or bf16).

All decode with :func:`greedy_generate`: no KV cache, the whole growing sequence is run again each step (fine for
short answers), image features are computed once. Generation needs left padding (rows end with real tokens); position
ids come from the attention mask (:func:`position_ids_from_mask`), as in the exported graphs.

Heavy libraries (torch, onnxruntime, openvino) are imported lazily.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["GraphRuntimeModel", "TorchRuntimeModel", "greedy_generate", "position_ids_from_mask", "to_numpy"]


def position_ids_from_mask(attention_mask):
    """``cumsum(mask) - 1`` clipped at 0: positions that skip left padding (torch tensors)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def to_numpy(x: Any, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x.astype(dtype, copy=False) if dtype is not None else x


def _eos_set(eos_token_id: int | Sequence[int] | None) -> np.ndarray:
    if eos_token_id is None:
        return np.zeros(0, dtype=np.int64)
    if isinstance(eos_token_id, (int, np.integer)):
        return np.array([int(eos_token_id)], dtype=np.int64)
    return np.array([int(t) for t in eos_token_id], dtype=np.int64)


def greedy_generate(next_token_logits: Callable[[np.ndarray, np.ndarray], np.ndarray], input_ids: Any,
                    attention_mask: Any | None, max_new_tokens: int, eos_token_id: int | Sequence[int] | None = None,
                    pad_token_id: int | None = None) -> np.ndarray:
    """Greedy decoding around ``next_token_logits(ids, mask) -> (B, vocab)`` (logits of the last position).

    Returns the new tokens, shape (B, steps) int64, ``steps <= max_new_tokens`` (it stops once every row has produced
    an EOS). After its EOS a row is filled with ``pad_token_id`` (default: the first EOS id, else 0).
    """
    ids = to_numpy(input_ids, np.int64)
    mask = np.ones_like(ids) if attention_mask is None else to_numpy(attention_mask, np.int64)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"input_ids {ids.shape} and attention_mask {mask.shape} must both be (batch, sequence)")
    if (mask[:, -1] == 0).any():
        raise ValueError("generation needs left padding: every row's last attention_mask entry must be 1")
    eos = _eos_set(eos_token_id)
    pad = int(pad_token_id) if pad_token_id is not None else (int(eos[0]) if eos.size else 0)
    done = np.zeros(ids.shape[0], dtype=bool)
    new: list[np.ndarray] = []
    for _ in range(int(max_new_tokens)):
        logits = np.asarray(next_token_logits(ids, mask))
        token = logits.argmax(-1).astype(np.int64)
        token = np.where(done, pad, token)
        new.append(token)
        done |= np.isin(token, eos)
        ids = np.concatenate([ids, token[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones_like(token)[:, None]], axis=1)
        if done.all():
            break
    return np.stack(new, axis=1) if new else np.zeros((ids.shape[0], 0), dtype=np.int64)


class TorchRuntimeModel:
    """A transformers DeepSeek-VL model behind the runtime interface (numpy in and out)."""

    name = "torch"

    def __init__(self, model, threads: int | None = None):
        import torch

        if threads is not None:
            torch.set_num_threads(int(threads))
        self.model = model.eval()
        config = model.config
        self.image_token_id = int(config.image_token_id)
        self.hybrid = getattr(config, "high_res_vision_config", None) is not None

    def _pixels(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        names = ["pixel_values"] + (["high_res_pixel_values"] if self.hybrid else [])
        return {n: torch.as_tensor(to_numpy(batch[n], np.float32)) for n in names if batch.get(n) is not None}

    def image_embeddings(self, batch: dict[str, Any]) -> np.ndarray:
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

    def _logits(self, ids: np.ndarray, mask: np.ndarray, image_embeds: np.ndarray | None, last_only: bool):
        import torch

        ids_t = torch.as_tensor(ids)
        mask_t = torch.as_tensor(mask)
        with torch.no_grad():
            embeds = self.model.get_input_embeddings()(ids_t)
            if image_embeds is not None:
                where = ids_t == self.image_token_id
                feats = torch.as_tensor(image_embeds).reshape(-1, embeds.shape[-1]).to(embeds.dtype)
                if int(where.sum()) != feats.shape[0]:
                    raise ValueError(f"{int(where.sum())} image tokens in input_ids, {feats.shape[0]} image embeddings")
                embeds[where] = feats
            out = self.model(inputs_embeds=embeds, attention_mask=mask_t, position_ids=position_ids_from_mask(mask_t),
                             use_cache=False, logits_to_keep=1 if last_only else 0)
        logits = out.logits.float().numpy()
        return logits[:, -1] if last_only else logits

    def forward(self, batch: dict[str, Any]) -> np.ndarray:
        """Logits (B, T, vocab) as float32 numpy."""
        ids = to_numpy(batch["input_ids"], np.int64)
        mask = to_numpy(batch.get("attention_mask", np.ones_like(ids)), np.int64)
        image = self.image_embeddings(batch) if batch.get("pixel_values") is not None else None
        return self._logits(ids, mask, image, last_only=False)

    __call__ = forward

    def generate(self, batch: dict[str, Any], max_new_tokens: int, eos_token_id: int | Sequence[int] | None = None,
                 pad_token_id: int | None = None) -> np.ndarray:
        image = self.image_embeddings(batch) if batch.get("pixel_values") is not None else None
        return greedy_generate(lambda ids, mask: self._logits(ids, mask, image, last_only=True), batch["input_ids"],
                               batch.get("attention_mask"), max_new_tokens, eos_token_id, pad_token_id)


class GraphRuntimeModel(ABC):
    """What ONNX Runtime and OpenVINO models share: exported graphs, full (``model``) or split (``vision`` +
    ``lm`` on ``inputs_embeds`` with the token table of :mod:`dsvl_adapt.runtimes.embedding`). A subclass sets
    ``image_token_id``, ``hybrid``, ``_embed`` (an ``EmbeddingTable``, split exports only) and ``graph_suffix`` (e.g. ``.onnx``), and provides ``graphs`` (the loaded graphs by name) and
    ``_infer(name, feeds)`` returning a graph's single output."""

    image_token_id: int
    hybrid: bool
    _embed: Any
    graph_suffix = ""

    @property
    @abstractmethod
    def graphs(self) -> dict[str, Any]:
        """The loaded graphs by name: ``model``, or ``vision`` and ``lm``."""

    @abstractmethod
    def _infer(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run graph ``name`` on ``feeds``; its single output as numpy."""

    @staticmethod
    def _embedding_table(report: Any, directory: Any) -> Any:
        """The token table a split export's lookup reads (:mod:`dsvl_adapt.runtimes.embedding`); None for a full
        graph, which embeds inside."""
        from pathlib import Path

        from .embedding import load_embedding_table

        if report.mode != "split" or not report.embed_file:
            return None
        return load_embedding_table(Path(directory) / report.embed_file)

    def _pixel_feeds(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        names = ["pixel_values"] + (["high_res_pixel_values"] if self.hybrid else [])
        missing = [n for n in names if batch.get(n) is None]
        if missing:
            raise ValueError(f"batch lacks {missing}")
        return {n: to_numpy(batch[n], np.float32) for n in names}

    def image_embeddings(self, batch: dict[str, Any]) -> np.ndarray:
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
        if "model" in self.graphs:
            if pixels is None:
                raise ValueError("the full graph needs pixel_values; export split graphs for text-only input")
            return self._infer("model", {"input_ids": ids, "attention_mask": mask, **pixels})
        return self._infer("lm", {"inputs_embeds": self.inputs_embeds(ids, image_embeds), "attention_mask": mask})

    def _image_inputs(self, batch: dict[str, Any]) -> tuple[dict[str, np.ndarray] | None, np.ndarray | None]:
        if batch.get("pixel_values") is None:
            return None, None
        pixels = self._pixel_feeds(batch)
        return pixels, (self.image_embeddings(batch) if "vision" in self.graphs else None)

    def forward(self, batch: dict[str, Any]) -> np.ndarray:
        """Logits (B, T, vocab), float32 numpy."""
        ids = to_numpy(batch["input_ids"], np.int64)
        mask = to_numpy(batch.get("attention_mask", np.ones_like(ids)), np.int64)
        return self._run(ids, mask, *self._image_inputs(batch))

    __call__ = forward

    def generate(self, batch: dict[str, Any], max_new_tokens: int, eos_token_id: int | Sequence[int] | None = None,
                 pad_token_id: int | None = None) -> np.ndarray:
        """Greedy decoding without KV cache (the prompt is re-run each step); new ids (B, steps). Left padding."""
        pixels, image = self._image_inputs(batch)

        def step(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return self._run(ids, mask, pixels, image)[:, -1]

        return greedy_generate(step, batch["input_ids"], batch.get("attention_mask"), max_new_tokens, eos_token_id,
                               pad_token_id)

