"""Resumable training checkpoints in safetensors + JSON: never pickles.

A checkpoint holds everything the rest of a training phase depends on, so that a run killed at
any step and resumed ends with byte-identical weights:

- ``model.safetensors``: the trained module's whole state (tied tensors stored once);
- ``extra.safetensors``: extra trained modules (the distillation projections), if any;
- ``optimizer.safetensors``: the optimizer's per-parameter tensors (AdamW's moments and step
  counts), keyed ``<parameter index>.<name>``; its structure (parameter groups, hyper-parameters)
  is in ``complete.json``;
- ``best.safetensors``: the best weights so far (early stopping), unless they are the model's
  own at this step (``"weights": "model"`` in the record);
- ``rng-<rank>.safetensors`` / ``rng-<rank>.json``: each process's torch (and CUDA) generator
  states, and its Python and NumPy generator states;
- ``complete.json``, written last (its presence marks a complete checkpoint): the step, the loss
  history, the best validation loss, its step and the count of evaluations without improvement,
  the data order (batches are a pure function of seed and step), the precision the phase runs in,
  the learning-rate scheduler's and the loss scaler's state.

A checkpoint is written to ``.step-N.partial/`` and renamed to ``step-N/`` when complete; older
ones are then removed. Reading uses ``safetensors`` and ``json`` only, so a run folder copied from
elsewhere cannot run code on resume.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FORMAT = "dsvl-adapt/training-checkpoint"
FORMAT_VERSION = 1
MARKER = "complete.json"
MODEL_FILE = "model.safetensors"
EXTRA_FILE = "extra.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
BEST_FILE = "best.safetensors"


@dataclass
class LoopState:
    """The training loop's own state besides the weights and the optimizer."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_loss: float | None = None  # best validation loss so far (early stopping); None before the first
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the best one without improvement
    best_weights: dict[str, torch.Tensor] | None = None  # a copy of the model's state at best_step


@dataclass
class Restored:
    """What :func:`read_checkpoint` read besides the tensors it loaded into the modules."""

    loop: LoopState
    precision: dict[str, Any]
    data_order: dict[str, Any]


# -- tensors -------------------------------------------------------------------------------
def _view_key(tensor: torch.Tensor) -> tuple[Any, ...]:
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tuple(tensor.stride()), tensor.dtype)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module``'s state; tied tensors (one storage, two names) stay one copy."""
    copies: dict[tuple[Any, ...], torch.Tensor] = {}
    out = {}
    for name, tensor in module.state_dict().items():
        key = _view_key(tensor)
        if key not in copies:
            copies[key] = tensor.detach().clone()
        out[name] = copies[key]
    return out


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``tensors`` with safetensors; names that alias another (tied weights) are stored once, by reference."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_view: dict[tuple[Any, ...], str] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        key = _view_key(tensor)
        if key in by_view:
            aliases[name] = by_view[key]
            continue
        by_view[key] = name
        pointer = tensor.untyped_storage().data_ptr()
        shared = pointer in storages and tensor.numel() > 0
        storages.add(pointer)
        tensor = tensor.detach()
        kept[name] = tensor.clone() if shared or not tensor.is_contiguous() else tensor
    save_file({k: v.cpu() if v.device.type != "cpu" else v for k, v in kept.items()}, str(path),
              metadata={"aliases": json.dumps(aliases)})


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read what :func:`save_tensors` wrote, aliases included."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        aliases = json.loads((handle.metadata() or {}).get("aliases", "{}"))
    tensors = load_file(str(path))
    for name, target in aliases.items():
        tensors[name] = tensors[target]
    return tensors


