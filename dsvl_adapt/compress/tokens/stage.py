"""The ``prune.tokens`` stage: the student gets a budget of K image tokens per image, before ``distill``.

It loads the current student, applies the configured method (a registered token reducer), records the budget
in the config (``token_budget``) and the processor (``num_image_tokens=K``), saves the student, and checks that
the saved directory reloads (through :func:`dsvl_adapt.models.checkpoint.load_checkpoint`, which restores the
reducer) to the same outputs on a batch encoded with K image tokens.
"""

from __future__ import annotations

from ...data.calibration import calibration_batches
from ...engine import RunContext, StageResult
from ...errors import StageError
from ...models.checkpoint import save_checkpoint
from ...models.dtype import model_dtype
from ...models.figures import model_figures
from ...score.quick import validation_accuracy
from ..stages import check_reload, reference_logits
from .budget import apply_token_budget


class TokenPruneStage:
    name = "prune.tokens"
    description = "visual-token budget: K image tokens per image, carried by the student into distill and export"

    def run(self, context: RunContext) -> StageResult:
        cfg = context.config.prune.tokens
        if not cfg.enabled:
            return StageResult(artifacts={"student": str(context.artifact("student"))},
                               figures={"skipped": "no token budget asked (prune.tokens.keep / prune.tokens.tokens)"})
        reducer = context.registry.token_reducers.get(cfg.method)
        model, processor = context.load_model("student")
        try:
            budget, figures = apply_token_budget(model, processor, reducer, keep=cfg.keep, tokens=cfg.tokens)
        except ValueError as exc:
            raise StageError(f"prune.tokens: {exc}") from exc
        directory = context.work_dir / "student"
        save_checkpoint(model, processor, directory, role="student", stage=self.name)
        probe = calibration_batches(context, processor, count=1, batch_size=2)[0]
        figures = {**budget.model_dump(mode="json"), **figures,
                   "validation_accuracy": validation_accuracy(context, model, processor),
                   **model_figures(model, directory)}
        expected, dtype = reference_logits(model, probe), model_dtype(model)
        del model
        figures["reload_max_abs_diff"] = check_reload(expected, directory, probe, dtype=dtype)
        return StageResult(artifacts={"student": "student"}, figures=figures)
