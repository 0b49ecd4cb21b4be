"""User checkpoints as they are published: bf16/fp16/fp32 weights, pickles, other architectures, and
compression that starts from the loaded checkpoint (no fine-tune)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from dsvl_adapt.errors import ModelLoadError
from dsvl_adapt.models.checkpoint import build_reference, load_checkpoint
from dsvl_adapt.models.dtype import compute_dtype, for_runtime, resolve_dtype
from dsvl_adapt.models.tokenizer import train_tokenizer

SMALL = ["vertical=industrial", "data.train_size=16", "data.validation_size=4", "data.test_size=4",
         "score.latency_repeats=1", "score.latency_warmup=0", "score.general_size=4"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DSVL_ADAPT_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def _stage(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "stages" / name / "stage.json").read_text())


def save_plain_checkpoint(directory: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A tiny DeepSeek-VL checkpoint as plain transformers writes it (``save_pretrained``): no dsvl-adapt files."""
    tokenizer = train_tokenizer(["What defect is visible? scratch dent stain crack none normal"] * 10,
                                vocab_size=400)
    model, processor = build_reference("reference-tiny", tokenizer, seed=1)
    model.to(dtype).save_pretrained(directory)
    processor.save_pretrained(directory)
    assert not any(p.name.startswith("dsvl_adapt") for p in directory.iterdir())
    return directory


def pickle_copy(source: Path, directory: Path) -> Path:
    """The same checkpoint with ``pytorch_model.bin`` instead of safetensors (transformers 5 no longer writes
    pickles itself, so the state dict is saved the way older releases did)."""
    from safetensors.torch import load_file

    shutil.copytree(source, directory)
    (directory / "model.safetensors").unlink()
    torch.save(load_file(source / "model.safetensors"), directory / "pytorch_model.bin")
    return directory


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_plain_checkpoint(tmp_path_factory.mktemp("user") / "bf16")


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    directory = tmp_path_factory.mktemp("user") / "llama"
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


# -- model.dtype --------------------------------------------------------------------------------

@pytest.mark.parametrize(("setting", "stored", "device", "stages", "expected"), [
    ("auto", "bfloat16", "cpu", ["load", "finetune", "score"], torch.float32),   # CPU training: fp32
    ("auto", "float16", "cpu", ["load", "prune.structural"], torch.float32),     # fp16 is slow on CPUs
    ("auto", "float32", "cpu", ["load", "export"], torch.float32),
    ("auto", "bfloat16", "cuda", ["load", "finetune"], torch.bfloat16),          # GPU: the checkpoint's own
    ("auto", "float16", "cuda", ["load", "finetune"], torch.float16),
    ("auto", None, "cpu", ["load"], torch.float32),
    ("bfloat16", "float32", "cpu", ["load", "finetune"], torch.bfloat16),         # explicit wins
    ("float32", "bfloat16", "cuda", ["load"], torch.float32),
])
def test_model_dtype_decides_the_weights_dtype(setting, stored, device, stages, expected):
    assert resolve_dtype(setting, stored, device=device, stages=stages) == expected


def test_a_bf16_checkpoint_stays_bf16_between_stages_when_nothing_trains():
    """Nothing trains: bf16 on disk and between stages halves the memory and the copy of a large checkpoint."""
    stages = ["load", "prune.structural", "export"]
    assert resolve_dtype("auto", "bfloat16", device="cpu", stages=stages) == torch.bfloat16


@pytest.mark.parametrize(("stored", "native_bf16", "device", "expected"), [
    (torch.bfloat16, True, "cpu", torch.bfloat16),    # bf16 in hardware: compute in it
    (torch.bfloat16, False, "cpu", torch.float32),    # emulated bf16 is several times slower than fp32
    (torch.float16, True, "cpu", torch.float32),      # fp16 is slow on CPUs
    (torch.float32, False, "cpu", torch.float32),
    (torch.bfloat16, False, "cuda", torch.bfloat16),  # a GPU computes in the stored dtype
])
def test_stages_compute_in_a_dtype_the_cpu_runs_at_speed(stored, native_bf16, device, expected):
    assert compute_dtype(stored, device=device, native_bf16=native_bf16) == expected


