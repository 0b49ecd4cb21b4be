"""Structural (channel / head) pruning of DeepSeek-VL models with torch-pruning.

What is pruned, in place:

* language model (Llama): the MLP intermediate channels of every decoder layer and whole
  attention heads. With grouped-query attention the key/value heads are kept and the same
  number of query heads is removed from every key/value group, so ``num_key_value_heads``
  still divides ``num_attention_heads`` and ``head_dim`` never changes. With plain
  multi-head attention (``num_key_value_heads == num_attention_heads``) query, key and value
  heads are removed together.
* SigLIP vision tower: MLP intermediate channels and whole attention heads.

Never touched: ``embed_tokens`` / ``lm_head`` (tied, they fix the LM width), the aligner, the
vision embeddings, the SAM high-resolution tower of the hybrid model, and every hidden size.

How torch-pruning is used: one ``DependencyGraph`` is traced through the whole model
(``use_cache=False``, logits as the output, ``apply_rotary_pos_emb`` made an identity
during tracing only, since whole heads are removed RoPE is unaffected). For every layer
the coupled group is asked for explicitly (MLP: ``gate_proj`` out-channels, which drags
``up_proj`` and ``down_proj`` along; heads: ``q_proj`` out-channels, which drags k/v/o
along), its importance is scored with a torch-pruning importance estimator, the channels
or heads to drop are chosen here (per layer, GQA-aware, ``round_to``) and the group is
pruned. Each group is checked to touch only the modules of its own block before anything
is cut.

After pruning the model config is rewritten (``intermediate_size``, ``num_attention_heads``,
``num_key_value_heads``, explicit ``head_dim``) so that ``save_pretrained`` +
``from_pretrained`` reloads exactly. Vision-head pruning cannot be written into a SigLIP
config (fewer heads at the same hidden size); such a model must be saved with
:func:`dsvl_adapt.models.exact_load.save_pruned` and reloaded with
:func:`dsvl_adapt.models.exact_load.load_exact` (the report says so in
``exact_load_required``).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from .configs import StructuralPruneConfig  # torch-free, so configs validate fast; re-exported here

__all__ = ["StructuralPruneConfig", "StructuralReport", "prune_structural"]

# --------------------------------------------------------------------------------------
# Config and report
# --------------------------------------------------------------------------------------

class StructuralReport(BaseModel):
    """What ``prune_structural`` did."""

    model_config = ConfigDict(extra="forbid")

    params_before: int = Field(description="Parameter count before pruning (tied weights counted once).")
    params_after: int = Field(description="Parameter count after pruning.")
    dims: dict[str, tuple[int, int]] = Field(
        description="Per-component [before, after] sizes, e.g. 'lm.intermediate_size': [128, 64].")
    importance: str = Field(description="Importance criterion used.")
    pruned: list[str] = Field(description="Components actually pruned (e.g. 'lm.mlp', 'vision.heads').")
    exact_load_required: bool = Field(
        description="True when plain from_pretrained cannot rebuild the pruned model (vision heads pruned): "
                    "save with exact_load.save_pruned and reload with exact_load.load_exact.")
    seconds: float = Field(description="Wall time of the whole call, including calibration passes.")

    @property
    def params_removed_fraction(self) -> float:
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0


# --------------------------------------------------------------------------------------
# Model anatomy
# --------------------------------------------------------------------------------------

class _Parts:
    """The modules of a DeepSeek-VL (or hybrid) model that pruning cares about."""

    def __init__(self, model: nn.Module):
        base = getattr(model, "model", None)
        lm = getattr(base, "language_model", None)
        vision = getattr(base, "vision_model", None)
        if lm is None or vision is None or not hasattr(lm, "layers") or not hasattr(vision, "encoder"):
            raise TypeError(
                f"prune_structural expects a DeepseekVLForConditionalGeneration or "
                f"DeepseekVLHybridForConditionalGeneration (model.model.language_model / .vision_model); "
                f"got {type(model).__name__}")
        self.model = model
        self.lm = lm
        self.vision = vision
        self.lm_layers = list(lm.layers)
        self.vision_layers = list(vision.encoder.layers)
        for i, layer in enumerate(self.lm_layers):
            for attr in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "self_attn.q_proj",
                         "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"):
                if not isinstance(_getattr_path(layer, attr), nn.Linear):
                    raise TypeError(f"language_model.layers.{i}.{attr} is not an nn.Linear "
                                    "(merge LoRA adapters with merge_and_unload() before pruning)")
        for i, layer in enumerate(self.vision_layers):
            for attr in ("mlp.fc1", "mlp.fc2", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                         "self_attn.out_proj"):
                if not isinstance(_getattr_path(layer, attr), nn.Linear):
                    raise TypeError(f"vision_model.encoder.layers.{i}.{attr} is not an nn.Linear "
                                    "(merge LoRA adapters with merge_and_unload() before pruning)")
        self.text_config = model.config.text_config
        self.vision_config = model.config.vision_config

    # current sizes, read from the modules (the truth), checked to be uniform across layers
    def lm_intermediate(self) -> int:
        return _uniform([l.mlp.gate_proj.out_features for l in self.lm_layers], "language-model intermediate size")

    def lm_head_dim(self) -> int:
        return int(self.lm_layers[0].self_attn.head_dim)

    def lm_heads(self) -> tuple[int, int]:
        hd = self.lm_head_dim()
        q = _uniform([l.self_attn.q_proj.out_features for l in self.lm_layers], "language-model q_proj width")
        kv = _uniform([l.self_attn.k_proj.out_features for l in self.lm_layers], "language-model k_proj width")
        return q // hd, kv // hd

    def vision_intermediate(self) -> int:
        return _uniform([l.mlp.fc1.out_features for l in self.vision_layers], "vision intermediate size")

    def vision_head_dim(self) -> int:
        return int(self.vision_layers[0].self_attn.head_dim)

    def vision_heads(self) -> int:
        q = _uniform([l.self_attn.q_proj.out_features for l in self.vision_layers], "vision q_proj width")
        return q // self.vision_head_dim()

    def dims(self) -> dict[str, int]:
        h, kv = self.lm_heads()
        return {
            "lm.intermediate_size": self.lm_intermediate(),
            "lm.num_attention_heads": h,
            "lm.num_key_value_heads": kv,
            "lm.head_dim": self.lm_head_dim(),
            "vision.intermediate_size": self.vision_intermediate(),
            "vision.num_attention_heads": self.vision_heads(),
            "vision.head_dim": self.vision_head_dim(),
        }


def _getattr_path(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name, None)
    return obj


def _uniform(values: list[int], what: str) -> int:
    if len(set(values)) != 1:
        raise ValueError(f"{what} differs between layers ({sorted(set(values))}); structural pruning needs "
                         "uniform layers because the config holds one value")
    return int(values[0])


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------
# Planning: how many channels / heads survive
# --------------------------------------------------------------------------------------

def _keep_channels(total: int, ratio: float, round_to: int, field: str) -> int:
    removed = math.floor(ratio * total + 1e-9)
    keep = total - removed
    keep -= keep % round_to
    if keep <= 0:
        raise ValueError(f"{field}={ratio} would leave no channels (of {total}, kept count rounded down to a "
                         f"multiple of round_to={round_to}); lower {field} or round_to")
    return keep


def _keep_heads(heads: int, kv_heads: int, ratio: float, field: str) -> tuple[int, int]:
    """(kept query heads, kept key/value heads)."""
    if heads % kv_heads:
        raise ValueError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    if kv_heads == heads:  # multi-head attention: q/k/v heads go together
        keep = heads - math.floor(ratio * heads + 1e-9)
        if keep <= 0:
            raise ValueError(f"{field}={ratio} would leave 0 of {heads} attention heads; lower {field}")
        return keep, keep
    rep = heads // kv_heads  # GQA: remove the same number of query heads from every kv group
    keep_per_group = rep - math.floor(ratio * rep + 1e-9)
    if keep_per_group <= 0:
        raise ValueError(f"{field}={ratio} would leave 0 query heads per key/value group "
                         f"({heads} query / {kv_heads} key-value heads); lower {field}")
    return keep_per_group * kv_heads, kv_heads


# --------------------------------------------------------------------------------------
# Tracing helpers
# --------------------------------------------------------------------------------------

def _graph_structure_only() -> Any:
    """Tracing needs the autograd graph's structure only: torch-pruning walks ``grad_fn`` links (reading a few
    integer attributes such as ``_saved_dim``) and never runs backward. The tensors autograd would save for a
    backward pass are dropped as the forward goes, so tracing a 1.3B model holds its weights, not its activations."""

    def unpack(_: None) -> Tensor:
        raise RuntimeError("the dependency graph was traced without saved activations: no backward through it")

    return torch.autograd.graph.saved_tensors_hooks(lambda tensor: None, unpack)


@contextlib.contextmanager
def _rope_identity(parts: _Parts):
    """Make ``apply_rotary_pos_emb`` an identity while torch-pruning traces the model.

    With RoPE in the graph the index mapping through rotate_half's slice/cat grows without end
    (the pruner never finishes). Whole heads are removed, so RoPE itself needs no change.
    """
    patched = []
    for layer in parts.lm_layers[:1]:
        mod = sys.modules.get(type(layer.self_attn).__module__)
        if mod is not None and hasattr(mod, "apply_rotary_pos_emb"):
            patched.append((mod, mod.apply_rotary_pos_emb))
    try:
        for mod, _ in patched:
            mod.apply_rotary_pos_emb = lambda q, k, cos, sin, *args, **kwargs: (q, k)
        yield
    finally:
        for mod, fn in patched:
            mod.apply_rotary_pos_emb = fn


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def _dummy_batch(model: nn.Module, parts: _Parts) -> dict[str, Tensor]:
    """A one-row batch with the right number of image tokens, for tracing only."""
    cfg = model.config
    vc = parts.vision_config
    n_img = (int(vc.image_size) // int(vc.patch_size)) ** 2
    vocab = int(parts.text_config.vocab_size)
    image_token_id = int(cfg.image_token_id)
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(0, vocab, (1, n_img + 4), generator=gen)
    text[text == image_token_id] = (image_token_id + 1) % vocab
    text[0, 2:2 + n_img] = image_token_id
    dtype = next(parts.vision.parameters()).dtype
    batch: dict[str, Tensor] = {
        "input_ids": text,
        "attention_mask": torch.ones_like(text),
        "pixel_values": torch.randn(1, 3, vc.image_size, vc.image_size, generator=gen).to(dtype),
    }
    hr = getattr(cfg, "high_res_vision_config", None)
    if hr is not None:
        batch["high_res_pixel_values"] = torch.randn(1, 3, hr.image_size, hr.image_size, generator=gen).to(dtype)
    return batch


def _logits(out: Any) -> Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


# --------------------------------------------------------------------------------------
# Importance
# --------------------------------------------------------------------------------------

def _make_importance(tp: Any, kind: str) -> Any:
    if kind == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.ActivationImportance()


def _calibrate(model: nn.Module, kind: str, calibration: Sequence[dict[str, Tensor]], n_batches: int,
               readers: list[nn.Linear], progress: Callable[[str], None]) -> None:
    """Fill what the data-driven importances read: ``.grad`` (taylor) or ``._importance`` (activation)."""
    device = _model_device(model)
    batches = list(calibration)[:n_batches]
    if kind == "taylor":
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for i, batch in enumerate(batches):
                if "labels" not in batch:
                    raise ValueError("importance='taylor' needs calibration batches with 'labels' "
                                     f"(batch {i} has keys {sorted(batch)})")
                out = model(**_to_device(batch, device), use_cache=False)
                if out.loss is None:
                    raise ValueError("importance='taylor': the model returned no loss for calibration batch "
                                     f"{i}; pass 'labels'")
                (out.loss / len(batches)).backward()
                progress(f"taylor calibration batch {i + 1}/{len(batches)}: loss {out.loss.item():.4f}")
        return

    # activation: accumulate sum |input| per input channel of the projections that read the pruned dims
    # (down_proj / o_proj / fc2 / out_proj); torch-pruning's ActivationImportance reads ``_importance``.
    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        x = inputs[0].detach()
        s = x.abs().reshape(-1, x.shape[-1]).float().sum(0)
        prev = getattr(module, "_importance", None)
        module._importance = s if prev is None else prev + s

    handles = [m.register_forward_hook(hook) for m in readers]
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                model(**_to_device({k: v for k, v in batch.items() if k != "labels"}, device), use_cache=False)
                progress(f"activation calibration batch {i + 1}/{len(batches)}")
    finally:
        for h in handles:
            h.remove()


def _clear_calibration(model: nn.Module, readers: list[nn.Linear]) -> None:
    for m in readers:
        if hasattr(m, "_importance"):
            del m._importance
    model.zero_grad(set_to_none=True)


def _group_modules(group: Any) -> set[nn.Module]:
    return {dep.target.module for dep, _ in group.items if isinstance(dep.target.module, nn.Module)
            and any(True for _ in dep.target.module.parameters(recurse=False))}


def _filtered(group: Any, drop: set[nn.Module]) -> Any:
    """A copy of ``group`` without the items that act on ``drop`` (keeps root index bookkeeping)."""
    from torch_pruning.dependency.group import Group

    g = Group()
    g._DG = group._DG
    g._group = [item for item in group.items if item.dep.target.module not in drop]
    return g


def _check_group(group: Any, allowed: set[nn.Module], where: str) -> None:
    extra = _group_modules(group) - allowed
    if extra:
        names = sorted(group._DG._module2name.get(m, type(m).__name__) for m in extra)
        raise RuntimeError(f"torch-pruning coupled {where} to modules outside its block: {names}; refusing to prune")


def _prune_group(group: Any, skip: set[nn.Module]) -> None:
    for dep, idxs in group.items:
        if dep.target.module in skip:
            continue
        dep(idxs)


# --------------------------------------------------------------------------------------
# The pruning steps
# --------------------------------------------------------------------------------------

class _Step:
    """One per-layer pruning decision: which group, how many units to keep, how to choose them."""

    def __init__(self, component: str, root: nn.Linear, members: set[nn.Module], unit: int, n_units: int,
                 keep: int, kv_groups: int = 1, skip: frozenset = frozenset(), reader: nn.Linear | None = None):
        self.component = component  # e.g. "lm.mlp"
        self.root = root            # the layer whose out-channels root the group
        self.members = members      # modules the group may touch
        self.unit = unit            # channels per unit (1 for MLP, head_dim for heads)
        self.n_units = n_units
        self.keep = keep            # units kept in total
        self.kv_groups = kv_groups  # GQA: choose keep/kv_groups heads inside each kv group
        self.skip = set(skip)       # members left untouched (GQA key/value projections)
        self.reader = reader        # projection reading the pruned dims (activation importance)
        self.prune_idxs: list[int] | None = None

    def choose(self, DG: Any, tp: Any, importance: Any) -> None:
        full = DG.get_pruning_group(self.root, tp.prune_linear_out_channels, list(range(self.n_units * self.unit)))
        _check_group(full, self.members, self.component)
        scored = _filtered(full, self.skip) if self.skip else full
        imp = importance(scored)
        if imp is None:
            raise RuntimeError(f"{self.component}: importance could not be computed for "
                               f"{DG._module2name.get(self.root)}")
        imp = imp.detach().float().cpu()
        imp = torch.nan_to_num(imp, nan=0.0)
        unit_imp = imp.view(self.n_units, self.unit).mean(1)
        per_group = self.n_units // self.kv_groups
        keep_per_group = self.keep // self.kv_groups
        kept: list[int] = []
        for g in range(self.kv_groups):
            local = unit_imp[g * per_group:(g + 1) * per_group]
            top = torch.topk(local, keep_per_group, largest=True, sorted=False).indices + g * per_group
            kept.extend(top.tolist())
        kept_set = set(kept)
        drop_units = [u for u in range(self.n_units) if u not in kept_set]
        self.prune_idxs = [u * self.unit + j for u in drop_units for j in range(self.unit)]

    def apply(self, DG: Any, tp: Any) -> None:
        if not self.prune_idxs:
            return
        group = DG.get_pruning_group(self.root, tp.prune_linear_out_channels, self.prune_idxs)
        _check_group(group, self.members, self.component)
        _prune_group(group, self.skip)


def _plan(parts: _Parts, cfg: StructuralPruneConfig) -> list[_Step]:
    steps: list[_Step] = []
    if cfg.lm_mlp_ratio > 0:
        total = parts.lm_intermediate()
        keep = _keep_channels(total, cfg.lm_mlp_ratio, cfg.round_to, "lm_mlp_ratio")
        if keep < total:
            for layer in parts.lm_layers:
                mlp = layer.mlp
                steps.append(_Step("lm.mlp", mlp.gate_proj, {mlp.gate_proj, mlp.up_proj, mlp.down_proj},
                                   1, total, keep, reader=mlp.down_proj))
    if cfg.lm_head_ratio > 0:
        heads, kv = parts.lm_heads()
        keep, _ = _keep_heads(heads, kv, cfg.lm_head_ratio, "lm_head_ratio")
        if keep < heads:
            gqa = kv != heads
            for layer in parts.lm_layers:
                a = layer.self_attn
                steps.append(_Step("lm.heads", a.q_proj, {a.q_proj, a.k_proj, a.v_proj, a.o_proj},
                                   parts.lm_head_dim(), heads, keep, kv_groups=kv if gqa else 1,
                                   skip=frozenset({a.k_proj, a.v_proj}) if gqa else frozenset(),
                                   reader=a.o_proj))
    if cfg.vision_mlp_ratio > 0:
        total = parts.vision_intermediate()
        keep = _keep_channels(total, cfg.vision_mlp_ratio, cfg.round_to, "vision_mlp_ratio")
        if keep < total:
            for layer in parts.vision_layers:
                mlp = layer.mlp
                steps.append(_Step("vision.mlp", mlp.fc1, {mlp.fc1, mlp.fc2}, 1, total, keep, reader=mlp.fc2))
    if cfg.vision_head_ratio > 0:
        heads = parts.vision_heads()
        keep, _ = _keep_heads(heads, heads, cfg.vision_head_ratio, "vision_head_ratio")
        if keep < heads:
            for layer in parts.vision_layers:
                a = layer.self_attn
                steps.append(_Step("vision.heads", a.q_proj, {a.q_proj, a.k_proj, a.v_proj, a.out_proj},
                                   parts.vision_head_dim(), heads, keep, reader=a.out_proj))
    return steps


def _drop_siglip_pooling_head(parts: _Parts, progress: Callable[[str], None]) -> None:
    """SigLIP's pooling head is unused by DeepSeek-VL and reads the vision intermediate size: remove it."""
    vision = parts.vision
    if getattr(vision, "use_head", False) or hasattr(vision, "head"):
        if hasattr(vision, "head"):
            del vision.head
        vision.use_head = False
        progress("removed SigLIP's unused pooling head (vision_use_head=False)")
    parts.vision_config.vision_use_head = False


