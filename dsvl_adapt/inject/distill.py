"""The ``distill`` stage: the compressed student learns the teacher's industry knowledge.

Loss = ``kl_weight`` x KL(teacher || student) on answer-token logits at temperature T (scaled
by T², Hinton et al. 2015) + ``ce_weight`` x cross-entropy on the labels + ``hidden_weight`` x
MSE between student hidden states (through learned projections) and the mapped teacher layers.
The teacher runs in eval mode without gradients. Zeros left by ``prune.weights`` stay zero.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..config import DistillSection
from ..data.batches import IGNORE_INDEX, BatchEncoder
from ..data.replay import with_general_replay
from ..engine import RunContext, StageResult
from ..models.checkpoint import save_checkpoint
from ..models.figures import model_figures
from ..score.quick import validation_accuracy
from .numerics import NonFiniteTrainingError, first_non_finite
from .training import Trainer, on_main_process


def default_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Spread student layers evenly over the teacher's: the last maps to the last."""
    return {i: round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)}


class DistillLoss:
    """Computes the distillation loss of a student batch against a frozen teacher."""

    def __init__(self, teacher: torch.nn.Module, cfg: DistillSection, student_config: Any,
                 teacher_view: Any = None) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.cfg = cfg
        # A student under a token budget (prune.tokens) reads K image tokens where the teacher reads N: the
        # teacher's batch is rewritten from the student's (compress.tokens.teacher_view); None = same batch.
        self.teacher_view = teacher_view
        s_layers = student_config.text_config.num_hidden_layers
        t_layers = teacher.config.text_config.num_hidden_layers
        self.layer_map = dict(cfg.layer_map) if cfg.layer_map else default_layer_map(s_layers, t_layers)
        for s, t in self.layer_map.items():
            if not (0 <= s < s_layers and 0 <= t < t_layers):
                raise ValueError(f"distill.layer_map: {s} -> {t} is out of range (student has {s_layers} layers, "
                                 f"teacher {t_layers})")
        s_dim = student_config.text_config.hidden_size
        t_dim = teacher.config.text_config.hidden_size
        self.projections = torch.nn.ModuleList()
        if cfg.hidden_weight > 0:
            for _ in self.layer_map:
                projection = torch.nn.Linear(s_dim, t_dim, bias=False)
                if s_dim == t_dim:
                    torch.nn.init.eye_(projection.weight)
                self.projections.append(projection)

    def __call__(self, student: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.cfg
        want_hidden = cfg.hidden_weight > 0
        out_s = student(**batch, use_cache=False, output_hidden_states=want_hidden)
        t_batch = self.teacher_view(batch) if self.teacher_view is not None else batch
        inputs = {k: v for k, v in t_batch.items() if k != "labels"}
        with torch.no_grad():
            out_t = self.teacher(**inputs, use_cache=False, output_hidden_states=want_hidden)
        # Logits at position i predict token i+1: keep the positions that predict answer tokens (the same
        # answers, in the same order, in both batches).
        answer = batch["labels"][:, 1:] != IGNORE_INDEX
        t_answer = t_batch["labels"][:, 1:] != IGNORE_INDEX
        loss = out_s.loss * cfg.ce_weight if cfg.ce_weight else out_s.logits.new_zeros(())
        if cfg.kl_weight:
            t = cfg.temperature
            s_logits = out_s.logits[:, :-1][answer].float() / t
            t_logits = out_t.logits[:, :-1][t_answer].float() / t
            kl = F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1), log_target=True,
                          reduction="batchmean")
            loss = loss + cfg.kl_weight * kl * t * t
        if want_hidden:
            mask, t_mask = _hidden_positions(batch, t_batch, self.teacher_view is not None,
                                             int(self.teacher.config.image_token_id))
            terms = []
            for projection, (s_layer, t_layer) in zip(self.projections, self.layer_map.items()):
                # hidden_states[0] is the embedding output; layer i's output is hidden_states[i + 1]
                hs = projection(out_s.hidden_states[s_layer + 1][mask])
                ht = out_t.hidden_states[t_layer + 1][t_mask]
                terms.append(F.mse_loss(hs.float(), ht.float()))
            loss = loss + cfg.hidden_weight * torch.stack(terms).mean()
        return loss


