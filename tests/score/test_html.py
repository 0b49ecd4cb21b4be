"""scorecard.html and the model card, from a Scorecard built here (no pipeline run).

The browser test renders the page in headless Chromium (Debian package ``chromium``) and checks
that every embedded plot decoded and drew something; it skips when ``chromium`` is not on PATH.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsvl_adapt.score.html import render_html, write_html
from dsvl_adapt.score.modelcard import render_model_card, write_model_card
from dsvl_adapt.score.plots import scorecard_plots
from dsvl_adapt.score.scorecard import (
    FitCheck,
    Generation,
    Latency,
    ObjectiveCheck,
    Scorecard,
    Size,
    TargetFit,
    render_markdown,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WINDOW = (1200, 3000)


def sample_card() -> Scorecard:
    """A DeepSeek-VL-1.3B-sized industrial run: bf16 teacher, pruned + int8 student."""
    cpu = {"runtime": "torch-eager", "threads": 8, "cpu": "Intel Xeon Gold 6338", "warmup": 3, "repeats": 20}
    metrics = {
        "base": {"accuracy": 0.412, "miss_rate": 0.31, "overkill_rate": 0.22},
        "teacher": {"accuracy": 0.915, "miss_rate": 0.04, "overkill_rate": 0.06},
        "student": {"accuracy": 0.889, "miss_rate": 0.06, "overkill_rate": 0.07},
    }
    return Scorecard(
        vertical="industrial", metric="accuracy",
        accuracy={m: v["accuracy"] for m, v in metrics.items()}, retention=round(0.889 / 0.915, 6),
        metrics=metrics, general={"base": 0.61, "teacher": 0.58, "student": 0.55},
        latency={
            "teacher": Latency(p50_ms=812.4, p90_ms=861.0, p99_ms=934.7, decode_ms_per_token=41.2, **cpu),
            "student": Latency(p50_ms=301.9, p90_ms=322.5, p99_ms=350.1, decode_ms_per_token=17.8, **cpu),
        },
        generation={
            "teacher": Generation(ttft_ms=795.3, tpot_ms=39.7, tokens_per_s=21.4, answer_tokens=6,
                                  max_answer_tokens=16, tokens_per_s_64=23.9, kv_cache_bytes_per_token=196_608,
                                  kv_cache=True, runtime="torch (torch-bf16)", threads=8,
                                  cpu="Intel Xeon Gold 6338", warmup=1, repeats=3),
            "student": Generation(ttft_ms=288.6, tpot_ms=12.3, tokens_per_s=64.2, answer_tokens=6,
                                  max_answer_tokens=16, tokens_per_s_64=71.8, kv_cache_bytes_per_token=98_304,
                                  kv_cache=True, runtime="openvino (openvino-int8-f32)", threads=8,
                                  cpu="Intel Xeon Gold 6338", warmup=1, repeats=3),
        },
        size={
            "base": Size(bytes=3_950_000_000, weight_bytes=3_946_000_000,
                         by_component={"vision": 1_180_000_000, "aligner": 24_000_000,
                                       "language_model": 2_742_000_000}),
            "teacher": Size(bytes=3_951_000_000, weight_bytes=3_946_000_000,
                            by_component={"vision": 1_180_000_000, "aligner": 24_000_000,
                                          "language_model": 2_742_000_000}),
            "student": Size(bytes=1_112_000_000, weight_bytes=1_104_000_000,
                            by_component={"vision": 590_000_000, "aligner": 6_000_000, "language_model": 508_000_000}),
        },
        params={"base": 1_973_000_000, "teacher": 1_973_000_000, "student": 1_104_000_000},
        peak_rss_bytes=9_800_000_000,
        targets=[
            TargetFit(name="cpu-xeon-ort", device="cpu", runtime="onnxruntime", fits=True, checks=[
                FitCheck(name="memory", ok=True, value=1.61, limit=16.0, unit="GB",
                         note="weights 1,104,000,000 B (measured) + KV cache (estimated)"),
                FitCheck(name="dtype", ok=True, value="int8", limit="fp32, int8"),
                FitCheck(name="opset", ok=True, value=17, limit="13-21"),
                FitCheck(name="latency_p90", ok=True, value=322.5, limit=400.0, unit="ms",
                         note="measured on Intel Xeon Gold 6338 (torch-eager)"),
            ]),
            TargetFit(name="edge-npu", device="npu", runtime="onnxruntime", fits=False, checks=[
                FitCheck(name="memory", ok=True, value=1.61, limit=8.0, unit="GB"),
                FitCheck(name="dtype", ok=True, value="int8", limit="int8"),
                FitCheck(name="opset", ok=True, value=17, limit="13-17"),
                FitCheck(name="ops", ok=False, value="GridSample, Einsum", note="unsupported op types listed"),
                FitCheck(name="latency_p90", ok=True, value=38.2, limit=50.0, unit="ms", estimated=True,
                         note="roofline: max(2 x 190,000,000,000 MACs / 26 TOPS = 14.6 ms, "
                              "1,104,000,000 bytes / 28.9 GB/s = 38.2 ms)"),
            ]),
            TargetFit(name="hospital-t4", device="gpu", runtime="tensorrt", fits=True, checks=[
                FitCheck(name="memory", ok=True, value=1.7, limit=16.0, unit="GB"),
                FitCheck(name="opset", ok=None, limit="13-19", note="no exported graph to inspect"),
                FitCheck(name="throughput", ok=None, limit=2.0, unit="req/s", estimated=True,
                         note="target gives no peak_tops[int8] or memory_bandwidth_gbps"),
            ]),
        ],
        objectives=[ObjectiveCheck(name="min_retention", ok=True, value=0.971585, limit=0.95),
                    ObjectiveCheck(name="min_accuracy", ok=True, value=0.889, limit=0.85)],
        verdict=True, skipped_rows={"test": 2}, test_rows=400,
        stages={"finetune": {"steps": 1200}}, notes=["structured pruning removed 38% of MLP channels"],
        provenance={"config": {"vertical": {"name": "industrial"}, "finetune": {"lora": {"r": 16}}},
                    "seed": 0, "git_revision": "abc1234", "versions": {"torch": "2.9.0"},
                    "run_dir": "runs/industrial-r16", "threads": 8, "cpu_count": 32},
    )


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', html)]


def test_plots_are_png_and_matplotlib_is_lazy() -> None:
    code = ("import sys, dsvl_adapt.score.plots, dsvl_adapt.score.html, dsvl_adapt.score.report, "
            "dsvl_adapt.score.modelcard; print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    plots = scorecard_plots(sample_card())
    assert set(plots) == {"accuracy", "latency_size", "size_breakdown", "target_fit"}
    from PIL import Image

    for name, png in plots.items():
        assert png.startswith(PNG_MAGIC), name
        image = Image.open(io.BytesIO(png))
        assert image.width >= 500 and image.height >= 150, (name, image.size)


def test_html_is_self_contained_and_has_every_section() -> None:
    card = sample_card()
    html = render_html(card)
    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html.lower()
    assert not re.search(r'(src|href)="(?!data:|#)', html), "no external assets"
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert len(_images(html)) == 4 and all(png.startswith(PNG_MAGIC) for png in _images(html))
    for text in ("Scorecard — industrial", "objectives met", "Accuracy", "accuracy (primary)", "miss_rate",
                 "general capability", "Retention (student / teacher, accuracy)", "0.972", "Speed and size",
                 "322.5", "torch-eager", "Intel Xeon Gold 6338", "1,104,000,000", "Weights per component",
                 "language_model", "Hardware targets", "edge-npu", "does NOT fit", "GridSample, Einsum",
                 "Objectives", "min_retention", "Skipped rows", "Notes", "38% of MLP channels", "Provenance",
                 "abc1234", "2 / 3", "-63% vs teacher", "Generation", "time to first token ms", "288.6", "71.8",
                 "98,304", "openvino (openvino-int8-f32)"):
        assert text in html, text
    # estimated figures say so, and how
    assert 'estimated</span><span class="how">roofline: max(2 x 190,000,000,000 MACs' in html
    assert 'estimated</span><span class="how">target gives no peak_tops' in html
    # every Markdown table row figure is in the HTML too
    markdown = render_markdown(card)
    for number in set(re.findall(r"\d+\.\d+", markdown)):
        assert number in html or number.rstrip("0").rstrip(".") in html, number


def test_html_escapes_and_handles_a_sparse_card(tmp_path: Path) -> None:
    card = Scorecard(vertical="<b>x</b>", metric="f1", accuracy={"teacher": 0.5}, retention=None,
                     metrics={"teacher": {"f1": 0.5}},
                     latency={"teacher": Latency(p50_ms=1, p90_ms=2, p99_ms=3, runtime="onnxruntime",
                                                 measured=False, estimate="scaled from fp32 x 0.5")},
                     notes=["a & b"])
    html = render_html(card)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html and "a &amp; b" in html
    assert "no objectives declared" in html and "Hardware targets" not in html
    assert "estimated</span><span class=\"how\">scaled from fp32 x 0.5" in html
    path = write_html(card, tmp_path / "out")
    assert path == tmp_path / "out" / "scorecard.html" and path.read_text().startswith("<!DOCTYPE html>")


def test_model_card(tmp_path: Path) -> None:
    card = sample_card()
    text = render_model_card(card, "acme/dsvl-industrial-int8")
    front, body = text.split("---\n", 2)[1:]
    assert "library_name: transformers" in front and "pipeline_tag: image-text-to-text" in front
    assert '- "dsvl-adapt"' in front and '- "industrial"' in front
    for fragment in ("0.889", "0.972", "322.5", "1060.5 MiB", "cpu-xeon-ort", "edge-npu", "does not fit",
                     "estimated", "AutoModelForImageTextToText.from_pretrained(\"acme/dsvl-industrial-int8\")",
                     "AutoProcessor.from_pretrained(\"acme/dsvl-industrial-int8\")"):
        assert fragment in body, fragment
    assert "import dsvl_adapt" not in body
    path = write_model_card(card, tmp_path / "student", "acme/x")
    assert path.name == "README.md" and "acme/x" in path.read_text()


def test_model_card_snippet_sends_the_trained_system_text_and_question() -> None:
    import ast

    text = render_model_card(sample_card(), "acme/x", system='Inspect "parts".', question="Which defect?")
    snippets = re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)
    assert len(snippets) == 2
    assignment = next(node for node in ast.parse(snippets[0]).body
                      if isinstance(node, ast.Assign) and node.targets[0].id == "messages")
    for node in ast.walk(assignment.value):  # the PIL image variable -> None, so the literal evaluates
        if isinstance(node, ast.Dict):
            node.values = [ast.Constant(None) if isinstance(v, ast.Name) else v for v in node.values]
    assert ast.literal_eval(assignment.value) == [
        {"role": "system", "content": [{"type": "text", "text": 'Inspect "parts".'}]},
        {"role": "user", "content": [{"type": "image", "image": None}, {"type": "text", "text": "Which defect?"}]}]
    assert 'pipeline("image-text-to-text", model="acme/x")' in snippets[0]
    assert "apply_chat_template(messages, add_generation_prompt=True" in snippets[1]
    no_system = render_model_card(sample_card(), "acme/x")
    assert '"role": "system"' not in no_system and "system text below" not in no_system


# -- in a real browser ---------------------------------------------------------------------------
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map((img) => {
    const r = img.getBoundingClientRect();
    return {complete: img.complete, w: img.naturalWidth, h: img.naturalHeight,
            x: r.left + scrollX, y: r.top + scrollY, cw: r.width, ch: r.height};
  });
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(images);
  document.body.appendChild(out);
});
</script>"""


