"""Save and reload structurally pruned models whose shapes the config cannot describe.

SigLIP derives ``head_dim = hidden_size // num_attention_heads`` and sizes q/k/v/out to
``hidden_size``, so a vision tower with fewer heads at the same hidden size cannot be written
into its config, and plain ``from_pretrained`` refuses the checkpoint (the only switch that
"loads" it, ``ignore_mismatched_sizes=True``, silently re-initialises the pruned weights: never
use it). This module:

* ``save_structure(model, directory)`` writes ``dsvl_adapt_structure.json`` next to the
  checkpoint: every parameter whose shape differs from what the config builds, and the head
  counts of every attention module;
* ``save_pruned(model, directory)`` = ``model.save_pretrained`` + ``save_structure``;
* ``load_exact(directory, dtype=None)`` builds the model from its config (local files only),
  resizes each ``nn.Linear`` / ``nn.LayerNorm`` / ``nn.Embedding`` whose shape differs from
  the safetensors checkpoint, patches the attention head counts, and loads the weights with
  ``load_state_dict(strict=True)``. Only ``*.safetensors`` files are read;
* ``needs_exact_load(directory)`` says whether plain ``from_pretrained`` is not enough.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["STRUCTURE_FILE", "save_structure", "save_pruned", "load_exact", "needs_exact_load"]

STRUCTURE_FILE = "dsvl_adapt_structure.json"
_FORMAT = 1
_RESIZABLE = (nn.Linear, nn.LayerNorm, nn.Embedding)


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------

def _attention_heads(model: nn.Module) -> dict[str, dict[str, int]]:
    """Head counts of every module with q/k projections and a ``head_dim``, read from the weights."""
    heads: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        q, k = getattr(module, "q_proj", None), getattr(module, "k_proj", None)
        head_dim = getattr(module, "head_dim", None)
        if isinstance(q, nn.Linear) and isinstance(k, nn.Linear) and isinstance(head_dim, int) and head_dim > 0:
            heads[name] = {"num_heads": q.out_features // head_dim,
                           "num_key_value_heads": k.out_features // head_dim,
                           "head_dim": head_dim}
    return heads


def _reference_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Parameter shapes the saved config would build (on the meta device: no memory, no init)."""
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        ref = AutoModelForImageTextToText.from_config(_copy_config(model.config))
    return {n: tuple(p.shape) for n, p in ref.state_dict().items()}


def _copy_config(config: Any) -> Any:
    return type(config).from_dict(config.to_dict())


def save_structure(model: nn.Module, directory: str | os.PathLike) -> dict[str, Any]:
    """Write ``dsvl_adapt_structure.json`` into ``directory`` and return its content."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ref = _reference_shapes(model)
    overrides = {n: list(t.shape) for n, t in model.state_dict().items() if n in ref and tuple(t.shape) != ref[n]}
    structure = {
        "format": _FORMAT,
        "exact_load_required": bool(overrides),
        "shape_overrides": overrides,
        "attention_heads": _attention_heads(model),
    }
    (directory / STRUCTURE_FILE).write_text(json.dumps(structure, indent=1, sort_keys=True))
    return structure


def save_pruned(model: nn.Module, directory: str | os.PathLike, **save_kwargs: Any) -> bool:
    """``model.save_pretrained(directory)`` plus the structure sidecar; returns ``needs_exact_load``."""
    model.save_pretrained(directory, **save_kwargs)
    return bool(save_structure(model, directory)["exact_load_required"])


def _read_structure(directory: Path) -> dict[str, Any] | None:
    path = directory / STRUCTURE_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("format") != _FORMAT:
        raise ValueError(f"{path}: unsupported structure format {data.get('format')!r}")
    return data


def needs_exact_load(directory: str | os.PathLike) -> bool:
    """True when the checkpoint's shapes differ from what its config builds (use ``load_exact``)."""
    directory = Path(directory)
    structure = _read_structure(directory)
    if structure is not None:
        return bool(structure["exact_load_required"])
    # no sidecar: compare the safetensors header shapes with a meta-device build of the config
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    with torch.device("meta"):
        ref = AutoModelForImageTextToText.from_config(config)
    ref_shapes = {n: tuple(p.shape) for n, p in ref.state_dict().items()}
    return any(n in ref_shapes and ref_shapes[n] != s for n, s in _checkpoint_shapes(directory).items())


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / f for f in sorted(set(weight_map.values()))]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json "
                            "(load_exact reads safetensors checkpoints only)")


def _checkpoint_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in _safetensors_files(directory):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                shapes[key] = tuple(st.get_slice(key).get_shape())
    return shapes


def _checkpoint_dtype(directory: Path) -> torch.dtype | None:
    from safetensors import safe_open

    for f in _safetensors_files(directory):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                t = st.get_slice(key).get_dtype()
                dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "F64": torch.float64}.get(t)
                if dt is not None:
                    return dt
    return None


def _new_param(like: nn.Parameter, shape: tuple[int, ...]) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=like.dtype, device=like.device), requires_grad=like.requires_grad)


