"""Generation with a KV cache on every runtime (issue 16): PyTorch (DynamicCache), ONNX Runtime (past/present graph
through an IOBinding) and OpenVINO (stateful LM), all through the one loop of ``dsvl_adapt.runtimes.generation``.

The fp32 split export of the tiny preset is made once per module; each runtime is checked against PyTorch token for
token, each decode step is observed to feed one token per row (recording subclasses that see the exact feeds
handed to the ONNX Runtime session / OpenVINO infer request; a forward hook on the torch language model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dsvl_adapt.export.onnx import export_onnx
from dsvl_adapt.models.presets import get_preset
from dsvl_adapt.runtimes import GenerationSettings, TorchRuntimeModel
from dsvl_adapt.runtimes.generation import next_tokens
from dsvl_adapt.runtimes.onnxruntime import OnnxRuntimeModel
from tests.export.test_onnx import BOS, IMAGE, PAD, VOCAB, make_model

pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")

torch.set_num_threads(1)
TINY = "reference-tiny"
HIDDEN = 64


def prompts(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded batch of image + text prompts of different text lengths."""
    p = get_preset(TINY)
    g = torch.Generator().manual_seed(seed)
    n = p.num_image_tokens
    width = n + 2 + max(lengths)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros_like(ids)
    for row, text in enumerate(lengths):
        seq = torch.randint(3, VOCAB - 1, (n + 2 + text,), generator=g)
        seq[0] = BOS
        seq[2: 2 + n] = IMAGE
        ids[row, width - seq.numel():] = seq
        mask[row, width - seq.numel():] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "pixel_values": torch.randn(len(lengths), 3, p.image_size, p.image_size, generator=g)}


