"""The token-embedding table that split exports look ``input_ids`` up in, fp32 or int8 per row.

A split export (``vision`` + ``lm`` on ``inputs_embeds``) leaves the embedding lookup to the caller, so the table is
a file beside the graphs. In a language model it is one of the largest tensors (32000 x 1024 fp32 = 125 MiB in
``reference-base``, more than the pruned LM's int8 layers), and a lookup needs no matmul kernel, so it quantizes
without runtime support:

* ``embed_tokens.npy``       (vocab, hidden) float32 - what the export writes;
* ``embed_tokens.int8.npz``  ``weight`` (vocab, hidden) int8 and ``scale`` (vocab,) float32: symmetric per-row int8,
  ``row = weight[t] * scale[t]`` with ``scale = max|row| / 127``. A looked-up row is off by at most ``scale / 2``
  per element (half a quantization step), the same scheme as per-channel int8 weights of a Linear layer.

* ``lm.onnx#<name>``         no file of its own: with tied embeddings the quantized ``lm_head`` of the LM graph
  already holds the table, transposed - a (hidden, vocab) int8 initializer ``<name>_quantized`` with per-vocab
  ``<name>_scale`` and ``<name>_zero_point``, which ONNX Runtime's int8 quantizers write. Per-column int8 of
  ``lm_head.weight.T`` is per-row int8 of the embedding, so the lookup reads it instead of a second copy
  (:func:`find_tied_table` proves the match element by element before the reference is written).

:func:`load_embedding_table` opens any of them; :meth:`EmbeddingTable.lookup` returns float32 rows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

__all__ = [
    "FP32_FILE",
    "INT8_FILE",
    "EmbeddingTable",
    "copy_embedding_table",
    "find_tied_table",
    "load_embedding_table",
    "table_bytes",
    "quantize_rows_int8",
    "table_dtype",
    "write_int8_table",
]

FP32_FILE = "embed_tokens.npy"
INT8_FILE = "embed_tokens.int8.npz"


class EmbeddingTable:
    """A (vocab, hidden) table: float32, or int8 with one float32 scale (and optionally a zero point) per row."""

    def __init__(self, weight: np.ndarray, scale: np.ndarray | None = None, zero_point: np.ndarray | None = None):
        if weight.ndim != 2:
            raise ValueError(f"an embedding table is (vocab, hidden), got shape {weight.shape}")
        if scale is not None and scale.shape != (weight.shape[0],):
            raise ValueError(f"int8 table: {weight.shape[0]} rows but {scale.shape} scales")
        if zero_point is not None and (scale is None or zero_point.shape != scale.shape):
            raise ValueError("a zero point needs a scale of the same shape")
        self.weight = weight
        self.scale = scale
        self.zero_point = None if zero_point is None or not zero_point.any() else zero_point

    @property
    def dtype(self) -> str:
        return "fp32" if self.scale is None else "int8"

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape  # type: ignore[return-value]

    def lookup(self, input_ids: np.ndarray) -> np.ndarray:
        """float32 rows for ``input_ids`` (any shape): ``(*input_ids.shape, hidden)``."""
        ids = np.asarray(input_ids)
        rows = np.asarray(self.weight[ids], dtype=np.float32)
        if self.zero_point is not None:
            rows -= self.zero_point[ids][..., None]
        if self.scale is not None:
            rows *= self.scale[ids][..., None]
        return rows

    def dequantized(self) -> np.ndarray:
        """The whole table as float32."""
        return self.lookup(np.arange(self.shape[0]))


def quantize_rows_int8(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: ``(weight int8, scale float32)`` with ``table ~= weight * scale[:, None]``."""
    table = np.asarray(table, dtype=np.float32)
    peak = np.abs(table).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    weight = np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8)
    return weight, scale


def write_int8_table(source: str | Path, directory: str | Path) -> str:
    """Quantize the fp32 table file ``source`` per row into ``directory / INT8_FILE``; returns the file name."""
    weight, scale = quantize_rows_int8(np.load(source))
    np.savez(Path(directory) / INT8_FILE, weight=weight, scale=scale)
    return INT8_FILE


def table_dtype(file_name: str | None) -> str | None:
    """``int8``, ``fp32``, or None when there is no table (a full graph embeds inside)."""
    if file_name is None:
        return None
    return "int8" if file_name == INT8_FILE or "#" in file_name else "fp32"


