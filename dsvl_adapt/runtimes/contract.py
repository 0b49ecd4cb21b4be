"""The runtime contract: what a backend (PyTorch, ONNX Runtime, OpenVINO, a third party's NPU SDK ...) supplies.

A backend is registered through the ``dsvl_adapt_register_runtimes`` hook, like every other part; the core's three
backends come through the same hook (:mod:`dsvl_adapt.builtins`). The ``quantize`` and ``export`` stages, the score
stage and the server know a backend only through this interface: they look it up by the hardware target's
``runtime`` name and never import a backend module. A backend module never imports a stage module.

The flow a stage drives::

    backend = registry.runtimes.get(target.runtime)
    reason = backend.available()                      # None, or why not (missing extra, unsupported CPU)
    artifact = backend.prepare(PrepareRequest(checkpoint_dir, out_dir, plan, calibration))
    model = backend.load(artifact.directory, threads=2)   # a GenerativeModel
    tokens = model.generate(batch, GenerationSettings(max_new_tokens=16, eos_token_id=eos))

Batches are dicts of numpy arrays (or torch tensors, converted) as :class:`dsvl_adapt.data.batches.BatchEncoder`
makes them: ``input_ids`` and ``attention_mask`` (B, T) with **left padding**, ``pixel_values`` (and
``high_res_pixel_values`` for the hybrid model). Outputs are numpy.

This module imports nothing heavy, so that ``dsvl-adapt plugins`` and ``dsvl-adapt targets`` stay fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import numpy as np

__all__ = [
    "Artifact",
    "Capabilities",
    "DecodeState",
    "GenerationSettings",
    "GenerativeModel",
    "Inventory",
    "EXPORT_OPTIONS",
    "InventoryFile",
    "MODEL_ROLES",
    "ROLES",
    "PrepareRequest",
    "QuantizationPlan",
    "RuntimeBackend",
]

#: Weight formats a backend may declare (``Capabilities.weight_formats``) and a plan may ask for.
WeightFormat = Literal["fp32", "bf16", "fp16", "int8", "int4", "mixed"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the CLI's ``targets`` command and the config validation read it."""

    weight_formats: tuple[str, ...] = ("fp32",)  # e.g. ("fp32", "int8", "int4")
    quantization_modes: tuple[str, ...] = ()  # e.g. ("dynamic", "static", "weight_only"), as quantize.mode says
    devices: tuple[str, ...] = ("cpu",)
    kv_cache: bool = False  # decode reuses cached keys/values (no prompt re-run)
    streaming: bool = True
    notes: str = ""


@dataclass(frozen=True)
class QuantizationPlan:
    """What to make of the checkpoint: ``weights`` ("fp32" = no quantization), the mode, and backend-specific
    options (validated by the backend; e.g. ``{"group_size": 128, "symmetric": False}``). ``per_layer`` maps
    module names to a weight format for mixed precision."""

    weights: str = "fp32"
    mode: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    per_layer: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PrepareRequest:
    """Everything :meth:`RuntimeBackend.prepare` needs: a Hugging Face checkpoint directory (config, weights,
    processor), where to write, the plan, and calibration batches from the vertical's own rows (an iterable of
    batches as above; may be empty when the plan needs none).

    ``model``: optionally the same checkpoint already in memory (a float32 torch module, as the pipeline holds it),
    which a backend may use instead of reading ``checkpoint_dir`` again; the result must be the same either way.
    ``scratch_dir``: where intermediate artifacts may be kept for the caller (e.g. the ONNX export an OpenVINO IR is
    converted from, which the scorecard's op checks read); None = a temporary directory, removed afterwards.
    ``release_model``: the caller hands ``model`` over and will not use it again, so a backend may free its weights
    as soon as it has what it needs (e.g. once exported), instead of holding them beside the runtime's own copy;
    a model the backend loaded itself it may always free. Nothing may be written outside ``out_dir`` and
    ``scratch_dir``."""

    checkpoint_dir: Path
    out_dir: Path
    plan: QuantizationPlan = QuantizationPlan()
    calibration: Iterable[Mapping[str, Any]] = ()
    threads: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # export options, see below
    model: Any = None
    scratch_dir: Path | None = None
    release_model: bool = False


#: Export options the core's stages put in :attr:`PrepareRequest.options` (a backend ignores what it has no use for):
#: ``opset`` (int or None: the exporter's default), ``graphs`` ("auto" | "full" | "split"), ``supported_ops`` (the
#: target's ONNX op list, or None), ``precision`` (an inference precision to pin, e.g. OpenVINO's "f32" | "bf16").
EXPORT_OPTIONS = ("opset", "graphs", "supported_ops", "precision")


@dataclass(frozen=True)
class InventoryFile:
    path: str  # relative to the artifact directory
    bytes: int
    role: str = ""  # one of ROLES


#: Roles of an artifact's files. ``graph``, ``weights`` and ``embedding`` files are the model's weight (what
#: :attr:`Inventory.model_bytes` sums); ``config``, ``processor`` and ``report`` files are bookkeeping.
ROLES = ("graph", "weights", "embedding", "config", "processor", "report", "other")
MODEL_ROLES = ("graph", "weights", "embedding")