def row(batch: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Row ``i`` alone, its left padding removed."""
    keep = batch["attention_mask"][i].bool()
    return {"input_ids": batch["input_ids"][i: i + 1, keep], "attention_mask": batch["attention_mask"][i: i + 1, keep],
            "pixel_values": batch["pixel_values"][i: i + 1]}


class RecordingOrt(OnnxRuntimeModel):
    """Records the shape of every feed handed to the ONNX Runtime LM session (numpy arrays and OrtValues)."""

    def _run_lm(self, feeds: dict[str, Any]) -> list[Any]:
        self.calls.append({k: tuple(v.shape) if isinstance(v, np.ndarray) else tuple(v.shape())
                           for k, v in feeds.items()})
        return super()._run_lm(feeds)


@pytest.fixture(scope="module")
def model():
    return make_model(TINY)


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("kv-onnx")
    report = export_onnx(model, directory, prompts([4, 6]), split=True, threads=1)
    assert report.kv_cache is not None and report.max_abs_diff["kv_decode"] <= 1e-4
    return directory


@pytest.fixture(scope="module")
def ir_dir(export_dir, tmp_path_factory) -> Path:
    from dsvl_adapt.runtimes.openvino import convert_export

    directory = tmp_path_factory.mktemp("kv-ov")
    report = convert_export(export_dir, directory, batches=[prompts([5, 3])], threads=1)
    assert report.kv_cache is not None and report.graphs["lm"].inputs == ["inputs_embeds", "attention_mask",
                                                                           "position_ids", "logits_positions"]
    return directory


@pytest.fixture(scope="module")
def runtimes(model, export_dir, ir_dir) -> dict[str, Any]:
    from dsvl_adapt.runtimes.openvino import OpenVinoModel

    return {"torch": TorchRuntimeModel(model), "onnxruntime": OnnxRuntimeModel.load(export_dir, threads=1),
            "openvino": OpenVinoModel.load(ir_dir, threads=1)}


GREEDY = GenerationSettings(max_new_tokens=10)


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_fp32_greedy_tokens_equal_pytorch(name, runtimes):
    batch = prompts([3, 7], seed=1)
    expected = runtimes["torch"].generate(batch, GREEDY)
    got = runtimes[name].generate(batch, GREEDY)
    assert got.shape == (2, 10)
    np.testing.assert_array_equal(got, expected)
    assert len(set(got.ravel().tolist())) > 3  # a real continuation, not one repeated token


def test_torch_cache_equals_transformers_generate(model, runtimes):
    batch = prompts([3, 7], seed=2)
    hf = model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=PAD)
    np.testing.assert_array_equal(runtimes["torch"].generate(batch, GenerationSettings(max_new_tokens=8)),
                                  hf[:, batch["input_ids"].shape[1]:].numpy())


def test_onnxruntime_decode_feeds_one_token_per_row(export_dir):
    runtime = RecordingOrt.load(export_dir, threads=1)
    runtime.calls = []
    batch = prompts([2, 6], seed=3)
    width = batch["input_ids"].shape[1]
    runtime.generate(batch, GenerationSettings(max_new_tokens=5))
    assert len(runtime.calls) == 5  # one prefill, four decode steps
    prefill, *steps = runtime.calls
    assert prefill["inputs_embeds"] == (2, width, HIDDEN) and prefill["past_key_values.0.key"][2] == 0
    assert prefill["logits_positions"] == (1,)  # the head runs on the prompt's last position only
    for i, call in enumerate(steps):
        assert call["inputs_embeds"] == (2, 1, HIDDEN) and call["position_ids"] == (2, 1)
        assert call["logits_positions"] == (1,)
        assert call["attention_mask"] == (2, width + i + 1)
        assert call["past_key_values.0.key"][2] == width + i  # the previous step's present, not the prompt re-run


def test_openvino_decode_feeds_one_token_per_row(ir_dir):
    from dsvl_adapt.runtimes.openvino import OpenVinoModel

    class RecordingOpenVino(OpenVinoModel):
        calls: list[dict[str, tuple]] = []

        def _run_lm(self, feeds):
            self.calls.append({k: v.shape for k, v in feeds.items()})
            return super()._run_lm(feeds)

    runtime = RecordingOpenVino.load(ir_dir, threads=1)
    batch = prompts([2, 6], seed=3)
    width = batch["input_ids"].shape[1]
    logits, state = runtime.prefill(batch)
    cached = runtime.kv_cache_bytes(state)
    assert cached == 2 * width * runtime.kv_cache.bytes_per_token  # the state holds the prompt's keys/values
    for _ in range(3):
        logits, state = runtime.decode(state, logits.argmax(-1))
    assert [c["inputs_embeds"] for c in runtime.calls] == [(2, width, HIDDEN)] + [(2, 1, HIDDEN)] * 3
    assert [c["logits_positions"] for c in runtime.calls] == [(1,)] * 4  # the head on the last position only
    assert runtime.kv_cache_bytes(state) == 2 * (width + 3) * runtime.kv_cache.bytes_per_token
    runtime.prefill(row(batch, 0))  # a new request resets the state; the old one is refused
    with pytest.raises(RuntimeError, match="earlier request"):
        runtime.decode(state, logits.argmax(-1))


def test_torch_decode_feeds_one_token_per_row(model):
    seen: list[tuple[int, ...]] = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(tuple(kwargs["inputs_embeds"].shape)), with_kwargs=True)
    try:
        batch = prompts([4, 4], seed=4)
        TorchRuntimeModel(model).generate(batch, GenerationSettings(max_new_tokens=4))
    finally:
        hook.remove()
    assert seen == [(2, batch["input_ids"].shape[1], HIDDEN)] + [(2, 1, HIDDEN)] * 3


@pytest.mark.parametrize("name", ["torch", "onnxruntime", "openvino"])
def test_batch_of_two_lengths_equals_each_row_alone(name, runtimes):
    runtime = runtimes[name]
    batch = prompts([1, 8], seed=5)
    together = runtime.generate(batch, GREEDY)
    for i in range(2):
        np.testing.assert_array_equal(together[i: i + 1], runtime.generate(row(batch, i), GREEDY))


@pytest.mark.parametrize("name", ["torch", "onnxruntime", "openvino"])
def test_sampling_with_a_seed_is_reproducible_and_stream_equals_generate(name, runtimes):
    runtime = runtimes[name]
    batch = prompts([3, 5], seed=6)
    sample = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9, seed=11)
    first = runtime.generate(batch, sample)
    np.testing.assert_array_equal(first, runtime.generate(batch, sample))
    others = [runtime.generate(batch, GenerationSettings(**{**sample.__dict__, "seed": s})) for s in (12, 13, 14)]
    assert any(not np.array_equal(first, o) for o in others)  # the seed matters
    np.testing.assert_array_equal(np.stack(list(runtime.stream(batch, sample)), axis=1), first)
    np.testing.assert_array_equal(np.stack(list(runtime.stream(batch, GREEDY)), axis=1),
                                  runtime.generate(batch, GREEDY))


@pytest.mark.parametrize("name", ["torch", "onnxruntime", "openvino"])
def test_eos_stops_and_pads_and_older_call_style_still_works(name, runtimes):
    runtime = runtimes[name]
    batch = prompts([3, 5], seed=7)
    free = runtime.generate(batch, GREEDY)
    eos = int(free[0, 2])  # row 0 ends at its third token
    out = runtime.generate(batch, GenerationSettings(max_new_tokens=10, eos_token_id=eos, pad_token_id=PAD))
    assert out[0, 2] == eos and (out[0, 3:] == PAD).all()
    np.testing.assert_array_equal(out[:, :3], free[:, :3])
    np.testing.assert_array_equal(runtime.generate(batch, 10, eos_token_id=eos, pad_token_id=PAD), out)


def test_int8_dynamic_kv_graph_generates_through_the_cache(export_dir, tmp_path):
    """Dynamic int8 quantizes each MatMul's activations with one scale per call, so a one-token decode step and a
    whole-sequence forward round differently: the cache cannot give a re-run's logits bit for bit, and on random
    weights near-tied tokens may differ (they did on an AVX-512 VNNI CPU and not on an AVX2 one). What must hold is
    that decoding against the int8 cache stays as close to the fp32 model as re-running the sequence in int8 does; a
    cache that lost positions or rows would be off by the logits' whole spread."""
    from dsvl_adapt.compress.quantize import QuantizeConfig
    from dsvl_adapt.runtimes.onnxruntime import quantize_export

    batch = prompts([3, 5], seed=8)
    report = quantize_export(export_dir, tmp_path, QuantizeConfig(backend="onnxruntime", mode="dynamic"),
                             batches=[batch], threads=1)
    assert report.quantized_nodes["lm"] > 0
    runtime = RecordingOrt.load(tmp_path, threads=1)
    runtime.calls = []
    tokens = runtime.generate(batch, GenerationSettings(max_new_tokens=6))
    assert [c["inputs_embeds"][1] for c in runtime.calls][1:] == [1] * 5
    logits, state = runtime.prefill(batch)
    # the prefill runs the head on the last position alone: below the head it is the forward's computation, and the
    # head's activations get their own int8 scale, so its logits are near the forward's last row, not equal to them
    # (a wrong row would be off by the logits' whole spread)
    last = runtime.forward(batch)[:, -1]
    assert np.abs(logits - last).max() < 0.05 * (last.max(-1) - last.min(-1)).min()
    cached = [logits]
    for step in range(5):  # teacher-forced on the generated tokens
        logits, state = runtime.decode(state, tokens[:, step])
        cached.append(logits)
    fp32 = OnnxRuntimeModel.load(export_dir, threads=1)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cache_error, rerun_error, spread = [], [], []
    for step in range(6):
        sequence = {"input_ids": ids, "attention_mask": mask, "pixel_values": batch["pixel_values"]}
        reference = fp32.forward(sequence)[:, -1]
        cache_error.append(np.abs(cached[step] - reference).max(-1))
        rerun_error.append(np.abs(runtime.forward(sequence)[:, -1] - reference).max(-1))
        spread.append(reference.max(-1) - reference.min(-1))
        ids = torch.cat([ids, torch.as_tensor(tokens[:, step: step + 1])], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    assert np.mean(cache_error) <= 1.5 * np.mean(rerun_error)
    assert np.max(cache_error) < 0.25 * np.min(spread)


def test_top_p_keeps_the_nucleus_only():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
    rng = np.random.Generator(np.random.PCG64(0))
    drawn = next_tokens(logits, GenerationSettings(do_sample=True, top_p=0.75, seed=0), rng)
    assert set(drawn.tolist()) == {0, 1}  # 0.5 + 0.3 reach 0.75: tokens 2 and 3 are never drawn
    assert 0.55 < (drawn == 0).mean() < 0.70  # renormalised: 0.5 / 0.8 = 0.625
    tiny_p = next_tokens(logits[:3], GenerationSettings(do_sample=True, top_p=1e-6), rng)
    assert (tiny_p == 0).all()  # the top token is always kept


def test_bad_settings_are_named(runtimes):
    batch = prompts([3, 6], seed=9)
    with pytest.raises(ValueError, match="temperature"):
        runtimes["torch"].generate(batch, GenerationSettings(do_sample=True, temperature=0))
    with pytest.raises(ValueError, match="left padding"):
        right = dict(batch, attention_mask=torch.flip(batch["attention_mask"], [1]))
        runtimes["onnxruntime"].generate(right, GREEDY)
