"""Scale check: the real DeepSeek-VL-1.3B dimensions (random weights) prune, save and reload on a CPU box.

Takes a few minutes and ~7 GiB: run with ``python -m pytest -m slow tests/compress/test_scale.py``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

SCRIPT = """
import sys, torch
from transformers import AutoModelForImageTextToText
model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], local_files_only=True, dtype=torch.bfloat16).eval()
batch = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(**batch, use_cache=False).logits, sys.argv[3])
"""


@pytest.mark.slow
def test_deepseek_vl_1p3b_prunes_30_percent_saves_and_reloads(tmp_path):
    from transformers import AutoModelForImageTextToText

    from dsvl_adapt.compress.structural import StructuralPruneConfig, prune_structural
    from dsvl_adapt.models.exact_load import save_pruned
    from dsvl_adapt.models.presets import PRESETS, build_config

    preset = PRESETS["deepseek-vl-1.3b"]
    config = build_config(preset, vocab_size=102400, image_token_id=100015, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16).eval()
    before = sum(p.numel() for p in model.parameters())
    report = prune_structural(model, StructuralPruneConfig(lm_mlp_ratio=0.3))
    assert report.dims["lm.intermediate_size"] == [5632, 3936]
    assert report.params_after < before
    save_pruned(model, tmp_path / "pruned")
    ids = torch.randint(3, 1000, (1, preset.num_image_tokens + 16))
    ids[0, 1:1 + preset.num_image_tokens] = 100015
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "pixel_values": torch.randn(1, 3, 384, 384, dtype=torch.bfloat16)}
    with torch.no_grad():
        expected = model(**batch, use_cache=False).logits
    torch.save(batch, tmp_path / "batch.pt")
    del model
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "pruned"), str(tmp_path / "batch.pt"),
                          str(tmp_path / "logits.pt")], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)
