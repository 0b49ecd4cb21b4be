"""The served model: a run's deployed artifact opened through its runtime, prompts rendered as training and scoring
render them, and greedy generation that also reports per-token log-probabilities and prefill/decode time.

What is deployed: in a run folder, the last ``deploy`` artifact the run's stages recorded (the quantized model made
for the target's runtime), else its last ``student``; a model folder is served as it is. Either is opened with
:func:`dsvl_adapt.score.runners.open_runner`, the same opener the score stage uses (OpenVINO IR, an ONNX export or a
PyTorch checkpoint), so the server answers what the scorecard measured.

The adapter to the runtime contract lives here and only here (:meth:`ServedModel.generate`): exported artifacts are
decoded through the contract's ``prefill`` and ``decode`` (the KV cache, where the artifact has one), whose logits
give each token's log-probability for the confidence; a PyTorch checkpoint through transformers' ``generate``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelLoadError
from ..runtimes.contract import GenerationSettings

#: Called from the inference thread after every decoding step with (step index, the step's token per row).
TokenCallback = Callable[[int, np.ndarray], None]


@dataclass
class Deployment:
    """Where the served model comes from: its directory and, when given a run folder, the run's config."""

    model_dir: Path
    run_dir: Path | None = None
    raw_config: dict[str, Any] | None = None

    @property
    def vertical(self) -> str | None:
        return (self.raw_config or {}).get("vertical", {}).get("name")

    def _config_and_registry(self) -> tuple[Any, Any]:
        from ..config import validate
        from ..plugins import get_registry

        if self.raw_config is None:
            raise ModelLoadError(f"{self.model_dir} was given as a model folder: the run's data and prompt are "
                                 "unknown (serve the run folder instead)")
        return validate(self.raw_config), get_registry()

    def rows(self, split: str, image_size: int, size: int | None = None) -> list[Any]:
        """Rows of a split of the run's data, loaded as the run loaded them (generated or its ``data.source``)."""
        from ..data.loading import load_configured_split

        config, registry = self._config_and_registry()
        return list(load_configured_split(config, registry, split, image_size, size).rows)

    def prompt(self) -> Any:
        """The run's :class:`~dsvl_adapt.schemas.PromptTemplate` (what its rows were asked with)."""
        config, registry = self._config_and_registry()
        return registry.prompts.get(registry.vertical(config.vertical.name).prompt)

    def max_answer_tokens(self) -> int | None:
        """The vertical's generation budget (what the scorecard generated with), when known."""
        if self.raw_config is None:
            return None
        config, registry = self._config_and_registry()
        return registry.vertical(config.vertical.name).max_answer_tokens


def find_deployment(path: str | Path) -> Deployment:
    """The model a path designates: a run folder (``manifest.json`` + ``stages/``) gives its deployed artifact,
    any other folder is taken as a model folder. Errors name the path and what was looked for."""
    from ..engine import read_stage_artifacts, unfinished_stages

    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist: give a run folder (the run_dir of `dsvl-adapt run`) or a model "
                             "folder (a checkpoint, an ONNX export or OpenVINO IR)")
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a folder: give a run folder (with manifest.json) or a model folder "
                             "(a checkpoint, an ONNX export or OpenVINO IR)")
    manifest = path / "manifest.json"
    if not manifest.is_file():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is neither a run folder (no manifest.json) nor a model folder (no "
                                 "config.json); give the run_dir of `dsvl-adapt run` or a model folder inside it")
        return Deployment(model_dir=path)
    try:
        raw = json.loads(manifest.read_text())["config"]
        stages = list(raw.get("pipeline", {}).get("stages", []))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{manifest} is not a run manifest ({type(exc).__name__}: {exc}): it is written by "
                             "`dsvl-adapt run`; rerun it with this run_dir, or serve a model folder") from None
    unfinished = unfinished_stages(path, stages)
    if unfinished:
        raise ModelLoadError(f"{path} is a run that has not finished: {', '.join(unfinished)} still to run, so its "
                             "student is not the one the scorecard will measure; finish the run (`dsvl-adapt run "
                             f"run_dir={path}` resumes it) or serve a model folder inside it")
    artifacts: dict[str, Path] = {}
    for name in stages:
        artifacts.update(read_stage_artifacts(path / "stages" / name))
    chosen = artifacts.get("deploy") or artifacts.get("student")
    if chosen is None or not chosen.is_dir():
        raise ModelLoadError(f"{path} holds no finished student: none of its stages ({', '.join(stages) or 'none'}) "
                             "recorded a 'deploy' or 'student' artifact; finish the run (`dsvl-adapt run "
                             f"run_dir={path}` resumes it) or serve a model folder")
    return Deployment(model_dir=chosen, run_dir=path, raw_config=raw)