@dataclass(frozen=True)
class Inventory:
    """What an artifact holds: files and bytes, and op/dtype counts where the format has them.

    ``ops``: op type -> count over every graph; ``dtypes``: weight (constant/initializer) dtype -> bytes, as the
    format names dtypes (ONNX: ``float``, ``int8`` ...; OpenVINO: ``f32``, ``i8``, ``u4`` ...). ``weights``: the
    weight format written (``fp32``, ``int8``, ``int4`` ...), ``label``: how the scorecard names this artifact
    (default ``<runtime>-<weights>``; e.g. ``openvino-int8-f32`` adds the pinned inference precision)."""

    files: tuple[InventoryFile, ...]
    ops: Mapping[str, int] = field(default_factory=dict)
    dtypes: Mapping[str, int] = field(default_factory=dict)  # weight dtype -> bytes
    weights: str = "fp32"
    label: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def model_bytes(self) -> int:
        """Bytes of the files that hold the model (graphs, weights, embedding tables), not its bookkeeping."""
        return sum(f.bytes for f in self.files if f.role in MODEL_ROLES)


@dataclass(frozen=True)
class Artifact:
    """A deployable artifact written by :meth:`RuntimeBackend.prepare`: its directory (self-contained: graphs,
    weights, processor files, a JSON record of how it was made), the backend's name and what was done.
    ``related`` names other directories :meth:`RuntimeBackend.prepare` wrote that a caller may use, by kind: the
    core reads ``"onnx"`` (an ONNX export directory whose inventory the scorecard's opset/op checks read)."""

    directory: Path
    runtime: str
    weights: str  # the weight format actually written ("fp32", "int8", ...)
    report: Mapping[str, Any] = field(default_factory=dict)  # JSON-able figures; the stage records them
    related: Mapping[str, Path] = field(default_factory=dict)  # other directories written, by kind (e.g. "onnx")


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate: greedy unless ``do_sample``; stop on any of ``eos_token_id`` or after ``max_new_tokens``.
    Rows that stopped are filled with ``pad_token_id`` (default: the first EOS id, else 0)."""

    max_new_tokens: int = 16
    eos_token_id: int | Sequence[int] | None = None
    pad_token_id: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


class DecodeState(Protocol):
    """The opaque state between decode steps (the KV cache, held however the backend holds it: tensors, ONNX
    Runtime buffers, an OpenVINO infer request's internal state). ``length`` is the number of positions cached;
    ``batch_size`` the rows."""

    length: int
    batch_size: int


@runtime_checkable
class GenerativeModel(Protocol):
    """A loaded artifact that scores and generates. ``prefill`` runs image encoding and the whole prompt once and
    returns the logits of the last position (B, vocab) with the state; ``decode`` feeds exactly one new token per
    row (B,) and returns the next logits (B, vocab) with the updated state (no prompt re-run)."""

    runtime: str  # the backend's name
    threads: int | None

    def forward(self, batch: Mapping[str, Any]) -> np.ndarray:
        """Logits (B, T, vocab) float32 for the whole batch (image + prompt, no cache)."""

    def prefill(self, batch: Mapping[str, Any]) -> tuple[np.ndarray, DecodeState]:
        ...

    def decode(self, state: DecodeState, next_tokens: np.ndarray) -> tuple[np.ndarray, DecodeState]:
        ...

    def generate(self, batch: Mapping[str, Any], settings: GenerationSettings) -> np.ndarray:
        """New token ids (B, steps) int64, ``steps <= settings.max_new_tokens``."""

    def stream(self, batch: Mapping[str, Any], settings: GenerationSettings) -> Iterator[np.ndarray]:
        """Yields each step's new tokens (B,) as they come."""


@runtime_checkable
class RuntimeBackend(Protocol):
    """One inference engine. ``name`` is what a :class:`~dsvl_adapt.schemas.HardwareTarget` names as its
    ``runtime``; ``description`` is one line for ``dsvl-adapt targets``."""

    name: str
    description: str

    def available(self) -> str | None:
        """None when usable here; otherwise why not, with the fix (``pip install "dsvl-adapt[openvino]"``)."""

    def capabilities(self) -> Capabilities:
        ...

    def prepare(self, request: PrepareRequest) -> Artifact:
        """Export (and quantize, per ``request.plan``) the checkpoint into ``request.out_dir``."""

    def load(self, directory: Path, *, threads: int | None = None) -> GenerativeModel:
        """Load an artifact this backend prepared (it recognises its own by :meth:`owns`)."""

    def owns(self, directory: Path) -> bool:
        """Whether ``directory`` is an artifact of this backend (e.g. it holds ``openvino.json``). Must be cheap
        (file names, a small JSON file) and must not claim another backend's artifacts."""

    def inventory(self, directory: Path) -> Inventory:
        """Files and bytes of an artifact this backend owns, with op and weight-dtype counts where the format
        has them."""