def _sync_config(model: nn.Module, parts: _Parts) -> None:
    """Write the pruned sizes into the config(s) and the modules' cached attributes."""
    inter = parts.lm_intermediate()
    heads, kv = parts.lm_heads()
    head_dim = parts.lm_head_dim()
    text_configs = {id(c): c for c in (parts.text_config, getattr(parts.lm, "config", None)) if c is not None}
    for c in text_configs.values():
        c.intermediate_size = inter
        c.num_attention_heads = heads
        c.num_key_value_heads = kv
        c.head_dim = head_dim  # explicit, or it is recomputed as hidden // heads on reload
    for layer in parts.lm_layers:
        if hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = inter
        layer.self_attn.num_key_value_groups = heads // kv
        if hasattr(layer.self_attn, "num_heads"):
            layer.self_attn.num_heads = heads
        if hasattr(layer.self_attn, "num_key_value_heads"):
            layer.self_attn.num_key_value_heads = kv

    v_inter = parts.vision_intermediate()
    v_heads = parts.vision_heads()
    vision_configs = {id(c): c for c in (parts.vision_config, getattr(parts.vision, "config", None)) if c is not None}
    for c in vision_configs.values():
        c.intermediate_size = v_inter
        # num_attention_heads stays: SigLIP derives head_dim = hidden_size // num_attention_heads, and the
        # head count actually in the modules is recorded by exact_load.save_structure.
    for layer in parts.vision_layers:
        layer.self_attn.num_heads = v_heads


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------

