"""Models the SDK writes are ordinary Hugging Face checkpoints: transformers alone reproduces the run's answers."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, sys
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
directory, rows_file, system = sys.argv[1], sys.argv[2], sys.argv[3]
model = AutoModelForImageTextToText.from_pretrained(directory, local_files_only=True).eval()
processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
answers = []
for row in json.load(open(rows_file)):
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.open(row["image"]).convert("RGB")], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    answers.append(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
print(json.dumps(answers))
"""


def test_teacher_answers_the_same_with_transformers_alone_in_a_new_process(tiny_run, tmp_path):
    from conftest import write_test_listing
    from dsvl_adapt.plugins import get_registry

    card = json.loads((tiny_run / "scorecard.json").read_text())
    predictions_file = tiny_run / "stages" / "score" / "predictions-teacher.jsonl"
    write_test_listing(predictions_file, card["test_rows"], tmp_path)
    predictions = [json.loads(line) for line in predictions_file.read_text().splitlines()]
    system = get_registry().prompts.get("industrial-inspection").system
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_run / "stages" / "finetune" / "teacher"),
                             str(tmp_path / "rows.json"), system], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [p["prediction"] for p in predictions]