# -- optimizer -----------------------------------------------------------------------------
def optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's state split into tensors (for safetensors) and a JSON-able structure."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                plain.setdefault(str(index), {})[name] = value
    groups = []
    for g, group in enumerate(state["param_groups"]):
        entry = {}
        for name, value in group.items():
            if isinstance(value, torch.Tensor):
                tensors[f"group.{g}.{name}"] = value
                entry[name] = {"tensor": f"group.{g}.{name}"}
            else:
                entry[name] = list(value) if isinstance(value, tuple) else value
        groups.append(entry)
    return tensors, {"param_groups": groups, "state": plain}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                   structure: dict[str, Any]) -> None:
    """Restore what :func:`optimizer_parts` split; tuples (AdamW's ``betas``) come back as tuples."""
    current = optimizer.state_dict()["param_groups"]
    groups = []
    for g, entry in enumerate(structure["param_groups"]):
        group = {}
        for name, value in entry.items():
            if isinstance(value, dict) and set(value) == {"tensor"}:
                value = tensors[value["tensor"]]
            elif isinstance(value, list) and g < len(current) and isinstance(current[g].get(name), tuple):
                value = tuple(value)
            group[name] = value
        groups.append(group)
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        index, _, name = key.partition(".")
        if index != "group":
            state.setdefault(int(index), {})[name] = tensor
    for index, values in structure["state"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# -- random number generators ----------------------------------------------------------------
def rng_parts() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's generator states: torch's (and CUDA's) as tensors, Python's and NumPy's as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return tensors, {"python": [version, list(internal), gauss],
                     "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)]}


def restore_rng(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


# -- checkpoints ---------------------------------------------------------------------------
def latest_checkpoint(directory: Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint in ``directory`` (``.step-N.partial`` being written never counts)."""
    found = []
    for path in Path(directory).glob("step-*"):
        if (path / MARKER).is_file():
            found.append((int(path.name.split("-")[1]), path))
    return max(found) if found else None


def is_current_format(path: Path) -> bool:
    """Whether the checkpoint was written in this format (earlier versions used pickles, which are never read)."""
    try:
        record = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return record.get("format") == FORMAT and record.get("version") == FORMAT_VERSION


def write_checkpoint(directory: Path, loop: LoopState, *, model: torch.nn.Module,
                     extra_modules: Sequence[torch.nn.Module], optimizer: torch.optim.Optimizer,
                     scheduler: Any, scaler: Any, precision: dict[str, Any], data_order: dict[str, Any],
                     rank: int, world_size: int, barrier: Callable[[], None]) -> Path:
    """Write checkpoint ``step-<loop.step>`` (every process calls this; the main one writes the shared files)."""
    directory = Path(directory)
    final = directory / f"step-{loop.step}"
    partial = directory / f".step-{loop.step}.partial"
    main = rank == 0
    if main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    barrier()
    rng_tensors, rng_plain = rng_parts()
    save_file(rng_tensors, str(partial / f"rng-{rank}.safetensors"))
    (partial / f"rng-{rank}.json").write_text(json.dumps(rng_plain))
    barrier()
    if main:
        save_tensors(model.state_dict(), partial / MODEL_FILE)
        if extra_modules:
            extra = {f"{i}.{k}": v for i, module in enumerate(extra_modules) for k, v in module.state_dict().items()}
            save_tensors(extra, partial / EXTRA_FILE)
        optimizer_tensors, optimizer_structure = optimizer_parts(optimizer)
        save_tensors(optimizer_tensors, partial / OPTIMIZER_FILE)
        best_weights = None
        if loop.best_weights is not None:
            best_weights = "model" if loop.best_step == loop.step else BEST_FILE
            if best_weights == BEST_FILE:
                save_tensors(loop.best_weights, partial / BEST_FILE)
        record = {
            "format": FORMAT, "version": FORMAT_VERSION, "step": loop.step, "history": loop.history,
            "best": {"loss": loop.best_loss, "step": loop.best_step, "bad_evals": loop.bad_evals,
                     "weights": best_weights},
            "data_order": data_order, "precision": precision, "world_size": world_size,
            "optimizer": optimizer_structure, "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
        }
        (partial / MARKER).write_text(json.dumps(record, indent=1))
        partial.rename(final)
        for old in directory.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def read_checkpoint(path: Path, *, model: torch.nn.Module, extra_modules: Sequence[torch.nn.Module],
                    optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, rank: int) -> Restored:
    """Load checkpoint ``path`` into the modules, optimizer, scheduler, scaler and generators; return the rest."""
    path = Path(path)
    record = json.loads((path / MARKER).read_text())
    model.load_state_dict(load_tensors(path / MODEL_FILE), strict=True)
    if extra_modules:
        extra = load_tensors(path / EXTRA_FILE)
        for i, module in enumerate(extra_modules):
            prefix = f"{i}."
            module.load_state_dict({k[len(prefix):]: v for k, v in extra.items() if k.startswith(prefix)},
                                   strict=True)
    load_optimizer(optimizer, load_tensors(path / OPTIMIZER_FILE), record["optimizer"])
    scheduler.load_state_dict(record["scheduler"])
    if scaler is not None and record["scaler"] is not None:
        scaler.load_state_dict(record["scaler"])
    own = path / f"rng-{rank}.safetensors"
    if not own.is_file():  # resumed with more processes than wrote it: the extra ones continue from rank 0's
        own = path / "rng-0.safetensors"
    restore_rng(load_file(str(own)), json.loads(own.with_suffix(".json").read_text()))
    best = record["best"]
    weights = None
    if best["weights"] == "model":
        weights = snapshot(model)
    elif best["weights"] == BEST_FILE:
        weights = load_tensors(path / BEST_FILE)
    loop = LoopState(step=record["step"], history=record["history"], best_loss=best["loss"],
                     best_step=best["step"], bad_evals=best["bad_evals"], best_weights=weights)
    return Restored(loop, record["precision"], record["data_order"])
