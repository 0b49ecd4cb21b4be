"""The terms an update adds to the fine-tune loss to keep what the parent knew.

* LwF (Li & Hoiem, 2016), here on the replay rows (old-looking inputs): KL(previous teacher || teacher) on the
  answer-token logits at temperature T, scaled by T^2, weighted by ``update.lwf.weight``. The previous teacher
  is the parent's, frozen. Batches say which rows are replay rows through :class:`MarkingEncoder`.
* EWC (Kirkpatrick et al., 2017) on the fresh LoRA adapter: ``lambda/2 x sum F (theta - theta0)^2`` with the
  diagonal empirical Fisher ``F`` of the cross-entropy on replay rows at the adapter's start ``theta0`` (the
  parent's function). With LoRA's B matrices at zero, F is non-zero on B only: the penalty holds back the
  update's directions that matter for the old rows.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..data.batches import IGNORE_INDEX, BatchEncoder, Encoded
from ..inject.training import causal_lm_loss

REPLAY_KEY = "replay_rows"  # a (batch,) bool tensor in a training batch: which rows come from the replay buffer


class MarkingEncoder(BatchEncoder):
    """A batch encoder whose training batches carry :data:`REPLAY_KEY` (rows given as replay rows, by identity)."""

    def __init__(self, encoder: BatchEncoder, replay_items: Sequence[Encoded]) -> None:
        self.__dict__.update(encoder.__dict__)
        self._replay = {id(item) for item in replay_items}

    def training_batch(self, items: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        batch = super().training_batch(items)
        batch[REPLAY_KEY] = torch.tensor([id(item) in self._replay for item in items], dtype=torch.bool)
        return batch


def _without_marks(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in batch.items() if key != REPLAY_KEY}


class UpdateLoss:
    """Cross-entropy on every row, plus the LwF term on replay rows and the EWC penalty when configured."""

    def __init__(self, *, previous_teacher: torch.nn.Module | None = None, lwf_weight: float = 0.0,
                 temperature: float = 2.0, ewc: "EwcPenalty | None" = None) -> None:
        self.previous = previous_teacher.eval().requires_grad_(False) if previous_teacher is not None else None
        self.lwf_weight = lwf_weight
        self.temperature = temperature
        self.ewc = ewc

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        marks = batch.get(REPLAY_KEY)
        inputs = _without_marks(batch)
        if self.previous is None or marks is None or not bool(marks.any()):
            loss = causal_lm_loss(model, inputs)
        else:
            out = model(**inputs, use_cache=False)
            loss = out.loss + self.lwf_weight * self._lwf(out.logits, inputs, marks)
        if self.ewc is not None and model.training:
            loss = loss + self.ewc.penalty()
        return loss

    def _lwf(self, logits: torch.Tensor, inputs: dict[str, torch.Tensor], marks: torch.Tensor) -> torch.Tensor:
        rows = marks.nonzero().flatten()
        old = {key: value[rows] for key, value in inputs.items() if key != "labels"}
        with torch.no_grad():
            previous = self.previous(**old, use_cache=False).logits  # type: ignore[misc]
        answer = inputs["labels"][rows, 1:] != IGNORE_INDEX
        t = self.temperature
        student = logits[rows, :-1][answer].float() / t
        teacher = previous[:, :-1][answer].float() / t
        return F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                        reduction="batchmean") * t * t


class EwcPenalty:
    """``weight/2 x sum F (theta - theta0)^2`` over the trainable parameters of ``model``."""

    def __init__(self, model: torch.nn.Module, fisher: dict[str, torch.Tensor], weight: float) -> None:
        self.weight = weight
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad and name in fisher}
        self.anchor = {name: p.detach().clone() for name, p in self.params.items()}
        self.fisher = fisher

    def penalty(self) -> torch.Tensor:
        total = next(iter(self.params.values())).new_zeros(())
        for name, param in self.params.items():
            total = total + (self.fisher[name].to(param.device) * (param - self.anchor[name]) ** 2).sum()
        return 0.5 * self.weight * total

    def figures(self) -> dict[str, Any]:
        values = torch.cat([f.flatten() for f in self.fisher.values()]) if self.fisher else torch.zeros(1)
        return {"weight": self.weight, "parameters": int(values.numel()), "fisher_mean": float(values.mean()),
                "fisher_max": float(values.max()), "nonzero_share": float((values > 0).float().mean())}


def diagonal_fisher(model: torch.nn.Module, encoder: BatchEncoder, items: Sequence[Encoded], *, batches: int,
                    batch_size: int) -> dict[str, torch.Tensor]:
    """The diagonal empirical Fisher (mean squared gradient of the cross-entropy) of ``model``'s trainable
    parameters over up to ``batches`` batches of ``items``, taken in order."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.eval()
    count = 0
    for start in range(0, min(len(items), batches * batch_size), batch_size):
        batch = encoder.training_batch(items[start: start + batch_size])
        model.zero_grad(set_to_none=True)
        causal_lm_loss(model, _without_marks(batch)).backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach() ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {name: value / max(count, 1) for name, value in fisher.items()}
