"""The core's own parts, registered through the same hooks as any plugin.

Stage implementations are imported when they run, so loading plugins stays fast.
"""

from __future__ import annotations

from .engine import LazyStage
from .metrics import exact_match
from .plugins import hookimpl
from .schemas import DatasetRequest, DatasetSpec, MetricSpec, PromptTemplate

CORE_STAGES = (
    LazyStage("load", "load the base model (a local checkpoint, or a reference preset with an offline tokenizer)",
              "dsvl_adapt.models.stage:LoadStage", distributed=True, config_keys=()),
    LazyStage("finetune", "fine-tune on the vertical's data (full phase for random-init presets, then LoRA) -> teacher",
              "dsvl_adapt.inject.finetune:FinetuneStage", distributed=True, config_keys=("finetune",)),
    LazyStage("prune.structural", "structural pruning with torch-pruning: LM MLP channels and heads (GQA-aware), "
              "vision tower", "dsvl_adapt.compress.stages:StructuralPruneStage",
              config_keys=("prune.structural", "prune.calibration_batch_size")),
    LazyStage("prune.weights", "weight pruning: unstructured magnitude (layer/global), Wanda, or 2:4",
              "dsvl_adapt.compress.stages:WeightPruneStage",
              config_keys=("prune.weights", "prune.calibration_batch_size")),
    LazyStage("distill", "distill the teacher into the compressed student (KL on answer logits + CE + hidden MSE)",
              "dsvl_adapt.inject.distill:DistillStage", distributed=True, config_keys=("distill",)),
    LazyStage("quantize", "quantize the student for the target's runtime: PyTorch int8, ONNX Runtime int8/int4, "
                          "or OpenVINO int8/int4 (NNCF)",
              "dsvl_adapt.compress.stages:QuantizeStage", config_keys=("quantize", "vertical.target")),
    LazyStage("export", "export the student to ONNX (full graph, or vision + LM graphs for restricted op sets)",
              "dsvl_adapt.export.stage:ExportStage", config_keys=("export", "vertical.target")),
    LazyStage("score", "score base, teacher and student: accuracy, retention, latency, size, hardware fit",
              "dsvl_adapt.score.stage:ScoreStage", cacheable=False),
    # the stages of `dsvl-adapt update` (docs/continual.md)
    LazyStage("update.parent", "take the parent's teacher and its pruned, distilled student as the starting point",
              "dsvl_adapt.continual.stages:UpdateParentStage", config_keys=("update",)),
    LazyStage("update.finetune", "a fresh LoRA adapter on the parent's teacher: new rows (+ replay, LwF, EWC), "
              "merged -> teacher", "dsvl_adapt.continual.stages:UpdateFinetuneStage",
              config_keys=("update", "finetune")),
    LazyStage("update.distill", "re-distill the new teacher into the parent's student (its pruned structure kept)",
              "dsvl_adapt.continual.stages:UpdateDistillStage", config_keys=("update", "distill")),
    LazyStage("update.score", "score the parent and this version on the old test split, the new rows and the "
              "general set", "dsvl_adapt.continual.stages:UpdateScoreStage", cacheable=False),
)


@hookimpl
def dsvl_adapt_register_stages(register):
    for stage in CORE_STAGES:
        register(stage)


GENERAL_PROMPT = PromptTemplate(
    name="general-vqa", system="You are a helpful visual assistant. Answer with one word.", user="{question}",
    answer_format="a colour, a shape, a count (1-4) or left/right",
)


def _general_rows(request: DatasetRequest):
    from .data.general import generate_rows

    return generate_rows(request.split, request.size, seed=request.seed, image_size=request.image_size)


@hookimpl
def dsvl_adapt_register_datasets(register):
    register(DatasetSpec(name="general-vqa", load=_general_rows,
                         description="general visual questions (colours, shapes, counting, left/right): the "
                                     "scorecard's check for forgetting"))


@hookimpl
def dsvl_adapt_register_prompts(register):
    register(GENERAL_PROMPT)


@hookimpl
def dsvl_adapt_register_metrics(register):
    register(MetricSpec(name="exact_match", compute=exact_match, description="normalised exact match of answers"))
