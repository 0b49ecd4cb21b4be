"""One training loop for every training phase: full fine-tune, LoRA and distillation.

Built on ``accelerate`` so the same code runs on one CPU process, under
``torchrun --nproc_per_node 2`` (DDP over gloo) or on GPUs. Batches are a pure
function of (seed, step), and checkpoints (safetensors + JSON, :mod:`.checkpoints`) hold the
weights, optimizer, scheduler, early-stopping state and random generators, so a run resumed from a
checkpoint ends with exactly the weights of an uninterrupted run. Each phase runs in its own
precision (:mod:`.precision`), and a NaN or inf loss, gradient or weight stops it with the likely
cause (:mod:`.numerics`) before anything is recorded as complete.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..config import TrainSchedule
from ..engine import on_main_process
from ..data.batches import IGNORE_INDEX, BatchEncoder, Encoded
from ..progress import progress_bar
from .checkpoints import (MARKER, LoopState, is_current_format, latest_checkpoint, read_checkpoint, snapshot,
                          write_checkpoint)
from .numerics import (NonFiniteTrainingError, PhaseInfo, first_non_finite, generic_causes, is_finite,
                       non_finite_message)
from .precision import PrecisionChoice, autocast, choose_precision, time_forward_backward

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on the labelled (answer) tokens, as computed by the model itself."""
    return model(**batch, use_cache=False).loss


def greedy_exact_matches(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: whether greedy decoding would write exactly the labelled answer (and then stop).

    Under teacher forcing, the logits at the position before each answer token are the ones greedy
    decoding sees when it has written the answer so far; so a row whose every labelled token (the
    end-of-sentence token included) is the argmax of its logits is one that greedy ``generate`` answers
    word for word. Same forward pass as the validation loss, no generation: the loop can watch accuracy
    as cheaply as loss. Rows without labels count as misses.
    """
    predicted = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    labelled = target != IGNORE_INDEX
    right = (predicted == target) | ~labelled
    return right.all(dim=1) & labelled.any(dim=1)


@dataclass(frozen=True)
class Evaluation:
    """One look at the validation split: the phase's loss, and the share of rows answered exactly."""

    loss: float
    exact_match: float


@dataclass
class TrainResult:
    steps: int
    resumed_from: int | None
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    precision: str = "fp32"  # what autocast ran in: fp32, bf16 or fp16 (``auto`` resolved)
    precision_choice: dict[str, Any] = field(default_factory=dict)  # why: PrecisionChoice.as_dict()
    best_step: int | None = None  # early stopping: the step whose weights were kept
    world_size: int = 1  # training processes (DDP) that ran the phase
    stop_reason: str = "steps"  # steps (all of them ran) | patience (validation loss stalled) | exact_match (saturated)
    planned_steps: int | None = None  # the schedule's steps

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "planned_steps": self.planned_steps, "resumed_from": self.resumed_from,
                "stopped_early": self.stopped_early, "stop_reason": self.stop_reason, "best_step": self.best_step,
                "world_size": self.world_size, "precision": self.precision, "precision_choice": self.precision_choice,
                "history": self.history}


