"""Prompts go through the checkpoint's chat template: what the SDK trains and scores on is what
``transformers.pipeline("image-text-to-text")`` sends the model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from dsvl_adapt.data.batches import IGNORE_INDEX, BatchEncoder
from dsvl_adapt.data.prompting import conversation
from dsvl_adapt.errors import ModelLoadError
from dsvl_adapt.models.checkpoint import build_reference, save_checkpoint
from dsvl_adapt.models.tokenizer import BOS, DEEPSEEK_VL_CHAT_TEMPLATE, EOS, IMAGE, train_tokenizer
from dsvl_adapt.schemas import PromptTemplate, Row

# A chat template as user checkpoints ship them, unlike the reference presets' one on purpose: it writes
# the begin-of-sentence token itself, adds a default system text when none is given, puts the image on a
# line of its own, trims texts, and closes an assistant turn with the end token only when another follows.
USER_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] != 'system' -%}{{ 'You are a helpful assistant.\\n\\n' }}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'][0]['text'] | trim }}{{ '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'User: ' }}"
    "{%- for c in message['content'] -%}{%- if c['type'] == 'image' -%}{{ '<image_placeholder>\\n' }}"
    "{%- else -%}{{ c['text'] | trim }}{%- endif -%}{%- endfor -%}{{ '\\n\\n' }}"
    "{%- else -%}{{ 'Assistant: ' }}{{ message['content'][0]['text'] | trim }}"
    "{%- if not loop.last -%}{{ eos_token }}{%- endif -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)
PROMPT = PromptTemplate(name="inspect", system="Inspect the part.", user="{question}")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["Inspect the part. What defect is visible? scratch dent stain crack none"] * 20,
                           vocab_size=400)


def _row(answer: str = "scratch") -> Row:
    return Row(id="r1", image=Image.new("RGB", (40, 30), (200, 10, 10)), question="What defect is visible?",
               answer=answer)


def _processor(tokenizer, template: str | None):
    _model, processor = build_reference("reference-tiny", tokenizer)
    processor.chat_template = template
    return processor


@pytest.mark.parametrize("template", [DEEPSEEK_VL_CHAT_TEMPLATE, USER_TEMPLATE], ids=["reference", "user"])
def test_prompt_ids_are_what_apply_chat_template_gives_and_labels_cover_the_answer_exactly(tokenizer, template):
    processor = _processor(tokenizer, template)
    encoder = BatchEncoder(processor, PROMPT)
    row = _row()
    expected = processor.apply_chat_template(conversation(PROMPT, row), add_generation_prompt=True, tokenize=True,
                                             return_dict=True, return_tensors="pt")
    encoded = encoder.encode(row)
    assert encoded.prompt_ids == expected["input_ids"][0].tolist()
    assert torch.equal(encoded.pixels["pixel_values"], expected["pixel_values"][0])
    assert encoded.prompt_ids.count(tokenizer.bos_token_id) == 1  # a template writing BOS gets no second one
    assert encoded.prompt_ids.count(tokenizer.convert_tokens_to_ids(IMAGE)) == 16  # reference-tiny's image tokens

    batch = encoder.training_batch([encoded])
    labelled = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == f" scratch{EOS}"
    prompt_length = len(encoded.prompt_ids)
    assert (batch["labels"][0, :prompt_length] == IGNORE_INDEX).all()
    assert batch["input_ids"][0, :prompt_length].tolist() == encoded.prompt_ids


def test_user_template_is_the_format_not_the_sdk_one(tokenizer):
    row = _row()
    user = BatchEncoder(_processor(tokenizer, USER_TEMPLATE), PROMPT).prompt_text(row)
    reference = BatchEncoder(_processor(tokenizer, DEEPSEEK_VL_CHAT_TEMPLATE), PROMPT).prompt_text(row)
    assert user == f"{BOS}Inspect the part.\n\nUser: {IMAGE}\nWhat defect is visible?\n\nAssistant:"
    assert reference == f"Inspect the part.\n\nUser: {IMAGE}What defect is visible?\n\nAssistant:"


def test_processor_without_template_gets_deepseek_vl_format_and_saved_folders_carry_it(tmp_path, tokenizer):
    from transformers import AutoProcessor

    encoder = BatchEncoder(_processor(tokenizer, None), PROMPT)
    assert encoder.prompter.template_added and encoder.processor.chat_template == DEEPSEEK_VL_CHAT_TEMPLATE
    model, processor = build_reference("reference-tiny", tokenizer)
    processor.chat_template = None
    save_checkpoint(model, processor, tmp_path / "m")  # e.g. a stage that encoded no row before saving
    reloaded = AutoProcessor.from_pretrained(tmp_path / "m", local_files_only=True)
    assert reloaded.apply_chat_template(conversation(PROMPT, _row()), add_generation_prompt=True,
                                        tokenize=False) == encoder.prompt_text(_row())


def test_template_whose_answer_does_not_extend_the_prompt_is_refused_with_the_fix(tokenizer):
    broken = USER_TEMPLATE.replace("{{ 'Assistant: ' }}", "{{ 'Bot: ' }}")
    encoder = BatchEncoder(_processor(tokenizer, broken), PROMPT)
    with pytest.raises(ModelLoadError, match="chat_template.jinja"):
        encoder.encode(_row())


def test_pipeline_feeds_the_model_the_prompt_the_sdk_scores_with(tmp_path, tokenizer):
    """``pipeline("image-text-to-text")`` on a saved model directory with a user template: its input ids (the
    prefix of what it returns with ``return_tensors=True``) and its greedy continuation equal the SDK's."""
    from transformers import pipeline

    from dsvl_adapt.score.generate import generate_answers

    model, processor = build_reference("reference-tiny", tokenizer, seed=5)
    processor.chat_template = USER_TEMPLATE
    save_checkpoint(model, processor, tmp_path / "m")
    pipe = pipeline("image-text-to-text", model=str(tmp_path / "m"))
    encoder = BatchEncoder(processor, PROMPT)
    rows = [_row(), Row(id="r2", image=Image.new("RGB", (32, 32), (10, 200, 10)), question="Any dent?",
                        answer="none")]
    items = encoder.encode_all(rows)
    answers = generate_answers(model, encoder, items, batch_size=2, max_new_tokens=4)
    for row, item, answer in zip(rows, items, answers):
        out = pipe(text=conversation(PROMPT, row), max_new_tokens=4, do_sample=False, return_tensors=True)
        ids = out[0]["generated_token_ids"].tolist()
        assert ids[: len(item.prompt_ids)] == item.prompt_ids
        assert tokenizer.decode(ids[len(item.prompt_ids):], skip_special_tokens=True).strip() == answer


