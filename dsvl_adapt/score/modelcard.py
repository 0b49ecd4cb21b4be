"""A Hugging Face model card (``README.md``) for a model that dsvl-adapt saved.

The front matter is what the Hub reads (library, pipeline tag, tags); the body summarises the
scorecard — accuracy and retention, size, latency, hardware targets — and shows how to load the
model with ``transformers`` alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .plots import byte_unit
from .scorecard import Scorecard, _fmt, fit_text, verdict_text


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar, quotes and all


def _tag(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-") or "unknown"


def _change(new: float | None, old: float | None) -> str:
    if new is None or not old:
        return ""
    return " (same as the teacher)" if new == old else f" ({new / old - 1:+.0%} vs teacher)"


def render_model_card(card: Scorecard, model_name: str, role: str = "student", *, system: str = "",
                      question: str = "Describe any defect.") -> str:
    """The model card of ``role`` (the delivered ``student`` unless told) as Markdown with YAML front matter.

    ``model_name`` is what ``from_pretrained`` is given in the usage snippet: a Hub repo id or a path.
    ``system`` and ``question`` go into the snippet's chat messages: the vertical's system text and a
    question as the model was trained on them (through its chat template, as the snippet sends them).
    """
    tags = ["dsvl-adapt", _tag(card.vertical), "deepseek-vl", "vision-language"]
    student, teacher = card.size.get("student"), card.size.get("teacher")
    compressed = role == "student" and student is not None and teacher is not None and student.bytes < teacher.bytes
    if compressed:
        tags.append("compressed")
    front = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text", "tags:",
             *(f"  - {_yaml_str(t)}" for t in dict.fromkeys(tags)), "---", ""]
    source = card.provenance.get("config", {}).get("model", {}) if isinstance(card.provenance.get("config"), dict) \
        else {}
    origin = source.get("path") or (f"preset {source['preset']}" if source.get("preset") else None)
    lines = [f"# {model_name.rsplit('/', 1)[-1]}", "",
             f"A DeepSeek-VL model adapted to the **{card.vertical}** vertical with "
             f"dsvl-adapt ({role}{', compressed from the fine-tuned teacher' if compressed else ''})."
             + (f" Adapted from `{origin}`." if origin else ""), ""]

    # -- summary ---------------------------------------------------------------------------
    value = card.accuracy.get(role)
    lines += ["## Results", "",
              (f"Evaluated on {f'{card.test_rows} ' if card.test_rows else ''}held-out test rows of the "
               f"{card.vertical} task."), "",
              "| | " + " | ".join(card.accuracy) + " |", "|---|" + "---|" * len(card.accuracy)]
    names = list(dict.fromkeys(n for values in card.metrics.values() for n in values))
    for name in names:
        label = f"**{name}** (primary)" if name == card.metric else name
        lines.append(f"| {label} | " + " | ".join(_fmt(card.metrics.get(m, {}).get(name)) for m in card.accuracy)
                     + " |")
    if card.general:
        lines.append("| general capability | " + " | ".join(_fmt(card.general.get(m)) for m in card.accuracy)
                     + " |")
    lines.append("")
    if value is not None:
        lines.append(f"- **{card.metric}: {_fmt(value)}**")
    if card.retention is not None:
        lines.append(f"- retention (student / teacher {card.metric}): **{_fmt(card.retention)}**")
    if card.objectives:
        lines.append(f"- {verdict_text(card)}")
    size = card.size.get(role)
    teacher_size = card.size.get("teacher")
    if size is not None:
        div, unit = byte_unit(size.bytes)
        lines.append(f"- size on disk: {size.bytes / div:.1f} {unit}"
                     f"{_change(size.bytes, teacher_size and teacher_size.bytes)}")
    if role in card.params:
        lines.append(f"- parameters: {card.params[role]:,}{_change(card.params[role], card.params.get('teacher'))}")
    lat = card.latency.get(role)
    if lat is not None:
        teacher_lat = card.latency.get("teacher")
        how = (f"measured with {lat.runtime} on {lat.cpu}, {lat.threads} threads, batch {lat.batch_size}"
               if lat.measured else f"estimated: {lat.estimate or 'method not recorded'}")
        lines.append(f"- latency (one forward over image + prompt): p50 {lat.p50_ms:.1f} ms, p90 {lat.p90_ms:.1f} ms"
                     f"{_change(lat.p90_ms, teacher_lat and teacher_lat.p90_ms)}, p99 {lat.p99_ms:.1f} ms ({how})")
        if lat.decode_ms_per_token is not None:
            lines.append(f"- decoding: {lat.decode_ms_per_token:.1f} ms per token")
    lines.append("")

    if card.targets:
        lines += ["## Hardware targets", "", "| target | device | runtime | fits | checks |", "|---|---|---|---|---|"]
        for target in card.targets:
            checks = []
            for c in target.checks:
                state = "unknown" if c.ok is None else ("ok" if c.ok else "**failed**")
                figure = "" if c.value is None else f" {_fmt(c.value)}{(' ' + c.unit) if c.unit else ''}"
                checks.append(f"{c.name}{figure}: {state}{' (estimated)' if c.estimated else ''}")
            lines.append(f"| {target.name} | {target.device} | {target.runtime} | "
                         f"{'yes' if target.fits else '**' + (fit_text(target) if target.status == 'unknown' else target.status) + '**'}"
                         f" | {'; '.join(checks)} |")
        estimated = [(t.name, c) for t in card.targets for c in t.checks if c.estimated]
        if estimated:
            lines += ["", "Estimated figures (not measured on the target):", ""]
            lines += [f"- {name} {c.name}: {c.note or 'method not recorded'}" for name, c in estimated]
        lines.append("")

    from .lineage import lineage_model_card

    lines += lineage_model_card(card.lineage)

    # -- usage -----------------------------------------------------------------------------
    system_message = ([f'messages = [{{"role": "system", "content": [{{"type": "text", "text": {_yaml_str(system)}}}]}},',
                       '            {"role": "user", "content": [{"type": "image", "image": image},']
                      if system else ['messages = [{"role": "user", "content": [{"type": "image", "image": image},'])
    lines += ["## How to use", "",
              "The model was trained and scored on prompts rendered by its own chat template "
              f"(`chat_template.jinja`){', with the system text below' if system else ''}: send the same "
              "messages.", "",
              "With `transformers` alone (no dsvl-adapt needed):", "", "```python",
              "from PIL import Image",
              "from transformers import pipeline", "",
              f'pipe = pipeline("image-text-to-text", model={_yaml_str(model_name)})',
              'image = Image.open("example.png").convert("RGB")',
              *system_message,
              f'                                         {{"type": "text", "text": {_yaml_str(question)}}}]}}]',
              "print(pipe(text=messages, max_new_tokens=64, do_sample=False, return_full_text=False)"
              '[0]["generated_text"])',
              "```", "",
              "or, step by step:", "", "```python",
              "from transformers import AutoModelForImageTextToText, AutoProcessor", "",
              f"model = AutoModelForImageTextToText.from_pretrained({_yaml_str(model_name)})",
              f"processor = AutoProcessor.from_pretrained({_yaml_str(model_name)})",
              "inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,",
              '                                       return_dict=True, return_tensors="pt")',
              "output = model.generate(**inputs, max_new_tokens=64, do_sample=False)",
              'print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
              "```", ""]

    prov = card.provenance
    facts = [f"{k}: `{prov[k]}`" for k in ("git_revision", "seed") if prov.get(k) is not None]
    versions = prov.get("versions") or {}
    if versions:
        facts.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if facts or card.notes:
        lines += ["## Provenance", "", *(f"- {f}" for f in facts), *(f"- {n}" for n in card.notes), ""]
    lines += [("The full scorecard (`scorecard.json`, `scorecard.md`, `scorecard.html`) is in the run folder "
               "that produced this model."), ""]
    return "\n".join(front + lines)


def write_model_card(card: Scorecard, model_dir: str | Path, model_name: str | None = None,
                     role: str = "student", *, system: str = "", question: str = "Describe any defect.") -> Path:
    """Write ``README.md`` into ``model_dir``; ``model_name`` defaults to the folder's path."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "README.md"
    path.write_text(render_model_card(card, model_name or str(model_dir), role=role, system=system,
                                      question=question), encoding="utf-8")
    return path
