"""What the score stage measures, behind one interface: a PyTorch checkpoint, or any runtime backend's artifact (ONNX
Runtime export, OpenVINO IR, a plugin's format), found through the registry by the backend that ``owns`` it.

Accuracy is always measured through the artifact itself, so export and quantization errors
show up in the scorecard rather than being hidden behind the PyTorch model they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data.batches import BatchEncoder, Encoded
from ..errors import ConfigError
from ..models.figures import model_figures, size_on_disk
from ..progress import progress_bar
from .generate import generate_answers
from ..machine import cpu_model
from .timing import percentiles, time_calls, torch_threads

TORCH_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Runner:
    """One scorable artifact: how to generate answers, time a request, and what it weighs."""

    label: str  # e.g. torch-fp32, torch-int8, onnxruntime-int8, openvino-int8-f32 (weights, inference precision)
    runtime: str  # the runtime backend's name, as a HardwareTarget names it (torch, onnxruntime, openvino ...)
    dtype: str
    processor: Any
    config: Any
    size_bytes: int
    weight_bytes: int
    params: int | None
    by_component: dict[str, int]
    torch_model: Any = None
    onnx_model: Any = None  # a backend's GenerativeModel (numpy in and out: forward / generate)
    torch_generative: Any = None  # the torch backend's GenerativeModel over torch_model (prefill / decode)
    note: str = ""  # what the latency entry should say about the runtime (e.g. the pinned precision)

    def answers(self, encoder: BatchEncoder, items: Sequence[Encoded], *, batch_size: int, max_new_tokens: int,
                label: str) -> list[str]:
        if self.torch_model is not None:
            return generate_answers(self.torch_model, encoder, items, batch_size=batch_size,
                                    max_new_tokens=max_new_tokens, label=label)
        answers: list[str] = []
        with progress_bar(label, total=len(items)) as advance:
            for start in range(0, len(items), batch_size):
                chunk = items[start: start + batch_size]
                batch = encoder.generation_batch(chunk)
                new = self.onnx_model.generate(batch, max_new_tokens, eos_token_id=encoder.eos_id,
                                               pad_token_id=encoder.pad_id)
                answers += encoder.decode(torch.as_tensor(new))
                advance(len(chunk))
        return answers

    def generate_tokens(self, batch: dict[str, torch.Tensor], max_new_tokens: int, *, eos_id: int | None,
                        pad_id: int | None) -> torch.Tensor:
        """Greedy answer tokens for ``batch`` (prompt excluded), through whichever runtime this runner holds."""
        if self.torch_model is not None:
            with torch.no_grad():
                output = self.torch_model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                                   pad_token_id=pad_id, eos_token_id=eos_id)
            return output[:, batch["input_ids"].shape[1]:]
        return torch.as_tensor(self.onnx_model.generate(batch, max_new_tokens, eos_token_id=eos_id,
                                                        pad_token_id=pad_id))

    def prefill_ms(self, batch: dict[str, torch.Tensor], *, warmup: int, repeats: int,
                   threads: int | None) -> list[float]:
        """Milliseconds per prefill of the whole ``batch`` (image + prompt to the first token's logits, as generation
        and serving run it: the head on the last position only), warm-up then timed repeats.

        The one timing method behind both latency (batch 1) and throughput (a target's batch size)."""
        if self.torch_model is not None:
            model = self.torch_model
            model.eval()
            with torch.no_grad(), torch_threads(threads):
                return time_calls(lambda: model(**batch, use_cache=False, logits_to_keep=1), warmup=warmup,
                                  repeats=repeats)
        onnx_model = self.onnx_model
        return time_calls(lambda: onnx_model.prefill(batch), warmup=warmup, repeats=repeats)

    def latency(self, batch: dict[str, torch.Tensor], *, warmup: int, repeats: int, threads: int | None,
                decode_tokens: int = 8) -> tuple[dict[str, Any], list[float]]:
        """Prefill latency percentiles (from :meth:`prefill_ms`) and per-token decode time; also the prefill
        samples themselves, which throughput at the same batch size reuses."""
        prefill = self.prefill_ms(batch, warmup=warmup, repeats=repeats, threads=threads)

        def generate() -> None:
            if self.torch_model is not None:
                self.torch_model.generate(**batch, max_new_tokens=decode_tokens, min_new_tokens=decode_tokens,
                                          do_sample=False)
            else:
                self.onnx_model.generate(batch, decode_tokens)

        with torch.no_grad(), torch_threads(threads if self.torch_model is not None else None) as used:
            whole = time_calls(generate, warmup=1, repeats=max(3, repeats // 3))
        per_token = max(0.0, (float(np.median(whole)) - float(np.median(prefill))) / max(1, decode_tokens - 1))
        if self.torch_model is not None:
            runtime, used_threads = f"torch-eager ({self.label})", used
        else:
            cache = ("KV cache" if getattr(self.onnx_model, "has_kv_cache", False)
                     else "no KV cache: decode re-runs the sequence (full graph)")
            runtime = f"{self.runtime} ({self.label}{self.note}; {cache})"
            used_threads = threads or self.onnx_model.threads
        return {**percentiles(prefill), "decode_ms_per_token": round(per_token, 3), "runtime": runtime,
                "threads": used_threads, "cpu": cpu_model(), "batch_size": int(batch["input_ids"].shape[0]),
                "warmup": warmup, "repeats": repeats, "measured": True}, prefill


    def generative_model(self) -> Any:
        """This artifact as a :class:`~dsvl_adapt.runtimes.contract.GenerativeModel` (prefill/decode/stream)."""
        return self.torch_generative if self.torch_model is not None else self.onnx_model

    def generation(self, batch: dict[str, torch.Tensor], *, answer_tokens: int, eos_id: Any, pad_id: int | None,
                   warmup: int, repeats: int, threads: int | None) -> dict[str, Any]:
        """Time to first token, time per output token, tokens/s and KV bytes per token through this runtime
        (:mod:`dsvl_adapt.score.generation_speed`)."""
        from .generation_speed import measure_generation

        model = self.generative_model()
        with torch_threads(threads if self.torch_model is not None else None) as used:
            figures = measure_generation(model, batch, answer_tokens=answer_tokens, eos_token_id=eos_id,
                                         pad_token_id=pad_id, warmup=warmup, repeats=repeats)
        kv = self.torch_model is not None or bool(getattr(model, "has_kv_cache", False))
        return {**figures, "kv_cache": kv, "runtime": f"{self.runtime} ({self.label})", "cpu": cpu_model(),
                "threads": used if self.torch_model is not None else (threads or self.onnx_model.threads)}


def open_runner(directory: Path, *, load_torch: Any, threads: int | None = None, registry: Any = None) -> Runner:
    """A runner for a model directory: a PyTorch checkpoint (read with ``load_torch``, measured in PyTorch eager), or
    the artifact of whichever registered runtime backend ``owns`` it (ONNX export, OpenVINO IR, a plugin's format),
    loaded through that backend. ``registry``: default, the process's plugin registry."""
    from ..models.checkpoint_files import is_checkpoint_dir

    directory = Path(directory)
    if registry is None:
        from ..plugins import get_registry

        registry = get_registry()
    backend = registry.runtime_for(directory)  # two backends claiming it is an error naming both
    if load_torch is not None and is_checkpoint_dir(directory):  # the pipeline's own format: measured in PyTorch
        runner = _torch_runner(directory, load_torch)
        runner.torch_generative = registry.runtimes.get("torch").wrap(runner.torch_model)
        return runner
    if backend is None:
        raise ConfigError(f"{directory}: no registered runtime backend recognises this directory (installed: "
                          f"{', '.join(registry.runtimes.names())}); is it a checkpoint or an artifact that the "
                          "quantize or export stage wrote?")
    return _backend_runner(backend, directory, threads)


def _torch_runner(directory: Path, load_torch: Any) -> Runner:
    """A PyTorch checkpoint (fp32/bf16, or torch-quantized int8): HF generate, parameter and component figures."""
    model, processor = load_torch(directory)
    quantized = (directory / "quantization.json").is_file()
    figures = model_figures(model)
    dtype = "int8" if quantized else TORCH_DTYPES.get(next(model.parameters()).dtype, "fp32")
    weight_bytes = size_on_disk(directory) if quantized else sum(figures["weight_bytes_by_component"].values())
    return Runner(label=f"torch-{dtype}", runtime="torch", dtype=dtype, processor=processor, config=model.config,
                  size_bytes=size_on_disk(directory), weight_bytes=weight_bytes,
                  params=None if quantized else figures["params"],
                  by_component={} if quantized else figures["weight_bytes_by_component"], torch_model=model)


def _backend_runner(backend: Any, directory: Path, threads: int | None) -> Runner:
    """A runner for an artifact, through its backend: its ``load`` (a GenerativeModel) and ``inventory`` (label,
    weight format, bytes). The artifact carries its processor files and ``config.json``."""
    from transformers import AutoConfig, AutoProcessor

    reason = backend.available()
    if reason is not None:
        raise ConfigError(f"{directory} is an artifact of runtime backend {backend.name!r}, which is not available "
                          f"here: {reason}")
    model = backend.load(directory, threads=threads)
    model.threads = threads or getattr(model, "threads", None) or torch.get_num_threads()
    inventory = backend.inventory(directory)
    size = inventory.model_bytes or inventory.total_bytes
    return Runner(label=inventory.label or f"{backend.name}-{inventory.weights}", runtime=backend.name,
                  dtype=inventory.weights, processor=AutoProcessor.from_pretrained(directory, local_files_only=True),
                  config=AutoConfig.from_pretrained(directory, local_files_only=True), size_bytes=size,
                  weight_bytes=size, params=None, by_component={}, onnx_model=model, note=getattr(model, "note", ""))