def prune_structural(
    model: nn.Module,
    config: StructuralPruneConfig | dict[str, Any],
    calibration: Sequence[dict[str, Tensor]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> StructuralReport:
    """Prune ``model`` in place according to ``config`` and return what changed.

    ``calibration`` holds batches of forward kwargs (``input_ids``, ``attention_mask``,
    ``pixel_values``, ``labels``; hybrid: ``high_res_pixel_values``). It is required for
    ``importance='taylor'`` (which also needs ``labels``) and ``'activation'``; with
    ``'magnitude'`` the first batch, if given, is only used to trace the graph.
    Merge LoRA adapters (``merge_and_unload``) before pruning.
    """
    t0 = time.perf_counter()
    cfg = config if isinstance(config, StructuralPruneConfig) else StructuralPruneConfig.model_validate(config)
    say = progress or (lambda msg: None)
    parts = _Parts(model)
    params_before = _count_params(model)
    dims_before = parts.dims()

    if cfg.importance != "magnitude" and not calibration:
        raise ValueError(f"importance={cfg.importance!r} is data-driven and needs calibration batches; "
                         "pass calibration=[...] or use importance='magnitude'")

    if cfg.is_noop():
        say("all ratios are 0: nothing to prune")
        return StructuralReport(params_before=params_before, params_after=params_before,
                                dims={k: (v, v) for k, v in dims_before.items()}, importance=cfg.importance,
                                pruned=[], exact_load_required=False, seconds=time.perf_counter() - t0)

    steps = _plan(parts, cfg)  # raises before anything is touched
    if not steps:
        say("the ratios are too small to remove a whole unit anywhere: nothing to prune")

    import torch_pruning as tp

    was_training = model.training
    grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    readers = [s.reader for s in steps if s.reader is not None]
    try:
        if steps:
            if cfg.vision_mlp_ratio > 0 or cfg.vision_head_ratio > 0:
                _drop_siglip_pooling_head(parts, say)
            # frozen weights (e.g. after a LoRA merge) leave no grad_fn to trace: the pruner would remove nothing
            model.requires_grad_(True)
            model.eval()
            device = _model_device(model)
            if calibration:
                example = {k: v for k, v in calibration[0].items() if k != "labels"}
            else:
                example = _dummy_batch(model, parts)
            example = dict(_to_device(example, device), use_cache=False)

            say(f"tracing the dependency graph ({len(steps)} per-layer groups to prune)")
            with warnings.catch_warnings(), torch.enable_grad(), _rope_identity(parts), _graph_structure_only():
                warnings.simplefilter("ignore")  # "unwrapped parameters" notices for RMSNorm/SAM weights
                DG = tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                           output_transform=_logits)

            importance = _make_importance(tp, cfg.importance)
            if cfg.importance != "magnitude":
                _calibrate(model, cfg.importance, calibration, cfg.calibration_batches, readers, say)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for step in steps:  # score everything on the unpruned model first
                    step.choose(DG, tp, importance)
            _clear_calibration(model, readers)
            with torch.no_grad():
                for step in steps:
                    step.apply(DG, tp)
            _sync_config(model, parts)
    finally:
        _clear_calibration(model, readers)
        for name, p in model.named_parameters():
            p.requires_grad_(grad_flags.get(name, True))
        model.train(was_training)

    dims_after = parts.dims()
    pruned = sorted({s.component for s in steps})
    exact = dims_after["vision.num_attention_heads"] != int(parts.vision_config.num_attention_heads)
    report = StructuralReport(
        params_before=params_before,
        params_after=_count_params(model),
        dims={k: (dims_before[k], dims_after[k]) for k in dims_before},
        importance=cfg.importance,
        pruned=pruned,
        exact_load_required=exact,
        seconds=time.perf_counter() - t0,
    )
    say(f"pruned {', '.join(pruned) or 'nothing'}: {report.params_before:,} -> {report.params_after:,} params "
        f"in {report.seconds:.1f}s")
    return report