# -- end to end ----------------------------------------------------------------------------------------------

SMALL = ["vertical=industrial", "data.train_size=48", "data.validation_size=8", "data.test_size=12",
         "score.latency_repeats=3", "score.latency_warmup=1", "score.general_size=0"]
# Enough full fine-tuning (150 steps) that reference-tiny answers differently from row to row (about half of
# them right), so that equal predictions say something; no quantize/export: the scored student is PyTorch.
TRAIN = ["finetune=fast", "distill=fast", "pipeline.stages=[load,finetune,prune.structural,distill,score]",
         "finetune.full_when=always", "finetune.full.steps=150", "finetune.full.lr=3e-3",
         "finetune.full.eval_every=1000", "finetune.full.checkpoint_every=1000"]

PIPELINE_SCRIPT = """
import json, sys
from PIL import Image
from transformers import pipeline
directory, rows_file, system, max_new_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
pipe = pipeline("image-text-to-text", model=directory)
answers = []
for row in json.load(open(rows_file)):
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": [{"type": "image", "image": Image.open(row["image"]).convert("RGB")},
                                             {"type": "text", "text": row["question"]}]}]
    out = pipe(text=messages, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)
    answers.append(out[0]["generated_text"].strip())
print(json.dumps(answers))
"""


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["reference-tiny", "user-template"])
def test_student_answers_through_pipeline_as_the_scorecard_says(tmp_path, checkpoint):
    """The PyTorch student directory (``stages/distill/student``) answered by ``pipeline("image-text-to-text",
    model=DIR)`` — chat messages holding the vertical's system text and a PIL image, greedy, the vertical's
    ``max_answer_tokens`` — gives, row by row on all 12 test rows, the predictions of the score stage's
    ``predictions-student.jsonl``; the scorecard's student accuracy is that of those predictions.

    ``reference-tiny``: the preset as built, with its DeepSeek-VL chat template. ``user-template``: the same
    tiny base saved as a local checkpoint whose ``chat_template.jinja`` is :data:`USER_TEMPLATE`; the run then
    trains, scores and saves the student in that format.
    """
    import dsvl_adapt
    from conftest import write_test_listing
    from dsvl_adapt.plugins import get_registry

    if checkpoint == "reference-tiny":
        model = ["model=reference-tiny"]
    else:
        dsvl_adapt.run([*SMALL, "model=reference-tiny", "pipeline.stages=[load]"], run_dir=tmp_path / "base")
        shutil.copytree(tmp_path / "base" / "stages" / "load" / "base", tmp_path / "user")
        (tmp_path / "user" / "chat_template.jinja").write_text(USER_TEMPLATE)
        model = ["model=local", f"model.path={tmp_path / 'user'}"]
    card = dsvl_adapt.run([*SMALL, *model, *TRAIN], run_dir=tmp_path / "run")
    student = tmp_path / "run" / "stages" / "distill" / "student"
    if checkpoint == "user-template":
        assert (student / "chat_template.jinja").read_text() == USER_TEMPLATE

    predictions_file = tmp_path / "run" / "stages" / "score" / "predictions-student.jsonl"
    write_test_listing(predictions_file, card.test_rows, tmp_path)
    predictions = [json.loads(line) for line in predictions_file.read_text().splitlines()]
    registry = get_registry()
    vertical = registry.verticals.get("industrial")
    result = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(student), str(tmp_path / "rows.json"),
                             registry.prompts.get(vertical.prompt).system, str(vertical.max_answer_tokens)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    expected = [p["prediction"] for p in predictions]
    assert len(set(expected)) > 1, f"the student gives one answer to every row ({expected}): the check says nothing"
    assert answers == expected
    metric = registry.metrics.get(vertical.primary_metric)
    accuracy = metric.compute(answers, [p["reference"] for p in predictions])
    assert card.accuracy["student"] == pytest.approx(accuracy, abs=1e-6)
