"""One training loop for every training phase: full fine-tune, LoRA and distillation.

Built on ``accelerate`` so the same code runs on one CPU process, under
``accelerate launch --cpu --num_processes 2`` (DDP over gloo) or on GPUs. Batches are a pure
function of (seed, step), so a run resumed from a checkpoint sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..config import TrainSchedule
from ..data.batches import BatchEncoder, Encoded
from ..progress import progress_bar

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def on_main_process(action: Callable[[], Any]) -> None:
    """Run ``action`` (a save) on the main process only, then let every process continue together."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        action()
    state.wait_for_everyone()


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on the labelled (answer) tokens, as computed by the model itself."""
    return model(**batch, use_cache=False).loss


@dataclass
class TrainResult:
    steps: int
    resumed_from: int | None
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    precision: str = "fp32"  # what autocast ran in: fp32, bf16 or fp16 (``auto`` resolved)

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "resumed_from": self.resumed_from, "stopped_early": self.stopped_early,
                "precision": self.precision, "history": self.history}


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map the config's precision to accelerate's ``mixed_precision``."""
    if precision == "fp32":
        return "no"
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if _cpu_has_bf16() else "no"
    return precision


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Trainer:
    """Trains ``model`` (its parameters with ``requires_grad``) on encoded rows."""

    def __init__(
        self,
        model: torch.nn.Module,
        encoder: BatchEncoder,
        schedule: TrainSchedule,
        *,
        checkpoint_dir: Path,
        seed: int,
        label: str,
        loss_fn: LossFn = causal_lm_loss,
        extra_modules: Sequence[torch.nn.Module] = (),
        device: str = "cpu",
        after_step: Callable[[], None] | None = None,
    ) -> None:
        from accelerate import Accelerator

        self.schedule = schedule
        self.encoder = encoder
        self.checkpoint_dir = Path(checkpoint_dir)
        self.seed = seed
        self.label = label
        self.loss_fn = loss_fn
        self.after_step = after_step
        cpu = device == "cpu" or not torch.cuda.is_available()
        target = torch.device("cpu" if cpu else "cuda")
        self.accelerator = Accelerator(
            cpu=cpu,
            mixed_precision=resolve_precision(schedule.precision, target),
            gradient_accumulation_steps=schedule.grad_accum,
        )
        _refuse_sharded(self.accelerator)
        params = [p for p in model.parameters() if p.requires_grad]
        for module in extra_modules:
            params += [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{label}: the model has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
        prepared = self.accelerator.prepare(model, optimizer, *extra_modules)
        self.model, self.optimizer = prepared[:2]
        self.extra_modules = list(prepared[2:])
        # Stepped once per optimizer step, by us: not handed to accelerate, which would step it once per process.
        self.scheduler = _warmup_cosine(optimizer, schedule.warmup_steps, max(schedule.steps, 1))
        self.accelerator.register_for_checkpointing(self.scheduler)

    # -- checkpoints ---------------------------------------------------------------------
    def _latest_checkpoint(self) -> tuple[int, Path] | None:
        found = []
        for path in self.checkpoint_dir.glob("step-*"):  # ".step-N.partial" (being written) never matches
            if (path / "complete.json").is_file():
                found.append((int(path.name.split("-")[1]), path))
        return max(found) if found else None

    def _save_checkpoint(self, step: int, history: list[dict[str, float]], best: dict[str, Any]) -> None:
        final = self.checkpoint_dir / f"step-{step}"
        partial = self.checkpoint_dir / f".step-{step}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(partial))
        if self.accelerator.is_main_process:
            (partial / "complete.json").write_text(json.dumps({"step": step, "history": history,
                                                               "best": best.get("loss")}))
            partial.rename(final)
            for old in self.checkpoint_dir.glob("step-*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    # -- the loop ------------------------------------------------------------------------
    def train(self, train_items: Sequence[Encoded], validation_items: Sequence[Encoded] = ()) -> TrainResult:
        s = self.schedule
        acc = self.accelerator
        step, resumed_from, history = 0, None, []
        best: dict[str, Any] = {"loss": math.inf, "state": None, "bad_evals": 0}
        latest = self._latest_checkpoint()
        if latest is not None:
            step, path = latest
            acc.load_state(str(path))
            meta = json.loads((path / "complete.json").read_text())
            history = meta["history"]
            best["loss"] = meta["best"] if meta["best"] is not None else math.inf
            resumed_from = step
            if acc.is_main_process:
                print(f"  {self.label}: resuming from the checkpoint at step {step}", file=sys.stderr, flush=True)
        micro = s.batch_size * s.grad_accum
        world, rank = acc.num_processes, acc.process_index
        self.model.train()
        stopped_early = False
        with progress_bar(self.label, total=s.steps, completed=step, disable=not acc.is_main_process) as advance:
            while step < s.steps:
                indices = batch_indices(step, dataset_size=len(train_items), batch_size=micro, seed=self.seed)
                shard = indices[rank::world] or indices[:1]
                losses = []
                for chunk_start in range(0, len(shard), max(1, s.batch_size // world)):
                    chunk = shard[chunk_start: chunk_start + max(1, s.batch_size // world)]
                    batch = self.encoder.training_batch([train_items[i] for i in chunk])
                    batch = {k: v.to(acc.device) for k, v in batch.items()}
                    with acc.accumulate(self.model), acc.autocast():
                        loss = self.loss_fn(self.model, batch)
                        acc.backward(loss)
                        if acc.sync_gradients and s.max_grad_norm:
                            acc.clip_grad_norm_(self._all_params(), s.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                        if self.after_step is not None and acc.sync_gradients:
                            self.after_step()
                    losses.append(loss.detach())
                self.scheduler.step()
                step += 1
                mean_loss = acc.gather(torch.stack(losses).mean().reshape(1)).mean().item()
                record: dict[str, float] = {"step": step, "loss": round(mean_loss, 5)}
                if validation_items and (step % s.eval_every == 0 or step == s.steps):
                    record["validation_loss"] = round(self.evaluate(validation_items), 5)
                    stopped_early = self._early_stopping(record["validation_loss"], best)
                history.append(record)
                advance(1, loss=mean_loss)
                if step % s.checkpoint_every == 0 and step < s.steps:
                    self._save_checkpoint(step, history, best)
                if stopped_early:
                    break
        if best["state"] is not None:
            acc.unwrap_model(self.model).load_state_dict(best["state"])
        precision = {"no": "fp32"}.get(str(acc.mixed_precision), str(acc.mixed_precision))
        return TrainResult(step, resumed_from, stopped_early, history, precision)

    def _all_params(self) -> list[torch.nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        for module in self.extra_modules:
            params += [p for p in module.parameters() if p.requires_grad]
        return params

    def _early_stopping(self, validation_loss: float, best: dict[str, Any]) -> bool:
        if self.schedule.patience is None:
            return False
        if validation_loss < best["loss"] - 1e-6:
            best.update(loss=validation_loss, bad_evals=0)
            state = self.accelerator.unwrap_model(self.model).state_dict()
            best["state"] = {k: v.detach().clone() for k, v in state.items()}
            return False
        best["bad_evals"] += 1
        return best["bad_evals"] >= self.schedule.patience

    @torch.no_grad()
    def evaluate(self, items: Sequence[Encoded]) -> float:
        self.model.eval()
        total, count = 0.0, 0
        size = self.schedule.batch_size
        for start in range(0, len(items), size):
            batch = self.encoder.training_batch(items[start: start + size])
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            with self.accelerator.autocast():
                total += self.loss_fn(self.model, batch).item() * len(batch["input_ids"])
            count += len(batch["input_ids"])
        self.model.train()
        return total / max(count, 1)


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