def test_for_runtime_casts_a_bf16_model_to_fp32_once():
    tokenizer = train_tokenizer(["a b c"], vocab_size=300)
    model, _ = build_reference("reference-tiny", tokenizer, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    model, cast_from = for_runtime(model)
    assert cast_from == "bfloat16"
    assert {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()} == {torch.float32}
    assert model.config.dtype == torch.float32
    assert for_runtime(model)[1] is None


def test_bf16_checkpoint_is_loaded_in_the_run_dtype_and_kept_when_nothing_trains(bf16_checkpoint, tmp_path):
    import dsvl_adapt

    # model.dtype=bfloat16 is what auto picks here on a CPU with bf16 in hardware (see the test above)
    dsvl_adapt.run(["model=local", f"model.path={bf16_checkpoint}", "model.dtype=bfloat16", "pipeline.stages=[load]"],
                   run_dir=tmp_path / "keep")
    keep = _stage(tmp_path / "keep", "load")
    assert keep["figures"]["checkpoint_dtype"] == keep["figures"]["dtype"] == "bfloat16"
    base = tmp_path / "keep" / "stages" / "load" / "base"
    assert (base / "model.safetensors").resolve() == (bf16_checkpoint / "model.safetensors").resolve()  # no copy

    dsvl_adapt.run(["model=local", f"model.path={bf16_checkpoint}", "model.dtype=float32", "pipeline.stages=[load]"],
                   run_dir=tmp_path / "fp32")
    figures = _stage(tmp_path / "fp32", "load")["figures"]
    assert (figures["checkpoint_dtype"], figures["dtype"]) == ("bfloat16", "float32")
    base = tmp_path / "fp32" / "stages" / "load" / "base"
    assert not (base / "model.safetensors").is_symlink()
    model, _ = load_checkpoint(base)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    original, _ = load_checkpoint(bf16_checkpoint)
    assert torch.equal(original.lm_head.weight.float(), model.lm_head.weight)


def test_a_bf16_checkpoint_is_pruned_in_the_cpus_compute_dtype_and_saved_in_bf16(bf16_checkpoint, tmp_path):
    """Nothing trains (auto): the base links to the checkpoint, pruning computes in fp32 on a CPU without bf16 in
    hardware (bf16 where it has it) and the student is written in bf16, reloading to the same logits."""
    import dsvl_adapt
    from safetensors import safe_open

    run_dir = tmp_path / "run"
    dsvl_adapt.run(["model=local", f"model.path={bf16_checkpoint}", "pipeline.stages=[load,prune.structural]",
                    *SMALL], run_dir=run_dir)
    assert _stage(run_dir, "load")["figures"]["dtype"] == "bfloat16"
    assert (run_dir / "stages" / "load" / "base" / "model.safetensors").is_symlink()  # no converted copy
    pruned = _stage(run_dir, "prune.structural")["figures"]
    assert pruned["params_after"] < pruned["params_before"]
    assert pruned["reload_max_abs_diff"] <= 1e-5 and 0.0 <= pruned["validation_accuracy"] <= 1.0
    with safe_open(run_dir / "stages" / "prune.structural" / "student" / "model.safetensors", "pt") as f:
        dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}
    assert dtypes == {"BF16"}


def test_fp16_checkpoint_runs_in_fp32_on_the_cpu(tmp_path):
    import dsvl_adapt

    fp16 = save_plain_checkpoint(tmp_path / "fp16", dtype=torch.float16)
    dsvl_adapt.run(["model=local", f"model.path={fp16}", "pipeline.stages=[load]"], run_dir=tmp_path / "run")
    figures = _stage(tmp_path / "run", "load")["figures"]
    assert (figures["checkpoint_dtype"], figures["dtype"]) == ("float16", "float32")
    model, _ = load_checkpoint(tmp_path / "run" / "stages" / "load" / "base")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# -- pickles ------------------------------------------------------------------------------------

def test_pickled_checkpoint_needs_allow_pickle_and_is_then_rewritten_as_safetensors(bf16_checkpoint, tmp_path):
    import dsvl_adapt

    pickled = pickle_copy(bf16_checkpoint, tmp_path / "pickled")
    for command in ("validate", "run"):
        refused = _cli(command, "vertical=industrial", "model=local", f"model.path={pickled}",
                       "pipeline.stages=[load]", f"run_dir={tmp_path / 'refused'}", cwd=tmp_path)
        assert refused.returncode != 0, command
        assert "pytorch_model.bin" in refused.stderr and "model.allow_pickle=true" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert not (tmp_path / "refused" / "stages").exists()  # refused before the first stage
    with pytest.raises(ModelLoadError, match="model.allow_pickle=true"):
        load_checkpoint(pickled)

    run_dir = tmp_path / "allowed"
    dsvl_adapt.run(["model=local", f"model.path={pickled}", "model.allow_pickle=true", "pipeline.stages=[load]"],
                   run_dir=run_dir)
    figures = _stage(run_dir, "load")["figures"]
    assert figures["weights_read"] == ["pytorch_model.bin"] and "safetensors" in figures["copy"]
    base = run_dir / "stages" / "load" / "base"
    assert (base / "model.safetensors").is_file() and not (base / "pytorch_model.bin").exists()
    # the copy holds the pickled weights exactly
    original, _ = load_checkpoint(bf16_checkpoint, dtype=torch.float32)
    copy, _ = load_checkpoint(base)
    for (name, a), (_, b) in zip(original.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), name