def _hidden_positions(batch: dict[str, torch.Tensor], t_batch: dict[str, torch.Tensor], reduced: bool,
                      image_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions compared by the hidden loss: every attended one, or only text ones when the image token counts
    differ (a token budget): those pair one to one."""
    mask, t_mask = batch["attention_mask"].bool(), t_batch["attention_mask"].bool()
    if reduced:
        mask = mask & (batch["input_ids"] != image_token_id)
        t_mask = t_mask & (t_batch["input_ids"] != image_token_id)
    return mask, t_mask


def budget_teacher_view(teacher: torch.nn.Module, teacher_processor: Any, student_processor: Any) -> Any:
    """The teacher's batch maker for a student under a token budget, or None when both read the same batch."""
    from ..compress.tokens.teacher_view import needs_teacher_view, teacher_batch

    t_tokens, s_tokens = int(teacher_processor.num_image_tokens), int(student_processor.num_image_tokens)
    t_size = int(teacher_processor.image_processor.size["height"])
    s_size = int(student_processor.image_processor.size["height"])
    if not needs_teacher_view(s_tokens, t_tokens, s_size, t_size):
        return None
    image_token_id = int(teacher.config.image_token_id)
    pad_id = int(student_processor.tokenizer.pad_token_id)
    return lambda batch: teacher_batch(batch, image_token_id=image_token_id, student_tokens=s_tokens,
                                       teacher_tokens=t_tokens, teacher_image_size=t_size, pad_id=pad_id)


def likely_causes(cfg: DistillSection) -> list[str]:
    """Settings of the distillation loss that make it overflow, for the message of a non-finite loss."""
    causes = []
    if cfg.kl_weight and cfg.temperature < 0.05:
        causes.append(f"distill.temperature={cfg.temperature:g} is tiny: the logits divided by it overflow; "
                      "use a temperature around 1 to 4 (default 2)")
    if cfg.kl_weight and cfg.temperature > 100:
        causes.append(f"distill.temperature={cfg.temperature:g} is huge: the KL term is scaled by T^2; "
                      "use a temperature around 1 to 4 (default 2)")
    heavy = [f"distill.{name}={getattr(cfg, name):g}" for name in ("kl_weight", "ce_weight", "hidden_weight")
             if getattr(cfg, name) > 1e4]
    if heavy:
        causes.append(f"{', '.join(heavy)} scales the loss towards the float range; use weights around 0.1 to 10")
    return causes


def sparsity_masks(model: torch.nn.Module, layer_names: list[str]) -> dict[str, torch.Tensor]:
    """Masks of the weights ``prune.weights`` zeroed, to keep them zero while training."""
    modules = dict(model.named_modules())
    return {name: (modules[name].weight != 0) for name in layer_names if name in modules}


class DistillStage:
    name = "distill"
    description = "distill the teacher into the compressed student (KL on answer logits + CE + hidden MSE)"

    def run(self, context: RunContext) -> StageResult:
        cfg = context.config.distill
        teacher, teacher_processor = context.load_model("teacher")
        broken = first_non_finite([teacher])
        if broken is not None:
            raise NonFiniteTrainingError(
                f"the teacher ({context.artifact('teacher')}) holds NaN or inf values in {broken!r}: it cannot teach. "
                "Rerun the stage that wrote it (delete its folder under stages/) or check the model you loaded.")
        student, processor = context.load_model("student")
        encoder = BatchEncoder(processor, context.prompt)
        image_size = processor.image_processor.size["height"]
        train = self.train_items(context, encoder, processor)
        validation = encoder.encode_all(context.split("validation", image_size).rows)
        before = validation_accuracy(context, student, processor)

        masks = sparsity_masks(student, self.kept_zero_layers(context))
        loss = DistillLoss(teacher, cfg, student.config,
                           teacher_view=budget_teacher_view(teacher, teacher_processor, processor))
        student.train().requires_grad_(True)
        trainer = Trainer(student, encoder, cfg.train, checkpoint_dir=context.work_dir / "checkpoints",
                          seed=context.config.seed + 2, label="distill", section="distill.train", loss_fn=loss,
                          extra_modules=[loss.projections] if len(loss.projections) else [],
                          device=context.config.device, after_step=_reapply(student, masks),
                          causes=lambda: likely_causes(cfg))
        result = trainer.train(train, validation)
        student = trainer.accelerator.unwrap_model(trainer.model).eval()

        directory = context.work_dir / "student"
        on_main_process(lambda: save_checkpoint(student, processor, directory, role="student", stage=self.name))
        return StageResult(artifacts={"student": "student"}, figures={
            **result.as_dict(), "validation_accuracy_before": before,
            "validation_accuracy": validation_accuracy(context, student, processor) if result.steps else before,
            "layer_map": loss.layer_map if cfg.hidden_weight > 0 else None,
            "kept_zero_masks": len(masks), **model_figures(student, directory),
        })


    def train_items(self, context: RunContext, encoder: BatchEncoder, processor: Any) -> list[Any]:
        """The encoded rows the student learns from: the train split, with general-set replay (an update run adds
        its replay rows: :mod:`dsvl_adapt.continual.stages`)."""
        train = encoder.encode_all(context.split("train", processor.image_processor.size["height"]).rows)
        return with_general_replay(context, processor, train, context.config.distill.replay_general)

    def kept_zero_layers(self, context: RunContext) -> list[str]:
        """Layers whose zeros (from ``prune.weights``) stay zero while the student trains."""
        return list(context.figures.get("prune.weights", {}).get("per_layer", {}))


def _reapply(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> Any:
    if not masks:
        return None
    modules = dict(model.named_modules())

    @torch.no_grad()
    def apply() -> None:
        for name, mask in masks.items():
            modules[name].weight.mul_(mask)

    return apply
