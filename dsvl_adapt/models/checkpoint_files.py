"""What a checkpoint folder holds, read from its files without loading the model.

* :func:`check_model_type` reads ``config.json``'s ``model_type`` and refuses anything but
  DeepSeek-VL (``deepseek_vl``, ``deepseek_vl_hybrid``), naming what it found;
* :func:`weight_files` says which weight files a load reads (safetensors first; pickles only
  with ``allow_pickle``) and describes a folder that holds both kinds;
* :func:`weights_dtype` gives the floating dtype most of the weights are stored in, from the
  safetensors headers (or, for pickles, ``config.json``).

This module imports neither torch nor transformers, so the config validator can use it.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelLoadError

SUPPORTED_MODEL_TYPES = ("deepseek_vl", "deepseek_vl_hybrid")
SAFETENSORS_NAMES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
FLAG = "model.allow_pickle=true"

# safetensors header dtype codes -> torch dtype names
_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def read_model_type(directory: Path) -> str | None:
    """``model_type`` from ``directory/config.json``; None when the file is missing or unreadable."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("model_type") if isinstance(config, dict) else None
    return value if isinstance(value, str) else None


def architecture_problem(directory: Path) -> str | None:
    """Why ``directory`` is not a DeepSeek-VL checkpoint, or None when it is (or config.json cannot say)."""
    model_type = read_model_type(directory)
    if model_type is None or model_type in SUPPORTED_MODEL_TYPES:
        return None
    return (f"{directory} holds a {model_type!r} model (config.json model_type); dsvl-adapt adapts DeepSeek-VL "
            f"checkpoints, whose model_type is one of: {', '.join(SUPPORTED_MODEL_TYPES)} "
            "(DeepseekVLForConditionalGeneration, DeepseekVLHybridForConditionalGeneration)")


def check_model_type(directory: Path) -> None:
    """Raise :class:`ModelLoadError` when ``config.json`` names another architecture."""
    problem = architecture_problem(directory)
    if problem is not None:
        raise ModelLoadError(problem)


@dataclass
class WeightFiles:
    """The weight files a load reads, and what it leaves aside."""

    read: list[str]
    pickled: bool
    ignored: list[str] = field(default_factory=list)

    @property
    def note(self) -> str | None:
        """The sentence to show when the folder also holds files that are not read."""
        if not self.ignored:
            return None
        return (f"the folder holds both safetensors ({', '.join(self.read)}) and pickled weights "
                f"({', '.join(self.ignored)}); reading the safetensors, the pickled files are ignored")


def _shards(directory: Path, index_name: str) -> list[str]:
    try:
        weight_map = json.loads((directory / index_name).read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{directory / index_name} is not a readable weight index ({exc})") from None
    return [index_name, *sorted(set(weight_map.values()))]


def weight_files(directory: Path, allow_pickle: bool) -> WeightFiles:
    """Which weight files loading ``directory`` reads: safetensors when present, else pickles (only if allowed).

    Raises :class:`ModelLoadError` naming the files and the fix when nothing safe can be read.
    """
    directory = Path(directory)
    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    pickled = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if "model.safetensors.index.json" in names:
        read = _shards(directory, "model.safetensors.index.json")
    elif "model.safetensors" in names:
        read = ["model.safetensors"]
    else:
        read = []
    if read:
        return WeightFiles(read=read, pickled=False, ignored=pickled)
    loadable = [n for n in PICKLE_NAMES if n in names]
    if pickled and not allow_pickle:
        raise ModelLoadError(
            f"{directory} holds only pickled weights ({', '.join(pickled)}). Pickles can run arbitrary code "
            f"when loaded, so they are refused by default. Convert them to safetensors, or, if you trust the "
            f"file, set {FLAG}."
        )
    if loadable:
        index = "pytorch_model.bin.index.json"
        return WeightFiles(read=_shards(directory, index) if index in loadable else ["pytorch_model.bin"],
                           pickled=True)
    other = [n for n in names if n.endswith(".safetensors")] + pickled
    found = f"; found {', '.join(other)}, which transformers does not read as model weights" if other else ""
    raise ModelLoadError(f"{directory} holds no model weights (expected model.safetensors, "
                         f"model.safetensors.index.json or, with {FLAG}, pytorch_model.bin){found}")


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def weights_dtype(directory: Path, files: WeightFiles | None = None) -> str | None:
    """The floating dtype (``float32``, ``bfloat16``, ...) holding most weight elements; None if unknown.

    Read from the safetensors headers; pickled weights fall back to ``config.json``'s ``dtype`` /
    ``torch_dtype``.
    """
    directory = Path(directory)
    files = files or weight_files(directory, allow_pickle=True)
    if not files.pickled:
        elements: Counter[str] = Counter()
        for name in files.read:
            if not name.endswith(".safetensors"):
                continue
            for key, info in _safetensors_header(directory / name).items():
                dtype = _SAFETENSORS_DTYPES.get(info.get("dtype")) if key != "__metadata__" else None
                if dtype is not None:
                    count = 1
                    for size in info.get("shape", []):
                        count *= int(size)
                    elements[dtype] += count
        if elements:
            return elements.most_common(1)[0][0]
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("dtype") or config.get("torch_dtype")
    return value if value in _SAFETENSORS_DTYPES.values() else None


def is_checkpoint_dir(directory: str | Path) -> bool:
    """Whether ``directory`` looks like a Hugging Face checkpoint the pipeline writes or reads: ``config.json`` with
    safetensors weights (or a torch-quantized ``quantization.json``, or pickled weights). Cheap: names only."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        return False
    names = {p.name for p in directory.iterdir() if p.is_file()}
    return bool(names & {"model.safetensors", "model.safetensors.index.json", "quantization.json"}) or any(
        n.endswith(PICKLE_SUFFIXES) and n.startswith("pytorch_model") for n in names)
