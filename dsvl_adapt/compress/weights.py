"""Unstructured and 2:4 weight pruning for DeepSeek-VL models.

Masks are computed here and applied with :mod:`torch.nn.utils.prune` (``l1_unstructured``,
``global_unstructured`` or ``custom_from_mask``), then made permanent with ``prune.remove``:
afterwards every pruned ``nn.Linear`` holds a plain ``weight`` Parameter (the same object as
before, so ties and optimizers keep working) with zeros in it, and no pruning hooks remain.

Methods
-------
``magnitude``  smallest ``|W|`` go; ``scope="layer"`` per matrix, ``scope="global"`` one threshold
               over every selected matrix (layers then end up at very different sparsities).
``wanda``      score ``|W_ij| * ||X_j||_2`` (``X_j``: input channel ``j`` over every calibration
               token), compared within each output row (Sun et al., 2023). Needs calibration batches.
``2:4``        in every group of 4 consecutive input weights of a row keep the 2 highest scores
               (``score="magnitude"`` or ``"wanda"``); always 50 %.

The token embedding and the (tied) ``lm_head`` are never pruned, whatever ``include`` says.
Zeros in a dense tensor buy no speed and no smaller file: see :data:`RUNTIME_NOTE` and
:func:`dsvl_adapt.compress.sparse_format.save_sparse`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import nn
from torch.nn.utils import prune

from dsvl_adapt.compress.configs import DEFAULT_INCLUDE, WeightPruneConfig
from dsvl_adapt.compress.sparse_format import sparsity_of

__all__ = [
    "DEFAULT_INCLUDE",
    "RUNTIME_NOTE",
    "WeightPruneConfig",
    "WeightReport",
    "prune_weights",
    "select_prunable",
]

#: What zeros buy at inference time. Figures: ``benchmarks/sparse_matmul.py`` (1024x4096 weight,
#: 96 tokens, 1 CPU thread, torch 2.13 CSR vs dense, median of 15 alternating pairs).
RUNTIME_NOTE = (
    "Pruned weights are still stored and multiplied as dense tensors: no speedup and no smaller "
    "checkpoint unless it is saved with save_sparse (bitmask + nonzeros, smaller on disk from a few "
    "percent sparsity). 2:4 semi-structured kernels are CUDA-only (Ampere or newer); on CPU "
    "to_sparse_semi_structured fails. On CPU, torch CSR matmul is slower than dense below roughly "
    "80-90% sparsity (measured, 1024x4096 weight, 96 tokens, 1 thread: CSR runs at {csr50} dense speed "
    "at 50%, {csr75} at 75%, {csr90} at 90%); do not expect a CPU speedup from pruning alone."
)
_CSR_FIGURES = {"csr50": "0.34x", "csr75": "0.71x", "csr90": "1.8x"}


class WeightReport(BaseModel):
    """What :func:`prune_weights` did. Sparsities are measured on the weights afterwards (zeros / size)."""

    method: str
    scope: str
    score: str
    target_sparsity: float
    overall_sparsity: float = Field(description="zeros / weights over the pruned layers")
    per_layer: dict[str, float]
    pruned_layers: int
    zero_params: int
    total_params: int = Field(description="weights in the pruned layers")
    calibration_batches_used: int = 0
    protected: list[str] = Field(default_factory=list,
                                 description="matched by include but never pruned (embeddings, tied lm_head)")
    runtime_note: str


def _protected_params(model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        fn = getattr(model, getter, None)
        if fn is None:
            continue
        try:
            mod = fn()
        except (NotImplementedError, AttributeError):
            continue
        if mod is not None and getattr(mod, "weight", None) is not None:
            ids.add(id(mod.weight))
    return ids


def select_prunable(model: nn.Module, config: WeightPruneConfig) -> tuple[dict[str, nn.Linear], list[str]]:
    """The ``nn.Linear`` modules ``config`` selects, by path, and the selected paths refused because
    they hold (or share) the token embedding / lm_head weight."""
    include = [re.compile(p) for p in config.include]
    exclude = [re.compile(p) for p in config.exclude]
    protected_ids = _protected_params(model)
    chosen: dict[str, nn.Linear] = {}
    refused: list[str] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if not any(p.search(name) for p in include) or any(p.search(name) for p in exclude):
            continue
        if (name.split(".")[-1] in ("lm_head", "embed_tokens") or id(module.weight) in protected_ids):
            refused.append(name)
            continue
        if id(module.weight) in seen:  # a weight shared by two selected modules is pruned once
            continue
        seen.add(id(module.weight))
        chosen[name] = module
    return chosen, refused


def _forward_kwargs(model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    params = inspect.signature(model.forward).parameters
    named = {k for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if k == "labels" or k not in named:
            continue
        out[k] = v.to(device) if isinstance(v, torch.Tensor) else v
    if "use_cache" in named:
        out["use_cache"] = False
    return out


@torch.no_grad()
def _input_channel_norms(model: nn.Module, targets: dict[str, nn.Linear], calibration: Any,
                         max_batches: int) -> tuple[dict[str, torch.Tensor], int]:
    """``||X_j||_2`` per input channel of each target, over every token of the calibration batches."""
    if isinstance(calibration, Mapping):
        calibration = [calibration]
    sq = {name: torch.zeros(m.in_features, dtype=torch.float64, device=m.weight.device)
          for name, m in targets.items()}
    seen = dict.fromkeys(targets, 0)

    def make_hook(name: str):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs.get("input")
            x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
            sq[name] += x.pow(2).sum(0)
            seen[name] += x.shape[0]
        return hook

    handles = [m.register_forward_hook(make_hook(n), with_kwargs=True) for n, m in targets.items()]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    used = 0
    try:
        for batch in calibration:
            if used >= max_batches:
                break
            model(**_forward_kwargs(model, batch, device))
            used += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if used == 0:
        raise ValueError("method/score 'wanda' needs calibration batches, but calibration yielded none")
    silent = [n for n, c in seen.items() if c == 0]
    if silent:
        raise ValueError(
            f"calibration batches never reached {len(silent)} selected layer(s), e.g. {silent[:3]}; for hybrid "
            "models pass high_res_pixel_values, or drop those layers with exclude")
    return {n: s.sqrt().to(torch.float32) for n, s in sq.items()}, used


def _rowwise_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the lowest scores of each row; exactly ``round(sparsity * numel)`` in the matrix.

    Every row loses ``k // rows`` weights; the ``k % rows`` leftover weights come from the rows whose
    next candidate scores lowest, so the layer total is exact and rows differ by at most one.
    """
    rows, cols = score.shape
    k = round(sparsity * score.numel())
    base, extra = divmod(k, rows)
    order = torch.sort(score, dim=1, stable=True).indices
    mask = torch.ones_like(score, dtype=torch.bool)
    if base:
        mask.scatter_(1, order[:, :base], False)
    if extra:
        nxt = order[:, base]
        cand = score.gather(1, nxt[:, None]).squeeze(1)
        pick = torch.sort(cand, stable=True).indices[:extra]
        mask[pick, nxt[pick]] = False
    return mask