def batch_indices(step: int, *, dataset_size: int, batch_size: int, seed: int) -> list[int]:
    """The rows of global batch ``step``: epoch-wise shuffles seeded by (seed, epoch)."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), dataset_size)
        order = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        take = min(batch_size - len(out), dataset_size - offset)
        out.extend(order[offset: offset + take].tolist())
    return out


class Trainer:
    """Trains ``model`` (its parameters with ``requires_grad``) on encoded rows.

    ``label`` names the phase in progress bars and errors (``finetune (LoRA)``), ``section`` its
    config section (``finetune.lora.train``); ``causes`` returns phase-specific likely causes of a
    non-finite loss (the distillation temperature, say), listed before the generic ones.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        encoder: BatchEncoder,
        schedule: TrainSchedule,
        *,
        checkpoint_dir: Path,
        seed: int,
        label: str,
        section: str | None = None,
        loss_fn: LossFn = causal_lm_loss,
        extra_modules: Sequence[torch.nn.Module] = (),
        device: str = "cpu",
        after_step: Callable[[], None] | None = None,
        causes: Callable[[], list[str]] | None = None,
    ) -> None:
        from accelerate import Accelerator

        self.schedule = schedule
        self.encoder = encoder
        self.checkpoint_dir = Path(checkpoint_dir)
        self.seed = seed
        self.label = label
        self.phase = PhaseInfo(label, section or label, schedule)
        self.loss_fn = loss_fn
        self.after_step = after_step
        self.causes = causes
        cpu = device == "cpu" or not torch.cuda.is_available()
        # No mixed_precision here: it is process-wide in accelerate, and phases of one process may differ.
        # Each phase applies its own precision with torch.autocast (see precision.py).
        self.accelerator = Accelerator(cpu=cpu, gradient_accumulation_steps=schedule.grad_accum)
        _refuse_sharded(self.accelerator)
        params = [p for p in model.parameters() if p.requires_grad]
        for module in extra_modules:
            params += [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{label}: the model has no trainable parameters")
        self.raw_optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
        prepared = self.accelerator.prepare(model, self.raw_optimizer, *extra_modules)
        self.model, self.optimizer = prepared[:2]
        self.extra_modules = list(prepared[2:])
        # Stepped once per optimizer step, by us: not handed to accelerate, which would step it once per process.
        self.scheduler = _warmup_cosine(self.raw_optimizer, schedule.warmup_steps, max(schedule.steps, 1))
        self.precision = PrecisionChoice(schedule.precision, "fp32", "not resolved yet")
        self.scaler: torch.amp.GradScaler | None = None
        self.last_checkpoint: int | None = None

    @property
    def _device(self) -> torch.device:
        return self.accelerator.device

    def _unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _extra(self) -> list[torch.nn.Module]:
        return [self.accelerator.unwrap_model(m) for m in self.extra_modules]

    # -- precision -----------------------------------------------------------------------
    def _resolve_precision(self, train_items: Sequence[Encoded]) -> PrecisionChoice:
        """Decide ``auto`` (main process measures, the others follow), else take the config's value."""
        acc, s = self.accelerator, self.schedule
        if s.precision != "auto":
            return choose_precision(s.precision, self._device)
        choice = None
        if acc.is_main_process:
            rows = batch_indices(0, dataset_size=len(train_items), seed=self.seed,
                                 batch_size=max(1, s.batch_size // acc.num_processes))
            batch = self._to_device(self.encoder.training_batch([train_items[i] for i in rows]))
            model = self._unwrapped()
            key = (self._device.type, type(model).__name__, type(self.loss_fn).__name__,
                   sum(p.numel() for p in model.parameters()),
                   sum(p.numel() for p in model.parameters() if p.requires_grad), tuple(batch["input_ids"].shape))
            choice = choose_precision(s.precision, self._device, key=key,
                                      measure=lambda: time_forward_backward(self._probe(model, batch)))
        if acc.num_processes > 1:
            from accelerate.utils import broadcast

            code = torch.tensor([list(DTYPES_BY_NAME).index(choice.chosen) if choice else 0], device=self._device)
            chosen = list(DTYPES_BY_NAME)[int(broadcast(code, from_process=0).item())]
            choice = choice or PrecisionChoice(s.precision, chosen, "decided by the main process")
        assert choice is not None
        return choice

    def _probe(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[str], None]:
        """One forward (under the given precision's autocast) + backward pass that leaves no gradient behind."""
        params = self._all_params()

        def run_once(precision: str) -> None:
            with autocast(precision, self._device):
                loss = self.loss_fn(model, batch)
            loss.backward()
            for p in params:
                p.grad = None

        return run_once

    def _autocast(self) -> Any:
        return autocast(self.precision.chosen, self._device)

    # -- the loop ------------------------------------------------------------------------
    def train(self, train_items: Sequence[Encoded], validation_items: Sequence[Encoded] = ()) -> TrainResult:
        s = self.schedule
        acc = self.accelerator
        micro = s.batch_size * s.grad_accum
        data_order = {"seed": self.seed, "dataset_size": len(train_items), "batch_size": micro,
                      "rule": "epoch-wise shuffles seeded by (seed, epoch); batch = rows [step*size, (step+1)*size)"}
        loop, resumed_from = LoopState(), None
        self._check_weights(0, "entering")
        latest = self._usable_checkpoint(data_order)
        if latest is not None:
            step, path = latest
            precision = json.loads((path / MARKER).read_text())["precision"]
            self._set_precision(PrecisionChoice.from_dict(precision))
            restored = read_checkpoint(path, model=self._unwrapped(), extra_modules=self._extra(),
                                       optimizer=self.raw_optimizer, scheduler=self.scheduler, scaler=self.scaler,
                                       rank=acc.process_index)
            loop, resumed_from, self.last_checkpoint = restored.loop, step, step
            if acc.is_main_process:
                print(f"  {self.label}: resuming from the checkpoint at step {step}", file=sys.stderr, flush=True)
        else:
            self._set_precision(self._resolve_precision(train_items))
        world, rank = acc.num_processes, acc.process_index
        self.model.train()
        stopped_early, stop_reason = False, "steps"
        if loop.step == 0 and validation_items and s.stop_at_exact_match is not None and s.steps > 0:
            # A model that already answers the validation split (a pruned student that lost nothing, a LoRA phase
            # after a full one) has nothing to gain here: step 0 is an evaluation too.
            evaluation = self.evaluate(validation_items)
            loop.history.append({"step": 0, "validation_loss": round(evaluation.loss, 5),
                                 "validation_exact_match": round(evaluation.exact_match, 4)})
            if self._saturated(evaluation):
                stopped_early, stop_reason = True, "exact_match"
        with progress_bar(self.label, total=s.steps, completed=loop.step, disable=not acc.is_main_process) as advance:
            while loop.step < s.steps and not stopped_early:
                indices = batch_indices(loop.step, dataset_size=len(train_items), batch_size=micro, seed=self.seed)
                shard = indices[rank::world] or indices[:1]
                losses = []
                for chunk_start in range(0, len(shard), max(1, s.batch_size // world)):
                    chunk = shard[chunk_start: chunk_start + max(1, s.batch_size // world)]
                    batch = self._to_device(self.encoder.training_batch([train_items[i] for i in chunk]))
                    with acc.accumulate(self.model):
                        with self._autocast():
                            loss = self.loss_fn(self.model, batch)
                        losses.append(loss.detach().float())
                        acc.backward(self.scaler.scale(loss) if self.scaler is not None else loss)
                        if acc.sync_gradients:
                            self._optimizer_step(loop.step + 1, losses)
                self.scheduler.step()
                loop.step += 1
                mean_loss = acc.gather(torch.stack(losses).mean().reshape(1)).mean().item()
                record: dict[str, float] = {"step": loop.step, "loss": round(mean_loss, 5)}
                if validation_items and (loop.step % s.eval_every == 0 or loop.step == s.steps):
                    evaluation = self.evaluate(validation_items)
                    if not math.isfinite(evaluation.loss):
                        self._fail(loop.step, f"the validation loss is {evaluation.loss}")
                    record["validation_loss"] = round(evaluation.loss, 5)
                    record["validation_exact_match"] = round(evaluation.exact_match, 4)
                    if self._early_stopping(record["validation_loss"], loop):
                        stopped_early, stop_reason = True, "patience"
                    elif self._saturated(evaluation) and loop.step < s.steps:
                        stopped_early, stop_reason = True, "exact_match"
                        loop.best_weights, loop.best_step = None, None  # these weights reached it: keep them
                loop.history.append(record)
                advance(1, loss=mean_loss)
                if loop.step % s.checkpoint_every == 0 and loop.step < s.steps and not stopped_early:
                    self._save_checkpoint(loop, data_order)
                if stopped_early:
                    break
        if loop.best_weights is not None:
            self._unwrapped().load_state_dict(loop.best_weights)
        self._check_weights(loop.step, "leaving")
        if stopped_early and acc.is_main_process:
            reached = f"validation exact match {loop.history[-1]['validation_exact_match']:.3f} reached"
            why = (f"{reached} {s.stop_at_exact_match:g}{' before any step: nothing to gain' if not loop.step else ''}"
                   if stop_reason == "exact_match" else
                   f"no better validation loss in {s.patience} evaluations; weights of step {loop.best_step} kept")
            print(f"  {self.label}: stopped at step {loop.step} of {s.steps}: {why}", file=sys.stderr, flush=True)
        return TrainResult(loop.step, resumed_from, stopped_early, loop.history, self.precision.chosen,
                           self.precision.as_dict(), loop.best_step, world_size=acc.num_processes,
                           stop_reason=stop_reason, planned_steps=s.steps)

    def _set_precision(self, choice: PrecisionChoice) -> None:
        self.precision = choice
        self.scaler = torch.amp.GradScaler(self._device.type) if choice.chosen == "fp16" else None

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def _optimizer_step(self, step: int, losses: list[torch.Tensor]) -> None:
        """Clip, check that loss and gradients are finite (on every process alike), then update."""
        acc, s = self.accelerator, self.schedule
        if self.scaler is not None:
            self.scaler.unscale_(self.raw_optimizer)
        if s.max_grad_norm:
            grad_norm = acc.clip_grad_norm_(self._all_params(), s.max_grad_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self._all_params() if p.grad is not None])
        loss_bad = not all(is_finite(loss) for loss in losses)
        # fp16 overflows are expected now and then: the loss scaler skips those steps and lowers its scale
        grad_bad = self.scaler is None and not is_finite(grad_norm)
        flags = torch.tensor([float(loss_bad), float(grad_bad)], device=self._device)
        if acc.num_processes > 1:
            flags = acc.reduce(flags, reduction="sum")
        if flags.sum() > 0:
            local = torch.stack(losses)
            what = (f"the training loss is {_describe(local)}" if flags[0] > 0 else "the training loss is finite")
            what += f" and the gradient norm is {float(grad_norm):g}"
            self._fail(step, what)
        if self.scaler is not None:
            self.scaler.step(self.raw_optimizer)
            self.scaler.update()
        else:
            self.raw_optimizer.step()
        self.raw_optimizer.zero_grad(set_to_none=True)
        if self.after_step is not None:
            self.after_step()

    # -- numerical safety ----------------------------------------------------------------
    def _fail(self, step: int, what: str) -> None:
        causes = list(self.causes() if self.causes is not None else [])
        causes += generic_causes(self.phase, step, self.precision.chosen)
        raise NonFiniteTrainingError(non_finite_message(self.phase, step=step, what=what, causes=causes,
                                                        kept_checkpoint=self.last_checkpoint))

    def _check_weights(self, step: int, moment: str) -> None:
        name = first_non_finite([self._unwrapped(), *self._extra()])
        if name is None:
            return
        if moment == "entering":
            raise NonFiniteTrainingError(
                f"{self.label} [{self.phase.section}]: the model entering this phase holds NaN or inf values in "
                f"{name!r}, before any training step. The input checkpoint is damaged: rerun the stage that wrote "
                "it (delete its folder under stages/) or check the model you loaded.")
        self._fail(step, f"the trained weights hold NaN or inf values in {name!r}")

    # -- checkpoints ---------------------------------------------------------------------
    def _usable_checkpoint(self, data_order: dict[str, Any]) -> tuple[int, Path] | None:
        latest = latest_checkpoint(self.checkpoint_dir)
        if latest is None:
            return None
        step, path = latest
        if not is_current_format(path):
            if self.accelerator.is_main_process:
                print(f"  {self.label}: ignoring the checkpoint at step {step}, written in an earlier format (pickles, "
                      "which are never loaded); the phase starts over", file=sys.stderr, flush=True)
            return None
        saved = json.loads((path / MARKER).read_text())["data_order"]
        changed = [k for k in ("seed", "dataset_size", "batch_size") if saved.get(k) != data_order[k]]
        if changed:
            from ..errors import StageError

            raise StageError(f"{self.label}: the checkpoint at {path} was written with a different "
                             f"{', '.join(changed)} ({', '.join(f'{k}={saved.get(k)}' for k in changed)}; now "
                             f"{', '.join(f'{k}={data_order[k]}' for k in changed)}), so resuming would not continue "
                             f"the same run. Delete {self.checkpoint_dir} to start the phase over.")
        return latest

    def _save_checkpoint(self, loop: LoopState, data_order: dict[str, Any]) -> None:
        acc = self.accelerator
        write_checkpoint(self.checkpoint_dir, loop, model=self._unwrapped(), extra_modules=self._extra(),
                         optimizer=self.raw_optimizer, scheduler=self.scheduler, scaler=self.scaler,
                         precision=self.precision.as_dict(), data_order=data_order, rank=acc.process_index,
                         world_size=acc.num_processes, barrier=acc.wait_for_everyone)
        self.last_checkpoint = loop.step

    def _all_params(self) -> list[torch.nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        for module in self.extra_modules:
            params += [p for p in module.parameters() if p.requires_grad]
        return params

    def _early_stopping(self, validation_loss: float, loop: LoopState) -> bool:
        if self.schedule.patience is None:
            return False
        if loop.best_loss is None or validation_loss < loop.best_loss - 1e-6:
            loop.best_loss, loop.best_step, loop.bad_evals = validation_loss, loop.step, 0
            loop.best_weights = snapshot(self._unwrapped())
            return False
        loop.bad_evals += 1
        return loop.bad_evals >= self.schedule.patience

    def _saturated(self, evaluation: Evaluation) -> bool:
        target = self.schedule.stop_at_exact_match
        return target is not None and evaluation.exact_match >= target

    @torch.no_grad()
    def evaluate(self, items: Sequence[Encoded]) -> Evaluation:
        """The phase's loss on ``items`` and the share of them greedy decoding answers exactly
        (:func:`greedy_exact_matches`, from the model's own logits: for distillation, the student's)."""
        self.model.eval()
        total, exact, count = 0.0, 0, 0
        size = self.schedule.batch_size
        logits: list[torch.Tensor] = []  # the trained model's logits, caught from the loss function's own forward
        hook = self._unwrapped().register_forward_hook(lambda _module, _args, output: logits.append(output.logits))
        try:
            for start in range(0, len(items), size):
                batch = self._to_device(self.encoder.training_batch(items[start: start + size]))
                with self._autocast():
                    loss = self.loss_fn(self.model, batch)
                rows = len(batch["input_ids"])
                total += loss.item() * rows
                exact += int(greedy_exact_matches(logits.pop().float(), batch["labels"]).sum())
                count += rows
        finally:
            hook.remove()
        self.model.train()
        return Evaluation(total / max(count, 1), exact / max(count, 1))


DTYPES_BY_NAME = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _describe(losses: torch.Tensor) -> str:
    bad = losses[~torch.isfinite(losses)]
    return ", ".join(sorted({f"{float(v):g}" for v in bad})) or "not finite"


def _refuse_sharded(accelerator: Any) -> None:
    """FSDP and DeepSpeed shard the weights across processes; the stages save, merge LoRA into and early-stop on
    whole models, so a sharded launch is refused before any step is spent (see docs/distributed.md)."""
    kind = str(getattr(accelerator, "distributed_type", ""))
    if "FSDP" in kind or "DEEPSPEED" in kind:
        from ..errors import ConfigError

        raise ConfigError(f"accelerate launched this run with {kind.split('.')[-1]}, which dsvl-adapt's training "
                          "stages do not support: they save, merge LoRA into and early-stop on whole models. "
                          "Launch with DDP instead (accelerate launch --multi_gpu --num_processes N ...); a checkpoint "
                          "is adapted with LoRA only (finetune.full_when=auto skips the full phase for checkpoints), "
                          "which fits one device where a full fine-tune would not; see docs/distributed.md")


def _warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
