"""Models: offline tokenizer, reference presets, complete checkpoints that transformers alone loads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dsvl_adapt.errors import ModelLoadError
from dsvl_adapt.models.checkpoint import build_reference, load_checkpoint, save_checkpoint
from dsvl_adapt.models.presets import PRESETS, build_config
from dsvl_adapt.models.tokenizer import BOS, EOS, IMAGE, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["What defect is visible? scratch dent stain crack none"] * 20, vocab_size=400)


def test_tokenizer_carries_deepseek_special_tokens(tokenizer):
    assert tokenizer.bos_token == BOS and tokenizer.eos_token == EOS
    assert tokenizer.image_token == IMAGE
    ids = tokenizer(f"User: {IMAGE}hi")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.convert_tokens_to_ids(IMAGE)) == 1


@pytest.mark.parametrize("name", ["reference-tiny", "reference-small", "reference-base", "deepseek-vl-1.3b"])
def test_presets_have_expected_sizes(name):
    config = build_config(name, vocab_size=102400, image_token_id=100015)
    text, vision = config.text_config, config.vision_config
    assert (vision.image_size // vision.patch_size) ** 2 == PRESETS[name].num_image_tokens
    if name == "deepseek-vl-1.3b":
        assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (2048, 5632, 24)
        assert (vision.hidden_size, vision.image_size, vision.patch_size) == (1024, 384, 16)
        assert config.tie_word_embeddings


CHAT = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What defect?"}]}]


def test_reference_chat_template_is_deepseek_vl_format(tokenizer):
    _model, processor = build_reference("reference-tiny", tokenizer)
    text = processor.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text == f"Be brief.\n\nUser: {IMAGE}What defect?\n\nAssistant:"
    answered = CHAT + [{"role": "assistant", "content": [{"type": "text", "text": "scratch"}]}]
    assert processor.apply_chat_template(answered, tokenize=False) == \
        f"Be brief.\n\nUser: {IMAGE}What defect?\n\nAssistant: scratch{EOS}\n\n"


@pytest.mark.parametrize("preset", ["reference-tiny", "reference-tiny-hybrid"])
def test_saved_checkpoint_loads_with_transformers_alone_in_a_new_process(tmp_path, tokenizer, preset):
    from PIL import Image

    model, processor = build_reference(preset, tokenizer, seed=3)
    save_checkpoint(model, processor, tmp_path / "m")
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    prompt = processor.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.save({k: v for k, v in inputs.items()}, tmp_path / "inputs.pt")
    script = f"""
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
model = AutoModelForImageTextToText.from_pretrained({str(tmp_path / 'm')!r}, local_files_only=True)
processor = AutoProcessor.from_pretrained({str(tmp_path / 'm')!r}, local_files_only=True)
assert processor.apply_chat_template({CHAT!r}, add_generation_prompt=True, tokenize=False) == {prompt!r}
inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
with torch.no_grad():
    torch.save(model(**inputs).logits, {str(tmp_path / 'out.pt')!r})
print(type(model).__name__, type(processor).__name__)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "DeepseekVL" in out.stdout
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


def test_pickled_weights_are_refused_by_default(tmp_path, tokenizer):
    model, processor = build_reference("reference-tiny", tokenizer)
    directory = tmp_path / "pickled"
    save_checkpoint(model, processor, directory)
    (directory / "model.safetensors").unlink()
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        load_checkpoint(directory)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_checkpoint(tmp_path)


def test_trust_remote_code_warns(tmp_path, tokenizer):
    model, processor = build_reference("reference-tiny", tokenizer)
    save_checkpoint(model, processor, tmp_path / "m")
    with pytest.warns(UserWarning, match="trust_remote_code"):
        load_checkpoint(tmp_path / "m", trust_remote_code=True)


def test_save_records_info(tmp_path, tokenizer):
    model, processor = build_reference("reference-tiny", tokenizer)
    save_checkpoint(model, processor, tmp_path / "m", role="teacher")
    assert json.loads((tmp_path / "m" / "dsvl_adapt.json").read_text())["role"] == "teacher"