def _resize_module(name: str, module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Give ``module`` the checkpoint's shapes; returns whether anything changed."""
    changed = False
    for pname, param in list(module.named_parameters(recurse=False)):
        key = f"{name}.{pname}" if name else pname
        if key in shapes and tuple(param.shape) != shapes[key]:
            setattr(module, pname, _new_param(param, shapes[key]))
            changed = True
    if not changed:
        return False
    w = module.weight.shape
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = int(w[0]), int(w[1])
        if module.bias is not None and tuple(module.bias.shape) != (w[0],):
            raise ValueError(f"{name}: checkpoint bias shape {tuple(module.bias.shape)} does not fit weight {tuple(w)}")
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(int(s) for s in w)
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = int(w[0]), int(w[1])
    return True


def _patch_attention(model: nn.Module, structure: dict[str, Any] | None) -> None:
    """Set head-count attributes so that forward matches the resized projections."""
    modules = dict(model.named_modules())
    recorded = (structure or {}).get("attention_heads") or _attention_heads(model)
    for name, info in recorded.items():
        module = modules.get(name)
        if module is None:
            raise ValueError(f"{STRUCTURE_FILE}: attention module {name!r} does not exist in the model")
        head_dim = int(info["head_dim"])
        if getattr(module, "head_dim", head_dim) != head_dim:
            raise ValueError(f"{name}: head_dim {module.head_dim} in the model, {head_dim} in {STRUCTURE_FILE}")
        heads, kv = int(info["num_heads"]), int(info["num_key_value_heads"])
        if module.q_proj.out_features != heads * head_dim or module.k_proj.out_features != kv * head_dim:
            raise ValueError(f"{name}: projections ({module.q_proj.out_features}, {module.k_proj.out_features}) "
                             f"do not match {heads} heads / {kv} kv heads of {head_dim}")
        if hasattr(module, "num_heads"):
            module.num_heads = heads
        if hasattr(module, "num_key_value_heads"):
            module.num_key_value_heads = kv
        if hasattr(module, "num_key_value_groups"):
            module.num_key_value_groups = heads // kv
        if hasattr(module, "embed_dim") and hasattr(module, "out_proj"):
            # SigLIP keeps embed_dim = hidden size; it is only read at construction time
            module.embed_dim = int(module.out_proj.out_features)


def load_exact(directory: str | os.PathLike, dtype: torch.dtype | str | None = None) -> nn.Module:
    """Rebuild a (possibly shape-modified) DeepSeek-VL checkpoint exactly; returns the model in eval mode.

    ``dtype``: None keeps the checkpoint's floating dtype (like transformers 5's ``from_pretrained``).
    """
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

    directory = Path(directory)
    structure = _read_structure(directory)
    shapes = _checkpoint_shapes(directory)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = _checkpoint_dtype(directory) or torch.float32

    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    try:
        from transformers.initialization import no_init_weights  # weights are overwritten anyway
    except ImportError:  # pragma: no cover - other transformers layouts
        import contextlib

        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)

    modules = dict(model.named_modules())
    for name, module in modules.items():
        if isinstance(module, _RESIZABLE):
            _resize_module(name, module, shapes)
    for key, param in dict(model.named_parameters(remove_duplicate=False)).items():
        if key in shapes and tuple(param.shape) != shapes[key]:
            owner = modules[key.rsplit(".", 1)[0]] if "." in key else model
            raise ValueError(f"{directory}: {key} has shape {shapes[key]} in the checkpoint but "
                             f"{tuple(param.shape)} in the model, and {type(owner).__name__} cannot be resized")
    _patch_attention(model, structure)
    # init_weights (which ties lm_head to embed_tokens) was skipped above: tie now, after any resize
    if hasattr(model, "tie_weights"):
        model.tie_weights()

    # Read the checkpoint, cast each tensor to the dtype the config-built model chose for it, and hand the
    # tensors over (assign=True): the never-initialised placeholders are dropped untouched, so peak memory
    # stays near one copy of the weights.
    targets = dict(model.named_parameters(remove_duplicate=False))
    targets.update(dict(model.named_buffers(remove_duplicate=False)))
    state: dict[str, torch.Tensor] = {}
    for f in _safetensors_files(directory):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                t = st.get_tensor(key)
                ref = targets.get(key)
                if ref is not None and t.is_floating_point() and t.dtype != ref.dtype:
                    t = t.to(ref.dtype)
                state[key] = t
    # tied weights (lm_head <- embed_tokens) are stored once: fill the alias so the load can be strict
    by_id: dict[int, list[str]] = {}
    for key, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(key)
    for names in by_id.values():
        present = [n for n in names if n in state]
        for n in names:
            if n not in state and present:
                state[n] = state[present[0]]
    model.load_state_dict(state, strict=True, assign=True)
    del state
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # assign=True gave each alias its own Parameter: share them again
    model.eval()
    gen = directory / "generation_config.json"
    if gen.is_file():
        model.generation_config = GenerationConfig.from_pretrained(directory, local_files_only=True)
    return model
