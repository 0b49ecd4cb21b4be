"""A loaded ExecuTorch artifact behind the runtime contract's :class:`GenerativeModel` (numpy in and out).

``prefill`` encodes each image with ``vision.pte``, looks the prompt up in the token table, writes the image features
at the image-token positions and runs the whole prompt once through ``lm.pte``, whose static KV cache keeps the keys
and values; ``decode`` feeds one token per row and reads the cache (no prompt re-run). Rows are left padded; a batch
smaller than the exported ``batch_size`` is filled with padding rows, a larger one is generated in chunks.

The cache lives inside the loaded program (ExecuTorch's mutable buffers), so a model holds **one** live generation:
a new ``prefill`` or ``forward`` supersedes the previous state, and decoding that old state is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsvl_adapt.runtimes.contract import GenerationSettings
from dsvl_adapt.runtimes.embedding import load_embedding_table
from dsvl_adapt.runtimes.generation import check_left_padded, eos_ids, positions_from_mask, stream_tokens

from .export import masked_bias

__all__ = ["RECORD_FILE", "ExecuTorchModel", "ExecuTorchState", "read_record"]

RECORD_FILE = "executorch.json"


def read_record(directory: Path) -> dict[str, Any]:
    path = Path(directory) / RECORD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not an ExecuTorch artifact (no {RECORD_FILE}); make one with the "
                                "executorch backend's prepare (a target whose runtime is 'executorch')")
    return json.loads(path.read_text())


def _numpy(x: Any, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(dtype, copy=False)


@dataclass
class ExecuTorchState:
    """The decode state: ``length`` cache slots written, ``batch_size`` rows; which slots hold real tokens, each
    row's next rotary position, and the generation it belongs to."""

    length: int
    batch_size: int
    slot_valid: np.ndarray  # (exported batch, max_len) 1 = a real token of this generation
    next_position: np.ndarray  # (exported batch,)
    generation: int