def table_bytes(directory: str | Path, file_name: str | None) -> int:
    """Bytes the table adds to an export directory (0 when it lives in a graph already counted)."""
    if file_name is None or "#" in file_name:
        return 0
    return (Path(directory) / file_name).stat().st_size


def _initializers(graph_path: Path) -> dict[str, object]:
    import onnx

    return {t.name: t for t in onnx.load(str(graph_path), load_external_data=False).graph.initializer}


def _graph_table(graph_path: Path, name: str, initializers: dict[str, object] | None = None) -> EmbeddingTable:
    from onnx import numpy_helper

    inits = initializers if initializers is not None else _initializers(graph_path)
    missing = [f"{name}{suffix}" for suffix in ("_quantized", "_scale", "_zero_point")
               if f"{name}{suffix}" not in inits]
    if missing:
        raise ValueError(f"{graph_path} has no initializer {missing[0]!r}: the embedding reference "
                         f"'{graph_path.name}#{name}' does not match this graph; export and quantize again")

    def array(suffix: str) -> np.ndarray:
        return numpy_helper.to_array(inits[f"{name}{suffix}"], base_dir=str(graph_path.parent))

    return EmbeddingTable(array("_quantized").T, array("_scale").astype(np.float32),
                          array("_zero_point").astype(np.float32))


def find_tied_table(graph_path: str | Path, table: np.ndarray) -> str | None:
    """``<graph file>#<name>`` when the quantized graph holds ``table`` (vocab, hidden) as a (hidden, vocab) int8
    initializer with per-vocab scales that reproduces every element within half a full-range int8 step of its row;
    else None."""
    graph_path = Path(graph_path)
    inits = _initializers(graph_path)
    vocab, hidden = table.shape
    for full_name, tensor in inits.items():
        if not full_name.endswith("_quantized") or list(tensor.dims) != [hidden, vocab]:  # type: ignore[attr-defined]
            continue
        name = full_name[: -len("_quantized")]
        try:
            candidate = _graph_table(graph_path, name, inits)
        except ValueError:
            continue
        if candidate.scale is None or candidate.scale.shape != (vocab,):
            continue
        # Within half a full-range int8 step of each row (what a per-row int8 table guarantees): a 7-bit lm_head
        # (``reduce_range``) reproduces the table only within its own, twice as coarse, step and is not taken.
        int8_step = np.abs(table).max(axis=1) / 127
        error = np.abs(candidate.dequantized() - table)
        if np.all(error <= int8_step[:, None] * 0.5 + 1e-6 * np.abs(table).max()):
            return f"{graph_path.name}#{name}"
    return None


def copy_embedding_table(source_dir: str | Path, file_name: str | None, destination: str | Path,
                         dtype: str) -> str | None:
    """Bring an export's table (``source_dir / file_name``) into ``destination`` as ``dtype`` (``fp32`` or ``int8``);
    returns the new file name, None when the export has no table. An int8 source stays int8 (no precision to
    restore)."""
    if file_name is None:
        return None
    if dtype not in ("fp32", "int8"):
        raise ValueError(f"embedding table dtype must be 'fp32' or 'int8', got {dtype!r}")
    source = Path(source_dir) / file_name
    if dtype == "int8" and table_dtype(file_name) == "fp32":
        return write_int8_table(source, destination)
    shutil.copyfile(source, Path(destination) / file_name)
    return file_name


def load_embedding_table(path: str | Path) -> EmbeddingTable:
    """Open ``embed_tokens.npy`` (memory-mapped), ``embed_tokens.int8.npz``, or a reference into a quantized graph
    (``<dir>/lm.onnx#<name>``, see the module docstring)."""
    path = Path(path)
    if "#" in path.name:
        file_name, name = path.name.split("#", 1)
        return _graph_table(path.with_name(file_name), name)
    if not path.is_file():
        raise FileNotFoundError(f"embedding table {path} is missing: the export directory is incomplete; "
                                "export the model again")
    if path.suffix == ".npz":
        with np.load(path) as data:
            missing = {"weight", "scale"} - set(data.files)
            if missing:
                raise ValueError(f"{path} is not an int8 embedding table: it lacks {sorted(missing)}")
            return EmbeddingTable(data["weight"], data["scale"])
    return EmbeddingTable(np.load(path, mmap_mode="r"))