@dataclass
class Encoded:
    """One request's prompt as the model sees it: ids (image tokens expanded) and pixel tensors."""

    prompt_ids: list[int]
    pixels: dict[str, Any]
    answer_ids: list[int] = field(default_factory=list)


@dataclass
class Generation:
    """One row's answer: text, tokens, why it stopped, mean token log-probability (None when the runtime gives no
    logits: unknown, never 0) and the batch's prefill/decode seconds."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end-of-sentence token) or "length" (max_new_tokens reached)
    mean_logprob: float | None
    prefill_s: float
    decode_s: float


def _log_softmax_at(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """log p(token) per row from raw logits (B, vocab)."""
    logits = logits.astype(np.float64, copy=False)
    top = logits.max(axis=-1, keepdims=True)
    normaliser = top[:, 0] + np.log(np.exp(logits - top).sum(axis=-1))
    return logits[np.arange(len(tokens)), tokens] - normaliser


class ServedModel:
    """A deployed artifact ready to answer chat messages (thread-safe: one generation at a time)."""

    def __init__(self, directory: str | Path, *, threads: int | None = None, name: str | None = None) -> None:
        from ..data.batches import BatchEncoder
        from ..models.checkpoint import load_checkpoint
        from ..schemas import PromptTemplate
        from ..score.runners import open_runner

        self.directory = Path(directory)
        self.runner = open_runner(self.directory, load_torch=load_checkpoint, threads=threads)
        self.processor = self.runner.processor
        # The encoder's prompt template is unused: requests bring their own messages. It gives the processor
        # DeepSeek-VL's chat template when the folder has none, as training did.
        self.encoder = BatchEncoder(self.processor, PromptTemplate(name="served"))
        self.tokenizer = self.encoder.tokenizer
        self.name = name or self.directory.name
        self.runtime = self.runner.runtime
        self.label = self.runner.label
        self.image_size = int(self.processor.image_processor.size["height"])
        text_config = getattr(self.runner.config, "text_config", None) or self.runner.config
        #: positions the LM was built for (prompt + answer); None when its config does not say
        self.context_length: int | None = getattr(text_config, "max_position_embeddings", None)
        self._lock = threading.Lock()

    # -- prompts -------------------------------------------------------------------------
    def encode(self, messages: list[dict[str, Any]]) -> Encoded:
        """Render chat messages (transformers' format, PIL images inline) with the checkpoint's chat template,
        exactly as :meth:`dsvl_adapt.data.prompting.ChatPrompter.render` renders a dataset row."""
        features = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True, return_tensors="pt")
        return Encoded(prompt_ids=features["input_ids"][0].tolist(),
                       pixels={k: v[0] for k, v in features.items() if k.endswith("pixel_values")})

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    @property
    def eos_id(self) -> int | None:
        return self.encoder.eos_id

    # -- generation ----------------------------------------------------------------------
    def generate(self, items: Sequence[Encoded], settings: Sequence[GenerationSettings],
                 on_token: TokenCallback | None = None) -> list[Generation]:
        """Greedy answers for a batch (left-padded); each row stops at its own ``max_new_tokens``.

        Contract-shaped: a batch and generation settings in, tokens out, ``on_token`` for streaming."""
        if any(s.do_sample for s in settings):
            raise ValueError("sampling is not available: this server decodes greedily")
        steps = max(s.max_new_tokens for s in settings)
        batch = self.encoder.generation_batch(items)  # type: ignore[arg-type]
        with self._lock:
            if self.runner.torch_model is not None:
                tokens, logprobs, prefill_s, decode_s = self._torch_generate(batch, steps, on_token)
            else:
                tokens, logprobs, prefill_s, decode_s = self._graph_generate(batch, steps, on_token)
        return [self._row(tokens[i], None if logprobs is None else logprobs[i], s.max_new_tokens, prefill_s,
                          decode_s) for i, s in enumerate(settings)]

    def _row(self, tokens: np.ndarray, logprobs: np.ndarray | None, limit: int, prefill_s: float,
             decode_s: float) -> Generation:
        ids = [int(t) for t in tokens[:limit]]
        finish = "length"
        if self.eos_id is not None and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id) + 1]
            finish = "stop"
        mean = None
        if logprobs is not None and ids:
            mean = float(np.mean(logprobs[: len(ids)]))
        return Generation(text=self.decode(ids).strip(), token_ids=ids, finish_reason=finish, mean_logprob=mean,
                          prefill_s=prefill_s, decode_s=decode_s)

    def _graph_generate(self, batch: dict[str, Any], steps: int, on_token: TokenCallback | None
                        ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Greedy decoding through the runtime contract: one ``prefill`` (image + prompt), then one ``decode`` per
        further token, which feeds one token per row and reuses the KV cache where the artifact has one."""
        model = self.runner.onnx_model
        pad = self.encoder.pad_id if self.encoder.pad_id is not None else (self.eos_id or 0)
        started = time.perf_counter()
        logits, state = model.prefill(batch)
        marks: list[float] = []
        tokens: list[np.ndarray] = []
        logprobs: list[np.ndarray] = []
        done = np.zeros(np.asarray(logits).shape[0], dtype=bool)
        for step in range(steps):
            logits = np.asarray(logits)
            token = np.where(done, pad, logits.argmax(-1)).astype(np.int64)
            logprobs.append(_log_softmax_at(logits, token))
            tokens.append(token)
            marks.append(time.perf_counter())
            if on_token is not None:
                on_token(step, token)
            if self.eos_id is not None:
                done |= token == self.eos_id
            if done.all() or step == steps - 1:
                break
            logits, state = model.decode(state, token)
        return np.stack(tokens, axis=1), np.stack(logprobs, axis=1), marks[0] - started, marks[-1] - marks[0]

    def _torch_generate(self, batch: dict[str, Any], steps: int, on_token: TokenCallback | None
                        ) -> tuple[np.ndarray, np.ndarray, float, float]:
        import torch
        from transformers.generation.streamers import BaseStreamer

        marks: list[float] = []

        class Clock(BaseStreamer):
            """Times each step; the first ``put`` is the prompt, then one per new token."""

            def __init__(self) -> None:
                self.calls = 0

            def put(self, value: Any) -> None:
                self.calls += 1
                if self.calls == 1:
                    return
                marks.append(time.perf_counter())
                if on_token is not None:
                    on_token(len(marks) - 1, np.asarray(value).reshape(-1))

            def end(self) -> None:
                pass

        started = time.perf_counter()
        with torch.no_grad():
            out = self.runner.torch_model.generate(
                **batch, max_new_tokens=steps, do_sample=False, pad_token_id=self.encoder.pad_id,
                eos_token_id=self.eos_id, streamer=Clock(), output_logits=True, return_dict_in_generate=True)
        tokens = out.sequences[:, batch["input_ids"].shape[1]:].numpy()
        logits = [step.float().numpy() for step in out.logits]
        logprobs = np.stack([_log_softmax_at(l, tokens[:, i]) for i, l in enumerate(logits)], axis=1)
        first = marks[0] if marks else time.perf_counter()
        return tokens, logprobs, first - started, (marks[-1] - first) if marks else 0.0


__all__ = ["Deployment", "Encoded", "Generation", "ServedModel", "TokenCallback", "find_deployment"]
