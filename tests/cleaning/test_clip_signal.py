"""The optional CLIP signal reads a local checkpoint (nothing downloaded): a tiny random CLIP saved here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins of bytes that byte-level BPE vocabularies (GPT-2, CLIP) use."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def _tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir()
    symbols = _byte_symbols()
    vocab = {token: index for index, token in enumerate(symbols + [s + "</w>" for s in symbols]
                                                      + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(text_config={**small, "vocab_size": len(vocab), "max_position_embeddings": 77},
                        vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("threshold, flagged_all", [(2.5, True), (0.0, False)])
def test_clip_similarity_flags_rows_under_the_threshold(tmp_path: Path, threshold: float, flagged_all: bool):
    from PIL import Image

    from dsvl_adapt.cleaning.data import CleaningData
    from dsvl_adapt.cleaning.runner import run_checks
    from dsvl_adapt.config import CleanSection
    from dsvl_adapt.data.loading import Split
    from dsvl_adapt.plugins import get_registry
    from dsvl_adapt.schemas import Row

    checkpoint = _tiny_clip(tmp_path / "clip")
    rows = [Row(id=str(i), image=Image.new("RGB", (40, 40), (40 * i, 90, 200 - 30 * i)), question="What colour?",
                answer=["red", "blue", "green"][i % 3]) for i in range(5)]
    settings = CleanSection(clip={"path": checkpoint, "threshold": threshold})
    check = get_registry().data_checks.get("clip-similarity")
    report = run_checks(CleaningData("ecommerce", {"train": Split("train", rows)}, settings, log=lambda m: None),
                        [check], {})
    assert report.checks["clip-similarity"]["status"] == "ran"
    flagged = {f.row_id for f in report.findings if f.reason == "clip_mismatch"}
    assert flagged == ({r.id for r in rows} if flagged_all else set())


def test_clip_path_must_be_a_local_folder(tmp_path: Path):
    from dsvl_adapt.config import CleanSection

    with pytest.raises(ValueError, match="is not a local folder"):
        CleanSection(clip={"path": tmp_path / "missing"})
