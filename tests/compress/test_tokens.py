"""prune.tokens (issue 17): the budget is validated, carried by the model, restored on load, and exported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsvl_adapt.compress.tokens.budget import apply_token_budget, recorded_budget
from dsvl_adapt.compress.tokens.teacher_view import teacher_batch
from dsvl_adapt.config import compose
from dsvl_adapt.errors import ConfigError
from dsvl_adapt.models.checkpoint import build_reference, load_checkpoint, save_checkpoint
from dsvl_adapt.models.tokenizer import train_tokenizer
from dsvl_adapt.plugins import get_registry

TINY = ["vertical=industrial", "model=reference-tiny", "finetune=fast", "distill=fast"]


def _tiny() -> tuple[torch.nn.Module, object]:
    tokenizer = train_tokenizer(["a red circle on the left", "scratch dent crack none ok"] * 20, vocab_size=300)
    model, processor = build_reference("reference-tiny", tokenizer, seed=0)
    return model.eval(), processor


def _features(processor, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")) for _ in range(2)]
    rows = []
    for image in images:
        messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": "a red circle"}]}]
        rows.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True, return_tensors="pt"))
    return {k: torch.cat([r[k] for r in rows]) for k in ("input_ids", "attention_mask", "pixel_values")}


def _reduce(method: str, keep: float):
    model, processor = _tiny()
    budget, figures = apply_token_budget(model, processor, get_registry().token_reducers.get(method), keep=keep)
    return model, processor, budget, figures


# -- configuration ---------------------------------------------------------------------------------------------------

def test_the_default_pipeline_lists_prune_tokens_before_distill_and_leaves_it_off():
    config, _ = compose(TINY)
    stages = config.pipeline.stages
    assert stages.index("prune.weights") < stages.index("prune.tokens") < stages.index("distill")
    assert not config.prune.tokens.enabled


def test_a_keep_ratio_turns_it_on():
    config, _ = compose(TINY + ["prune.tokens.keep=0.25", "prune.tokens.method=resolution"])
    assert config.prune.tokens.enabled and config.prune.tokens.keep == 0.25


@pytest.mark.parametrize("overrides, message", [
    (["prune.tokens.keep=0"], "prune.tokens.keep"),
    (["prune.tokens.keep=1.5"], "prune.tokens.keep"),
    (["prune.tokens.keep=0.5", "prune.tokens.tokens=4"], "not both"),
    (["prune.tokens.keep=0.5", "prune.tokens.method=fastvv"], "registered: resolution, select"),
])
def test_bad_budgets_fail_before_any_stage(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose(TINY + overrides)


# -- methods ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, keep, tokens", [("select", 0.5, 8), ("select", 0.25, 4), ("resolution", 0.25, 4),
                                                  ("vision-merge", 0.5, 8), ("vision-merge", 0.25, 4)])
def test_the_reduced_model_feeds_k_image_tokens(method, keep, tokens):
    model, processor, budget, _ = _reduce(method, keep)
    assert budget.image_tokens == tokens and budget.source_image_tokens == 16
    assert model.config.token_budget["image_tokens"] == tokens
    batch = _features(processor)
    assert int((batch["input_ids"][0] == model.config.image_token_id).sum()) == tokens
    with torch.no_grad():
        features = model.model.get_image_features(batch["pixel_values"]).pooler_output
        logits = model(**batch).logits
    assert features.shape[:2] == (2, tokens)
    assert torch.isfinite(logits).all()


def test_select_keeps_dominant_tokens_in_image_order_and_merges_the_rest():
    model, processor, _, figures = _reduce("select", 0.5)
    assert figures == {"dominant_tokens": 7, "contextual_tokens": 1}
    batch = _features(processor)
    reducer = model.model.aligner.token_reducer
    with torch.no_grad():
        vision = model.model.vision_model(batch["pixel_values"]).last_hidden_state
        scores = reducer._attention.received()
        aligned = model.model.aligner.linear2(model.model.aligner.activation(model.model.aligner.linear1(vision)))
        reduced = model.model.aligner(vision)
    top = torch.topk(scores, 7, dim=1).indices.sort(dim=1).values
    expected = aligned.gather(1, top.unsqueeze(-1).expand(-1, -1, aligned.shape[-1]))
    torch.testing.assert_close(reduced[:, :7], expected)
    rest = [sorted(set(range(16)) - set(row.tolist())) for row in top]
    # one contextual token: the mean of every dropped token
    merged = torch.stack([aligned[i, r].mean(0) for i, r in enumerate(rest)])
    torch.testing.assert_close(reduced[:, 7], merged)


def test_a_tome_step_averages_the_most_similar_pairs_by_size_and_remembers_their_first_patch():
    from dsvl_adapt.compress.tokens.vision_merge import bipartite_merge

    # A tokens at places 0, 2, 4; B tokens at 1, 3, 5. A0 ~ B1 (almost equal), A4 ~ B5, A2 unlike everything
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [-1.0, 0.0], [0.3, -1.0], [0.35, -1.0]]])
    size = torch.tensor([[[1.0], [3.0], [1.0], [1.0], [2.0], [1.0]]])
    first = torch.tensor([[0, 1, 2, 3, 4, 5]])
    merged, new_size, new_first = bipartite_merge(x, x, size, first, merge=2)
    # left: the unmerged A token (A2), then B1, B3, B5 with A0 and A4 averaged in by size
    torch.testing.assert_close(merged[0, 0], x[0, 2])
    torch.testing.assert_close(merged[0, 1], (x[0, 0] * 1 + x[0, 1] * 3) / 4)
    torch.testing.assert_close(merged[0, 2], x[0, 3])
    torch.testing.assert_close(merged[0, 3], (x[0, 4] * 2 + x[0, 5] * 1) / 3)
    assert new_size[0, :, 0].tolist() == [1.0, 4.0, 1.0, 3.0]
    assert new_first[0].tolist() == [2, 0, 3, 4]


def test_chained_tome_steps_keep_each_tokens_first_patch_the_smallest_it_covers():
    """Through 4 steps (64 -> 16) every token's first patch is the least of the patches it stands for (a token
    can cover a patch index far beyond the current count: 57 with 28 tokens left, found on reference-small)."""
    from dsvl_adapt.compress.tokens.vision_merge import bipartite_merge

    torch.manual_seed(0)
    mix = torch.nn.Linear(8, 8)
    torch.manual_seed(1)
    x = torch.randn(1, 64, 8)
    size, first = torch.ones(1, 64, 1), torch.arange(64).unsqueeze(0)
    members = [{p} for p in range(64)]  # what each token stands for, followed by hand
    with torch.no_grad():
        for _ in range(4):
            x = mix(x)
            unit = torch.nn.functional.normalize(x, dim=-1)
            best, partner = (unit[:, ::2] @ unit[:, 1::2].transpose(1, 2)).max(dim=-1)
            order = best[0].argsort(descending=True).tolist()
            a, b = members[::2], members[1::2]
            for i in order[:12]:
                b[int(partner[0, i])] = b[int(partner[0, i])] | a[i]
            members = [a[i] for i in order[12:]] + b
            x, size, first = bipartite_merge(x, x, size, first, 12)
    assert first[0].tolist() == [min(m) for m in members]
    assert size[0, :, 0].tolist() == [float(len(m)) for m in members]


def test_vision_merge_runs_later_vision_layers_on_fewer_tokens_and_gives_them_in_image_order():
    model, processor, _, figures = _reduce("vision-merge", 0.25)
    assert figures == {"merged_per_layer": [8, 4]}
    vision = model.model.vision_model
    seen, merged, ordered = [], [], []
    handles = [layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1])) for layer in vision.encoder.layers]
    handles.append(vision.encoder.layers[-1].register_forward_hook(lambda m, a, out: merged.append(out)))
    handles.append(vision.post_layernorm.register_forward_pre_hook(lambda m, a: ordered.append(a[0])))
    batch = _features(processor)
    with torch.no_grad():
        model.model.get_image_features(batch["pixel_values"])
    for handle in handles:
        handle.remove()
    assert seen == [16, 8]  # the second layer reads the 8 tokens the first one left
    first = vision.token_merge._state["first"]  # first patch of each of the 4 tokens left, in merge order
    assert first.shape == (2, 4) and len(set(first[0].tolist())) == 4
    order = first.argsort(dim=1)
    expected = torch.stack([merged[0][i, order[i]] for i in range(2)])
    torch.testing.assert_close(ordered[0], expected)  # reach the aligner in image order


def _layer_masks(model, batch):
    """The 4D additive mask each language-model layer receives, as bool "may read"."""
    masks = []
    handles = [layer.register_forward_pre_hook(lambda m, a, kw: masks.append(kw["attention_mask"] == 0),
                                               with_kwargs=True) for layer in model.model.language_model.layers]
    with torch.no_grad():
        model(**batch)
    for handle in handles:
        handle.remove()
    return masks


def test_window_lets_the_text_read_only_a_k_patch_block_around_the_most_attended_patch():
    model, processor, budget, figures = _reduce("window", 0.25)
    assert (budget.image_tokens, budget.sequence_image_tokens, figures) == (4, 16, {"window": "2x2"})
    batch = _features(processor)
    assert int((batch["input_ids"][0] == model.config.image_token_id).sum()) == 16  # all N stay in the sequence
    masks = _layer_masks(model, batch)
    image = batch["input_ids"] == model.config.image_token_id
    received = model.model.token_mask._attention.received()
    last_image = int(image[0].nonzero().max())
    for row in range(2):
        for mask in masks:  # every layer: the text after the image reads 4 image tokens, a 2x2 block
            readable = mask[row, 0, last_image + 1:][:, image[row]]
            assert readable.sum(dim=1).eq(4).all()
            patches = readable[-1].nonzero().flatten().tolist()
            rows, cols = {p // 4 for p in patches}, {p % 4 for p in patches}
            assert len(rows) == len(cols) == 2 and max(rows) - min(rows) == max(cols) - min(cols) == 1
            peak = int(received[row].argmax())
            assert peak // 4 in rows and peak % 4 in cols
            # the image tokens themselves read every earlier image token
            image_rows = mask[row, 0][image[row]][:, image[row]]
            assert torch.equal(image_rows, torch.ones(16, 16).tril().bool())


def test_text_guided_drops_all_but_k_image_tokens_after_its_layer():
    model, processor, budget, figures = _reduce("text-guided", 0.25)
    layer = figures["rank_layer"]
    assert layer == 1  # FastV's layer 2, capped by the tiny model's 2 layers
    batch = _features(processor)
    masks = _layer_masks(model, batch)
    image = batch["input_ids"] == model.config.image_token_id
    last_image = int(image[0].nonzero().max())
    for row in range(2):
        for index, mask in enumerate(masks):
            readable = mask[row, 0, last_image + 1:][:, image[row]].sum(dim=1)
            assert readable.eq(16 if index <= layer else 4).all(), index


def test_text_guided_ranks_by_the_prompt_not_the_answer():
    model, processor, _, _ = _reduce("text-guided", 0.25)
    batch = _features(processor)
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, -3:] = batch["input_ids"][:, -3:]
    with torch.no_grad():
        model(**batch, labels=labels)
        trained = model.model.token_mask.dropped.clone()
        # the same prompt without its last 3 tokens, at inference: the rater is the same position
        prompt = {k: (v[:, :-3] if k != "pixel_values" else v) for k, v in batch.items()}
        model(**prompt)
    torch.testing.assert_close(model.model.token_mask.dropped, trained[:, :-3], rtol=0, atol=0)


@pytest.mark.parametrize("method", ["window", "text-guided"])
def test_a_masking_method_decodes_with_the_cache_as_a_full_recompute_does(method):
    model, processor, _, _ = _reduce(method, 0.25)
    batch = _features(processor)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
        ids = out.sequences
        for step, scores in enumerate(out.scores):
            length = batch["input_ids"].shape[1] + step
            full = model(input_ids=ids[:, :length], attention_mask=torch.ones_like(ids[:, :length]),
                         pixel_values=batch["pixel_values"], use_cache=False).logits[:, -1]
            torch.testing.assert_close(scores, full, rtol=1e-4, atol=1e-4)


def test_a_pytorch_only_method_is_refused_in_a_pipeline_that_exports():
    with pytest.raises(ConfigError, match="runs in PyTorch only.*pipeline.stages=\\[load,"):
        compose(TINY + ["prune.tokens.keep=0.25", "prune.tokens.method=window"])
    config, _ = compose(TINY + ["prune.tokens.keep=0.25", "prune.tokens.method=text-guided",
                                "pipeline.stages=[load,finetune,prune.structural,prune.weights,prune.tokens,distill,"
                                "score]"])
    assert config.prune.tokens.method == "text-guided"


def test_a_budget_does_not_stack():
    model, processor, _, _ = _reduce("select", 0.5)
    with pytest.raises(ValueError, match="already carries a token budget"):
        apply_token_budget(model, processor, get_registry().token_reducers.get("select"), keep=0.5)


def test_resolution_refuses_a_k_that_is_not_a_square():
    model, processor = _tiny()
    with pytest.raises(ValueError, match="nearest: 9"):
        apply_token_budget(model, processor, get_registry().token_reducers.get("resolution"), tokens=8)


# -- loading ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["select", "resolution", "vision-merge", "window", "text-guided"])
def test_dsvl_adapt_load_restores_the_budget_exactly(method, tmp_path):
    import dsvl_adapt

    model, processor, budget, _ = _reduce(method, 0.25)
    save_checkpoint(model, processor, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["token_budget"]["method"] == method
    loaded, loaded_processor = dsvl_adapt.load(tmp_path)
    assert recorded_budget(loaded.config) == budget
    assert loaded_processor.num_image_tokens == budget.sequence_image_tokens
    batch = _features(loaded_processor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_plain_transformers_reproduces_resolution_but_not_select(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    for method in ("resolution", "select", "vision-merge", "window"):
        model, processor, _, _ = _reduce(method, 0.25)
        directory = tmp_path / method
        save_checkpoint(model, processor, directory)
        plain = AutoModelForImageTextToText.from_pretrained(directory, local_files_only=True).eval()
        batch = _features(AutoProcessor.from_pretrained(directory, local_files_only=True))
        if method == "resolution":
            with torch.no_grad():
                torch.testing.assert_close(plain(**batch).logits, model(**batch).logits, rtol=0, atol=0)
        elif method == "window":  # runs, without the mask: the text reads all 16 image tokens
            model.model.token_mask.remove()
            with torch.no_grad():
                torch.testing.assert_close(plain(**batch).logits, model(**batch).logits, rtol=0, atol=0)
        else:  # transformers does not know the reducer: N features for K placeholders
            with pytest.raises(ValueError, match="Image features and image tokens do not match"), torch.no_grad():
                plain(**batch)


# -- distillation ----------------------------------------------------------------------------------------------------

def test_the_teacher_batch_expands_each_image_to_n_tokens_and_keeps_the_answers_in_order():
    model, processor = _tiny()
    teacher_features = _features(processor)
    image_id = model.config.image_token_id
    _, student_processor, _, _ = _reduce("select", 0.25)
    student = _features(student_processor)
    labels = student["input_ids"].clone()
    labels[:, :-3] = -100
    rebuilt = teacher_batch({**student, "labels": labels}, image_token_id=image_id, student_tokens=4,
                            teacher_tokens=16, teacher_image_size=32, pad_id=0)
    assert torch.equal(rebuilt["input_ids"], teacher_features["input_ids"])
    assert torch.equal(rebuilt["attention_mask"], teacher_features["attention_mask"])
    assert torch.equal(rebuilt["labels"][rebuilt["labels"] != -100], labels[labels != -100])


# -- deployment ------------------------------------------------------------------------------------------------------

@pytest.mark.slow  # two ONNX exports and an ONNX Runtime check: 20-90 s on 2 shared cores
@pytest.mark.parametrize("method", ["select", "resolution", "vision-merge"])
def test_the_exported_vision_graph_gives_k_tokens_and_onnx_runtime_answers_as_pytorch(method, tmp_path):
    import onnx

    from dsvl_adapt.export.onnx import export_onnx
    from dsvl_adapt.runtimes.onnxruntime import OnnxRuntimeModel

    model, processor, budget, _ = _reduce(method, 0.25)
    batch = _features(processor)
    report = export_onnx(model, tmp_path, batch, split=True)
    assert report.num_image_tokens == budget.image_tokens and report.within_tolerance
    graph = onnx.load(tmp_path / "vision.onnx")
    dims = [d.dim_value or d.dim_param for d in graph.graph.output[0].type.tensor_type.shape.dim]
    assert dims[1:] == [budget.image_tokens, model.config.text_config.hidden_size]
    runtime = OnnxRuntimeModel.load(tmp_path)
    assert runtime.image_embeddings({"pixel_values": batch["pixel_values"]}).shape[1] == budget.image_tokens
    with torch.no_grad():
        expected = model.generate(**batch, max_new_tokens=4, do_sample=False)[:, batch["input_ids"].shape[1]:]
    got = np.asarray(runtime.generate(batch, 4))
    assert np.array_equal(got, expected.numpy())

    # OpenVINO, converted from the same graphs (int8 weights): K embeddings from its vision graph too
    from dsvl_adapt.quantization import QuantizeConfig
    from dsvl_adapt.runtimes.openvino import OpenVinoModel, quantize_openvino

    quantize_openvino(tmp_path, tmp_path / "openvino", QuantizeConfig(backend="openvino", mode="weight_only"),
                      [dict(batch, labels=batch["input_ids"])])
    openvino = OpenVinoModel.load(tmp_path / "openvino")
    assert openvino.image_embeddings({"pixel_values": batch["pixel_values"]}).shape[1] == budget.image_tokens
    assert np.isfinite(openvino.forward(batch)).all()


# -- plugins ---------------------------------------------------------------------------------------------------------

def test_a_plugin_registers_a_reducer_through_the_hook(tmp_path):
    """The centre-window example of docs/plugins/hooks.md, registered as a plugin, applied and restored."""
    import re
    import types

    from dsvl_adapt.plugins import PluginManager

    text = (Path(__file__).resolve().parents[2] / "docs" / "plugins" / "hooks.md").read_text()
    section = text.split("## dsvl_adapt_register_token_reducers")[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    plugin = types.ModuleType("centre_plugin")
    exec(compile(code, "hooks.md", "exec"), plugin.__dict__)
    manager = PluginManager(load_entry_points=False)
    manager.register(plugin, name="centre-plugin")
    reducers = manager.registry.token_reducers
    assert {"select", "resolution", "centre-window"} <= set(reducers.names())
    assert reducers.owner("centre-window") == "centre-plugin"
    model, processor = _tiny()
    budget, _ = apply_token_budget(model, processor, reducers.get("centre-window"), keep=0.25)
    assert budget.image_tokens == 4
    batch = _features(processor)
    with torch.no_grad():
        features = model.model.get_image_features(batch["pixel_values"]).pooler_output
    assert features.shape[1] == 4


# -- the whole run ---------------------------------------------------------------------------------------------------

@pytest.mark.slow  # a complete tiny run with prune.tokens: about 3 min on 2 shared cores
def test_a_run_with_a_token_budget_states_k_in_its_scorecard_and_exports_k_tokens(tmp_path):
    import dsvl_adapt

    card = dsvl_adapt.run(["vertical=medical", "model=reference-tiny", "finetune=fast", "distill=fast",
                           "data.train_size=48", "data.validation_size=8", "data.test_size=12",
                           "score.latency_repeats=3", "score.latency_warmup=1", "prune.tokens.keep=0.25",
                           "prune.tokens.method=select"], run_dir=str(tmp_path))
    assert card.tokens["teacher"].image_tokens == 16 and card.tokens["teacher"].method is None
    assert card.tokens["student"].image_tokens == 4 and card.tokens["student"].method == "select"
    assert card.tokens["student"].ttft_ms is not None and card.tokens["teacher"].ttft_ms is not None
    assert "## Visual tokens" in (tmp_path / "scorecard.md").read_text()
    assert 'id="tokens"' in (tmp_path / "scorecard.html").read_text()
    deployed = Path(card.runtimes[next(iter(card.runtimes))].path)
    exports = [p for p in (tmp_path / "stages").rglob("export.json")]
    assert exports and all(json.loads(p.read_text())["num_image_tokens"] == 4 for p in exports), deployed
    student, processor = load_checkpoint(tmp_path / "stages" / "distill" / "student")
    assert processor.num_image_tokens == 4 and recorded_budget(student.config).method == "select"


@pytest.mark.slow  # a tiny run without export: about a minute on 2 shared cores
def test_a_run_with_a_masking_method_scores_the_pytorch_student_and_states_k_of_n(tmp_path):
    import dsvl_adapt

    card = dsvl_adapt.run(["vertical=industrial", "model=reference-tiny", "finetune=fast", "distill=fast",
                           "data.train_size=48", "data.validation_size=8", "data.test_size=12",
                           "score.latency_repeats=3", "score.latency_warmup=1", "prune.tokens.keep=0.25",
                           "prune.tokens.method=window",
                           "pipeline.stages=[load,finetune,prune.structural,prune.weights,prune.tokens,distill,score]"],
                          run_dir=str(tmp_path))
    student = card.tokens["student"]
    assert (student.image_tokens, student.in_sequence, student.method) == (4, 16, "window")
    assert card.accuracy["student"] is not None
    assert "| student | 4 of 16 (mask) | window |" in (tmp_path / "scorecard.md").read_text()
    loaded, _ = load_checkpoint(tmp_path / "stages" / "distill" / "student")
    assert loaded.model.token_mask.image_tokens == 4


def test_distillation_under_a_budget_pairs_the_teacher_and_student_answers():
    """The student (K tokens) learns from the teacher (N tokens): KL and hidden MSE on paired positions."""
    from dsvl_adapt.config import DistillSection, TrainSchedule
    from dsvl_adapt.inject.distill import DistillLoss, budget_teacher_view

    teacher, teacher_processor = _tiny()
    student, student_processor, _, _ = _reduce("select", 0.25)
    batch = _features(student_processor)
    labels = batch["input_ids"].clone()
    labels[:, :-3] = -100
    batch["labels"] = labels
    view = budget_teacher_view(teacher, teacher_processor, student_processor)
    assert view is not None and budget_teacher_view(teacher, teacher_processor, teacher_processor) is None
    cfg = DistillSection(hidden_weight=1.0, train=TrainSchedule(steps=1, lr=1e-4))
    loss = DistillLoss(teacher, cfg, student.config, teacher_view=view)(student.train(), batch)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert student.model.aligner.linear1.weight.grad is not None