def test_folder_with_safetensors_and_pickles_reads_the_safetensors_and_says_so(bf16_checkpoint, tmp_path):
    import dsvl_adapt

    mixed = tmp_path / "mixed"
    shutil.copytree(bf16_checkpoint, mixed)
    shutil.copy(pickle_copy(bf16_checkpoint, tmp_path / "p") / "pytorch_model.bin", mixed / "pytorch_model.bin")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_checkpoint(mixed)
    messages = " ".join(str(w.message) for w in caught)
    assert "model.safetensors" in messages and "pytorch_model.bin" in messages and "reading the safetensors" in messages

    dsvl_adapt.run(["model=local", f"model.path={mixed}", "pipeline.stages=[load]"], run_dir=tmp_path / "run")
    figures = _stage(tmp_path / "run", "load")["figures"]
    assert figures["weights_read"] == ["model.safetensors"]
    assert "pytorch_model.bin" in figures["weights_note"]
    assert not (tmp_path / "run" / "stages" / "load" / "base" / "pytorch_model.bin").exists()


def test_a_user_readme_is_not_part_of_the_linked_base(bf16_checkpoint, tmp_path):
    import dsvl_adapt

    user = tmp_path / "user"
    shutil.copytree(bf16_checkpoint, user)
    (user / "README.md").write_text("the user's own model card")
    dsvl_adapt.run(["model=local", f"model.path={user}", "pipeline.stages=[load]"], run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "stages" / "load" / "base" / "README.md").exists()


# -- other architectures ------------------------------------------------------------------------

def test_llama_checkpoint_is_refused_by_validate_and_run_naming_its_model_type(llama_checkpoint, tmp_path):
    for command in ("validate", "run"):
        result = _cli(command, "vertical=industrial", "model=local", f"model.path={llama_checkpoint}",
                      f"run_dir={tmp_path / command}", cwd=tmp_path)
        assert result.returncode != 0, command
        assert "'llama'" in result.stderr and "deepseek_vl, deepseek_vl_hybrid" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "stages").exists()  # refused before the first stage


def test_load_checkpoint_refuses_another_architecture(llama_checkpoint):
    with pytest.raises(ModelLoadError, match="'llama'.*deepseek_vl, deepseek_vl_hybrid"):
        load_checkpoint(llama_checkpoint)


# -- end to end -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_bf16_user_checkpoint_runs_the_default_pipeline_to_a_scorecard(bf16_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    result = _cli("run", "model=local", f"model.path={bf16_checkpoint}", "finetune=fast", "distill=fast", *SMALL,
                  f"run_dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((run_dir / "scorecard.json").read_text())
    assert set(card["accuracy"]) == {"base", "teacher", "student"}
    load = _stage(run_dir, "load")["figures"]
    assert (load["checkpoint_dtype"], load["dtype"]) == ("bfloat16", "float32")  # auto on the CPU, training
    teacher = json.loads((run_dir / "stages" / "finetune" / "teacher" / "config.json").read_text())
    assert teacher["dtype"] == "float32"
    assert "onnx" in _stage(run_dir, "quantize")["artifacts"]


@pytest.mark.slow
def test_compression_starts_from_the_loaded_checkpoint_without_finetune(tmp_path):
    """load -> prune.structural -> quantize -> export -> score: the base is the teacher; the pruned student is
    exported (ONNX Runtime int8) from bf16 weights, cast to fp32 at the quantize stage's entry."""
    run_dir = tmp_path / "run"
    result = _cli("run", "model=reference-tiny", "model.dtype=bfloat16",
                  "pipeline.stages=[load,prune.structural,quantize,export,score]", *SMALL, f"run_dir={run_dir}",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    load = _stage(run_dir, "load")
    base = "stages/load/base"  # recorded relative to the run folder
    assert load["artifacts"] == {"base": base, "teacher": base, "student": base}
    pruned = _stage(run_dir, "prune.structural")
    assert pruned["figures"]["params"] < load["figures"]["params"]
    assert json.loads((run_dir / "stages" / "prune.structural" / "student" / "config.json").read_text())["dtype"] \
        == "bfloat16"
    quantize = _stage(run_dir, "quantize")
    assert quantize["figures"]["cast_from"] == "bfloat16" and "onnx" in quantize["artifacts"]
    card = json.loads((run_dir / "scorecard.json").read_text())
    assert set(card["accuracy"]) == {"base", "teacher", "student"}
    assert card["params"]["teacher"] == card["params"]["base"] == load["figures"]["params"]
    assert any("teacher is the same model as base" in note for note in card["notes"])