def _chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    assert binary
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
               f"--window-size={WINDOW[0]},{WINDOW[1]}", *extra, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless browser test needs `chromium` on PATH (Debian: apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image, ImageStat

    html = render_html(sample_card())
    page = write_html(sample_card(), tmp_path)
    probed = tmp_path / "probed.html"  # the page itself plus a probe script (test only)
    probed.write_text(html.replace("</body>", PROBE + "</body>"))

    dom = _chromium(tmp_path, probed.as_uri(), "--virtual-time-budget=10000", "--dump-dom")
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.DOTALL)
    assert match, f"probe did not run: {dom.stderr[-2000:]}"
    images = json.loads(match.group(1).replace("&quot;", '"'))
    assert len(images) == 4
    for image in images:  # every plot decoded with its real size and is laid out
        assert image["complete"] and image["w"] >= 500 and image["h"] >= 150, image
        assert image["cw"] > 300 and image["ch"] > 80, image

    shot = tmp_path / "screenshot.png"
    result = _chromium(tmp_path, page.as_uri(), f"--screenshot={shot}", "--virtual-time-budget=10000")
    assert shot.is_file(), result.stderr[-2000:]
    screenshot = Image.open(shot).convert("L")
    assert screenshot.size == WINDOW
    assert ImageStat.Stat(screenshot).stddev[0] > 10, "screenshot is blank"
    visible = [i for i in images if i["y"] + i["ch"] <= WINDOW[1]]
    assert visible, "no plot in the first screen"
    for image in visible:  # the plot's region of the screenshot is drawn, not an empty box
        box = (int(image["x"]) + 2, int(image["y"]) + 2, int(image["x"] + image["cw"]) - 2,
               int(image["y"] + image["ch"]) - 2)
        region = screenshot.crop(box)
        assert ImageStat.Stat(region).stddev[0] > 15, (box, ImageStat.Stat(region).stddev)
        assert len(region.getcolors(256) or []) > 20, box