def _n_m_mask(score: torch.Tensor, n_keep: int = 2, m: int = 4) -> torch.Tensor:
    rows, cols = score.shape
    groups = score.reshape(rows, cols // m, m)
    keep = groups.topk(n_keep, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(rows, cols)


def prune_weights(model: nn.Module, config: WeightPruneConfig | Mapping[str, Any],
                  calibration: Iterable[Mapping[str, Any]] | Mapping[str, Any] | None = None) -> WeightReport:
    """Prune ``model`` in place as ``config`` says and report the sparsity reached.

    ``calibration``: batches of model forward kwargs (``input_ids``, ``attention_mask``,
    ``pixel_values``, hybrid ``high_res_pixel_values``; ``labels`` is ignored); at most
    ``config.calibration_batches`` are run. Required when the ranking is Wanda.
    """
    if not isinstance(config, WeightPruneConfig):
        config = WeightPruneConfig.model_validate(config)
    targets, refused = select_prunable(model, config)
    if not targets:
        raise ValueError(f"include={config.include!r} / exclude={config.exclude!r} select no nn.Linear "
                         "module (protected embeddings and lm_head are never pruned)")
    if config.method == "2:4":
        bad = [n for n, m in targets.items() if m.in_features % 4]
        if bad:
            raise ValueError(f"method='2:4' needs in_features divisible by 4; add these to exclude: {bad}")

    norms: dict[str, torch.Tensor] = {}
    used = 0
    if config.ranking == "wanda":
        if calibration is None:
            field = "method" if config.method == "wanda" else "score"
            raise ValueError(f"{field}={getattr(config, field)!r} ranks weights by |W| * ||X||, which needs "
                             "activations: pass calibration batches to prune_weights(model, config, calibration)")
        norms, used = _input_channel_norms(model, targets, calibration, config.calibration_batches)

    with torch.no_grad():
        if config.method == "magnitude" and config.scope == "global":
            prune.global_unstructured([(m, "weight") for m in targets.values()],
                                      pruning_method=prune.L1Unstructured, amount=config.sparsity)
        else:
            for name, module in targets.items():
                if config.method == "magnitude":
                    prune.l1_unstructured(module, "weight", amount=config.sparsity)
                    continue
                score = module.weight.detach().abs().to(torch.float32)
                if config.ranking == "wanda":
                    score = score * norms[name][None, :]
                if config.method == "wanda":
                    mask = _rowwise_mask(score, config.sparsity)
                else:
                    mask = _n_m_mask(score)
                prune.custom_from_mask(module, "weight", mask.to(module.weight.dtype))
        for module in targets.values():
            prune.remove(module, "weight")

    per_layer = sparsity_of(model, modules=list(targets))
    total = sum(m.weight.numel() for m in targets.values())
    zeros = sum(int((m.weight == 0).sum()) for m in targets.values())
    return WeightReport(
        method=config.method,
        scope=config.scope,
        score=config.ranking,
        target_sparsity=config.sparsity,
        overall_sparsity=zeros / total,
        per_layer=per_layer,
        pruned_layers=len(targets),
        zero_params=zeros,
        total_params=total,
        calibration_batches_used=used,
        protected=refused,
        runtime_note=RUNTIME_NOTE.format(**_CSR_FIGURES),
    )
