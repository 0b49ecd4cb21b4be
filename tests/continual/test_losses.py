"""The terms an update adds to the fine-tune loss: LwF on replay rows, the EWC penalty and its Fisher."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from dsvl_adapt.continual.losses import REPLAY_KEY, EwcPenalty, UpdateLoss, diagonal_fisher
from dsvl_adapt.data.batches import IGNORE_INDEX

VOCAB = 12


class TinyLM(torch.nn.Module):
    """A causal LM's interface in a few lines: logits per position, and the loss on labelled positions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, VOCAB)

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=False):  # noqa: ARG002
        logits = self.head(self.embed(input_ids))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return SimpleNamespace(logits=logits, loss=loss)


def batch(replay: list[bool]) -> dict[str, torch.Tensor]:
    ids = torch.arange(len(replay) * 5).reshape(len(replay), 5) % VOCAB
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 3:] = ids[:, 3:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            REPLAY_KEY: torch.tensor(replay)}


def plain_loss(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> float:
    return model(**{k: v for k, v in data.items() if k != REPLAY_KEY}).loss.item()


def test_lwf_adds_nothing_while_the_model_answers_as_the_previous_teacher_and_only_on_replay_rows():
    model = TinyLM()
    loss = UpdateLoss(previous_teacher=copy.deepcopy(model), lwf_weight=1.0, temperature=2.0)
    mixed = batch([True, False, True])
    assert loss(model, mixed).item() == torch.tensor(plain_loss(model, mixed)).item()
    with torch.no_grad():
        model.head.weight.add_(torch.randn_like(model.head.weight))
    assert loss(model, mixed).item() > plain_loss(model, mixed) + 1e-4  # moved away from the previous teacher
    new_only = batch([False, False, False])
    assert loss(model, new_only).item() == torch.tensor(plain_loss(model, new_only)).item()


def test_ewc_penalty_is_the_fisher_weighted_distance_from_the_start():
    model = TinyLM()
    model.embed.requires_grad_(False)
    encoder = SimpleNamespace(training_batch=lambda items: batch([True] * len(items)))
    fisher = diagonal_fisher(model, encoder, list(range(8)), batches=2, batch_size=4)
    assert set(fisher) == {"head.weight", "head.bias"}
    assert all(bool((value >= 0).all()) for value in fisher.values()) and float(fisher["head.weight"].sum()) > 0
    penalty = EwcPenalty(model, fisher, weight=10.0)
    assert penalty.penalty().item() == 0.0
    with torch.no_grad():
        model.head.bias.add_(0.5)
    expected = 0.5 * 10.0 * float((fisher["head.bias"] * 0.25).sum())
    assert abs(penalty.penalty().item() - expected) < 1e-6
    model.train()
    with_penalty = UpdateLoss(ewc=penalty)(model, batch([False, True]))
    assert abs(with_penalty.item() - plain_loss(model, batch([False, True])) - expected) < 1e-5