def test_training_section_shows_steps_of_the_budget_why_each_phase_stopped_and_the_curves() -> None:
    card = sample_card()
    history = [{"step": 0, "validation_loss": 6.1, "validation_exact_match": 0.0},
               *({"step": i, "loss": 6.0 / i} for i in range(1, 251)),
               {"step": 250, "loss": 0.02, "validation_loss": 0.0219, "validation_exact_match": 0.9844}]
    card.stages = {
        "finetune": {"full": {"steps": 250, "planned_steps": 300, "stop_reason": "exact_match", "precision": "fp32",
                              "history": history},
                     "lora": {"steps": 0, "planned_steps": 60, "stop_reason": "exact_match", "precision": "fp32",
                              "history": [{"step": 0, "validation_loss": 0.0219, "validation_exact_match": 0.9844}]}},
        "distill": {"steps": 120, "planned_steps": 120, "stop_reason": "steps", "precision": "bf16",
                    "history": [{"step": 120, "loss": 0.1, "validation_loss": 0.12, "validation_exact_match": 0.9688}]},
    }
    markdown = render_markdown(card)
    assert "| fine-tune (full) | 250 of 300 | 0.0219 | 0.984 | fp32 | validation exact match reached " \
           "stop_at_exact_match |" in markdown
    assert "| fine-tune (LoRA) | 0 of 60 | 0.0219 | 0.984 | fp32 | the model already reached stop_at_exact_match " \
           "before any step: nothing to gain |" in markdown
    assert "| distill | 120 of 120 | 0.1200 | 0.969 | bf16 | every step ran |" in markdown
    html = render_html(card)
    assert '<section id="training"><h2>Training</h2>' in html and "250 of 300" in html
    assert set(scorecard_plots(card)) == {"accuracy", "latency_size", "size_breakdown", "target_fit", "training"}
    assert len(_images(html)) == 5
