"""The core's own parts, registered through the same hooks as any plugin.

Stage implementations are imported when they run, and the runtime backends import their engines
when used, so loading plugins stays fast.
"""

from __future__ import annotations

from .engine import LazyStage
from .metrics import exact_match
from .plugins import hookimpl, load_target
from .runtimes.backends.onnxruntime import OnnxRuntimeBackend
from .runtimes.backends.openvino import OpenVinoBackend
from .runtimes.backends.pytorch import TorchBackend
from .schemas import DataCheck, DatasetRequest, DatasetSpec, MetricSpec, PromptTemplate

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
    LazyStage("prune.tokens", "visual-token budget: K image tokens per image (select, resolution, vision-merge, window, text-guided, ...), carried by "
              "the student into distillation and export", "dsvl_adapt.compress.tokens.stage:TokenPruneStage",
              config_keys=("prune.tokens", "prune.calibration_batch_size")),
    LazyStage("distill", "distill the teacher into the compressed student (KL on answer logits + CE + hidden MSE)",
              "dsvl_adapt.inject.distill:DistillStage", distributed=True, config_keys=("distill",)),
    LazyStage("quantize", "quantize the student for the target's runtime backend (built in: PyTorch int8, ONNX "
                          "Runtime int8/int4, OpenVINO int8/int4 with NNCF)",
              "dsvl_adapt.compress.stages:QuantizeStage", config_keys=("quantize", "vertical.target")),
    LazyStage("export", "export the student for the target's runtime backend, with an ONNX op/dtype inventory (full "
                        "graph, or vision + LM graphs for restricted op sets)",
              "dsvl_adapt.export.stage:ExportStage",
              config_keys=("export", "vertical.target", "quantize.backend", "quantize.follow_target",
                           "quantize.precision", "quantize.inference_precision")),
    LazyStage("clean", "clean the data: integrity, duplicates, leakage, label errors -> report, cleaned view, "
                       "review page (docs/cleaning.md)", "dsvl_adapt.cleaning.stage:CleanStage",
              config_keys=("clean", "data")),
    LazyStage("score", "score base, teacher and student: accuracy, retention, latency, size, hardware fit",
              "dsvl_adapt.score.stage:ScoreStage", cacheable=False),
    # the stages of `dsvl-adapt update` (docs/continual.md)
    LazyStage("update.parent", "take the parent's teacher and its pruned, distilled student as the starting point",
              "dsvl_adapt.continual.stages:UpdateParentStage", config_keys=("update",)),
    LazyStage("update.finetune", "the parent's teacher learns the new rows (+ replay, LwF, EWC): a full-parameter "
              "phase for reference presets, then a fresh LoRA adapter, merged -> teacher",
              "dsvl_adapt.continual.stages:UpdateFinetuneStage",
              config_keys=("update", "finetune")),
    LazyStage("update.distill", "re-distill the new teacher into the parent's student (its pruned structure kept)",
              "dsvl_adapt.continual.stages:UpdateDistillStage", config_keys=("update", "distill")),
    LazyStage("update.score", "score the parent and this version on the old test split, the new rows and the "
              "general set", "dsvl_adapt.continual.stages:UpdateScoreStage", cacheable=False),
)


@hookimpl
def dsvl_adapt_register_runtimes(register):
    for backend in (TorchBackend(), OnnxRuntimeBackend(), OpenVinoBackend()):
        register(backend)


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


@hookimpl
def dsvl_adapt_register_token_reducers(register):
    from .compress.tokens.contract import LazyTokenReducer

    register(LazyTokenReducer(
        "select", "VisionZip-style: dominant tokens by the vision tower's last-layer attention plus merged contextual "
                  "tokens, after the aligner; static shapes, exports with K tokens",
        "dsvl_adapt.compress.tokens.select:SelectReducer"))
    register(LazyTokenReducer(
        "resolution", "a smaller image (K = g x g patches), position embeddings interpolated; plain transformers "
                      "reproduces it; exports with K tokens",
        "dsvl_adapt.compress.tokens.resolution:ResolutionReducer", square=True))
    register(LazyTokenReducer(
        "vision-merge", "ToMe-style bipartite merging after each vision-tower layer, so the tower runs on fewer "
                        "tokens too; static shapes, exports with K tokens",
        "dsvl_adapt.compress.tokens.vision_merge:VisionMergeReducer"))
    register(LazyTokenReducer(
        "window", "the seed's dynamic attention masking: text reads a g x g window of image patches around the most "
                  "attended one; all N tokens stay in the sequence; PyTorch only, for comparison",
        "dsvl_adapt.compress.tokens.window:WindowReducer", deploys="torch", square=True, masks=True))
    register(LazyTokenReducer(
        "text-guided", "FastV-style: the last prompt token's attention in layer 2 of the language model picks K "
                       "image tokens, the later layers read only those (masking); PyTorch only",
        "dsvl_adapt.compress.tokens.text_guided:TextGuidedReducer", deploys="torch", masks=True))


def lazy_check(target: str):
    """A data check's ``run`` imported when it runs (``module:function``), so loading plugins stays fast."""
    def run(data):
        return load_target(target)(data)

    run.__qualname__ = run.__name__ = target.rpartition(":")[2]
    return run


CORE_DATA_CHECKS = (
    DataCheck(name="unreadable", level=1, run=lazy_check("dsvl_adapt.cleaning.integrity:unreadable_rows"),
              description="rows whose image or fields could not be read (missing, empty, truncated, not an image)"),
    DataCheck(name="image-quality", level=1, run=lazy_check("dsvl_adapt.cleaning.integrity:image_quality"),
              description="blank or near-constant images, absurd sizes and aspect ratios"),
    DataCheck(name="answer-set", level=1, run=lazy_check("dsvl_adapt.cleaning.integrity:answer_set"),
              description="answers outside a closed answer set (given once, nowhere else)"),
    DataCheck(name="duplicates", level=1, run=lazy_check("dsvl_adapt.cleaning.duplicates:duplicates"),
              description="exact and near-duplicate images asked the same question; same pair, different answers"),
    DataCheck(name="leakage", level=1, run=lazy_check("dsvl_adapt.cleaning.duplicates:leakage"),
              description="train rows that are validation or test rows, validation rows that are test rows"),
    DataCheck(name="label-issues", level=2, run=lazy_check("dsvl_adapt.cleaning.label_issues:label_issues"),
              description="likely wrong answers: cleanlab over cross-fitted answer probabilities of a cheap model"),
    DataCheck(name="image-question-mismatch", level=2,
              run=lazy_check("dsvl_adapt.cleaning.label_issues:image_question_mismatch"),
              description="pictures that look like another question's pictures (cleanlab, image-only model)"),
    DataCheck(name="clip-similarity", level=2, run=lazy_check("dsvl_adapt.cleaning.clip:clip_similarity"),
              description="image-text similarity under clean.clip.threshold (only with clean.clip.path)"),
)


@hookimpl
def dsvl_adapt_register_data_checks(register):
    for check in CORE_DATA_CHECKS:
        register(check)