class ExecuTorchModel:
    """``vision.pte`` + ``lm.pte`` + token table in ExecuTorch's runtime (XNNPACK on CPU)."""

    runtime = "executorch"

    def __init__(self, directory: str | Path, *, threads: int | None = None):
        from executorch.runtime import Runtime

        self.directory = Path(directory)
        self.record = read_record(self.directory)
        self.threads = threads
        if threads is not None:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(threads))  # XNNPACK's threadpool (process-wide)
        runtime = Runtime.get()
        self._vision = runtime.load_program(self.directory / self.record["vision"]).load_method("forward")
        self._lm = runtime.load_program(self.directory / self.record["lm"]).load_method("forward")
        self._table = load_embedding_table(self.directory / self.record["embedding"])
        self.image_token_id = int(self.record["image_token_id"])
        self.hybrid = bool(self.record["hybrid"])
        self.batch_size = int(self.record["batch_size"])
        self.max_len = int(self.record["max_len"])
        self._generation = 0

    # -- inputs ---------------------------------------------------------------------------------------------------
    def image_embeddings(self, batch: Mapping[str, Any]) -> np.ndarray:
        """Aligned image features (images, N, hidden), one vision call per image."""
        import torch

        pixels = _numpy(batch["pixel_values"], np.float32)
        high = _numpy(batch["high_res_pixel_values"], np.float32) if self.hybrid else None
        out = []
        for i in range(pixels.shape[0]):
            inputs = [torch.from_numpy(np.ascontiguousarray(pixels[i: i + 1]))]
            if high is not None:
                inputs.append(torch.from_numpy(np.ascontiguousarray(high[i: i + 1])))
            out.append(self._vision.execute(inputs)[0].numpy())
        return np.concatenate(out, axis=0)

    def _embeds(self, ids: np.ndarray, batch: Mapping[str, Any]) -> np.ndarray:
        embeds = self._table.lookup(ids)
        if batch.get("pixel_values") is not None:
            where = ids == self.image_token_id
            feats = self.image_embeddings(batch).reshape(-1, embeds.shape[-1])
            if int(where.sum()) != feats.shape[0]:
                raise ValueError(f"{int(where.sum())} image tokens in input_ids, {feats.shape[0]} image embeddings")
            embeds[where] = feats
        return embeds

    def _pad_rows(self, x: np.ndarray) -> np.ndarray:
        """Fill a batch of fewer rows than the exported ``batch_size`` with zero rows."""
        missing = self.batch_size - x.shape[0]
        return x if missing == 0 else np.concatenate([x, np.zeros((missing, *x.shape[1:]), x.dtype)], axis=0)

    def _run(self, embeds: np.ndarray, positions: np.ndarray, bias: np.ndarray, start: int) -> np.ndarray:
        import torch

        length = embeds.shape[1]
        inputs = [torch.from_numpy(np.ascontiguousarray(embeds, dtype=np.float32)),
                  torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64)),
                  torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32)),
                  torch.arange(start, start + length, dtype=torch.int64)]
        return self._lm.execute(inputs)[0].numpy()

    # -- the contract ---------------------------------------------------------------------------------------------
    def _prefill_all(self, batch: Mapping[str, Any]) -> tuple[np.ndarray, ExecuTorchState]:
        ids = _numpy(batch["input_ids"], np.int64)
        mask = _numpy(batch["attention_mask"], np.int64) if batch.get("attention_mask") is not None \
            else np.ones_like(ids)
        check_left_padded(ids, mask)
        rows, length = ids.shape
        if rows > self.batch_size:
            raise ValueError(f"{rows} rows in one prefill; this artifact was exported for batch_size="
                             f"{self.batch_size} (generate() splits larger batches; or prepare with "
                             f"options={{'batch_size': {rows}}})")
        if length >= self.max_len:
            raise ValueError(f"a prompt of {length} positions does not fit the {self.max_len}-slot KV cache of this "
                             "artifact; prepare it with a larger options={'max_len': ...}")
        embeds = self._pad_rows(self._embeds(ids, batch))
        mask = self._pad_rows(mask)
        positions = positions_from_mask(mask)
        slot_valid = np.zeros((self.batch_size, self.max_len), dtype=np.int64)
        slot_valid[:, :length] = mask
        logits = self._run(embeds, positions, masked_bias(slot_valid, 0, length, self.max_len), 0)
        self._generation += 1
        state = ExecuTorchState(length=length, batch_size=rows, slot_valid=slot_valid,
                                next_position=positions[:, -1] + 1, generation=self._generation)
        return logits[:rows], state

    def forward(self, batch: Mapping[str, Any]) -> np.ndarray:
        """Logits (B, T, vocab) float32 of image + prompt (a prefill whose state is dropped)."""
        rows = _numpy(batch["input_ids"], np.int64).shape[0]
        parts = [self._prefill_all(_rows(batch, i, i + self.batch_size))[0]
                 for i in range(0, rows, self.batch_size)]
        return np.concatenate(parts, axis=0)

    __call__ = forward

    def prefill(self, batch: Mapping[str, Any]) -> tuple[np.ndarray, ExecuTorchState]:
        logits, state = self._prefill_all(batch)
        return logits[:, -1], state

    def decode(self, state: ExecuTorchState, next_tokens: np.ndarray) -> tuple[np.ndarray, ExecuTorchState]:
        if state.generation != self._generation:
            raise RuntimeError("this decode state was superseded by a later prefill/forward: an ExecuTorch program "
                               "holds one KV cache, so finish one generation before starting the next")
        if state.length >= self.max_len:
            raise ValueError(f"the {self.max_len}-slot KV cache is full; prepare with a larger "
                             "options={'max_len': ...}")
        tokens = _numpy(next_tokens, np.int64).reshape(-1)
        if tokens.shape[0] != state.batch_size:
            raise ValueError(f"decode takes one token per row: {state.batch_size} rows, got {tokens.shape[0]}")
        embeds = self._pad_rows(self._table.lookup(tokens[:, None]))
        slot_valid = state.slot_valid.copy()
        slot_valid[:, state.length] = 1
        positions = state.next_position[:, None]
        logits = self._run(embeds, positions, masked_bias(slot_valid, state.length, 1, self.max_len), state.length)
        new = ExecuTorchState(length=state.length + 1, batch_size=state.batch_size, slot_valid=slot_valid,
                              next_position=state.next_position + 1, generation=state.generation)
        return logits[: state.batch_size, -1], new

    def stream(self, batch: Mapping[str, Any], settings: GenerationSettings) -> Iterator[np.ndarray]:
        """Yields each step's new tokens (B,); B must fit the exported batch size (``generate`` splits)."""
        return stream_tokens(self, batch, settings)

    def generate(self, batch: Mapping[str, Any], settings: GenerationSettings) -> np.ndarray:
        """New token ids (B, steps) int64; batches above the exported size run chunk by chunk."""
        rows = _numpy(batch["input_ids"], np.int64).shape[0]
        chunks = []
        for i in range(0, rows, self.batch_size):
            steps = list(self.stream(_rows(batch, i, i + self.batch_size), settings))
            n = min(self.batch_size, rows - i)
            chunks.append(np.stack(steps, axis=1) if steps else np.zeros((n, 0), dtype=np.int64))
        width = max(c.shape[1] for c in chunks)
        if any(c.shape[1] != width for c in chunks):  # a chunk that stopped early: fill with the pad token
            eos = eos_ids(settings.eos_token_id)
            pad = settings.pad_token_id if settings.pad_token_id is not None else (int(eos[0]) if eos.size else 0)
            chunks = [np.pad(c, ((0, 0), (0, width - c.shape[1])), constant_values=pad) for c in chunks]
        return np.concatenate(chunks, axis=0)


def _rows(batch: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Rows ``start:stop`` of a batch (one image per row; hybrid batches carry both pixel tensors)."""
    return {k: (v[start:stop] if v is not None and hasattr(v, "__getitem__") and getattr(v, "ndim", 0) > 0 else v)
            for k, v in batch.items()}
