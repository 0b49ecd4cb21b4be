"""Fine-tune and distill on several processes: `torchrun --nproc_per_node 2` (DDP over gloo).

(`accelerate launch --cpu --num_processes 2` starts a single process with accelerate 1.15: it sets no RANK or
WORLD_SIZE, so it cannot test anything distributed on a CPU machine.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

LEARNING = ["model=reference-tiny", "pipeline.stages=[load,finetune,prune.structural,distill,score]",
            "finetune.full.steps=300", "finetune.full.lr=1e-3", "finetune.full.eval_every=100",
            "finetune.lora.train.steps=20",
            "distill.train.steps=60", "prune.structural.vision_mlp_ratio=0", "data.test_size=100",
            "score.models=[teacher,student]", "score.latency_repeats=2"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(args: list[str], processes: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, DSVL_ADAPT_NO_PROGRESS="1")
    if processes == 1:
        command = [sys.executable, "-m", "dsvl_adapt.cli", "run", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(_free_port()), "-m", "dsvl_adapt.cli", "run", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)


def test_two_processes_run_the_whole_pipeline(tiny_overrides, tmp_path):
    result = _launch([*tiny_overrides, "pipeline.stages=[load,finetune,prune.structural,distill,score]",
                      f"run_dir={tmp_path / 'ddp'}"], processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((tmp_path / "ddp" / "scorecard.json").read_text())
    assert set(card["accuracy"]) == {"base", "teacher", "student"}
    finetune = json.loads((tmp_path / "ddp" / "stages" / "finetune" / "stage.json").read_text())["figures"]
    assert finetune["full"]["steps"] == 20
    assert finetune["full"]["world_size"] == finetune["lora"]["world_size"] == 2  # really two processes


@pytest.mark.slow
def test_two_processes_reach_the_quality_of_one(tmp_path):
    one = _launch([*LEARNING, f"run_dir={tmp_path / 'one'}"], processes=1)
    two = _launch([*LEARNING, f"run_dir={tmp_path / 'two'}"], processes=2)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    a = json.loads((tmp_path / "one" / "scorecard.json").read_text())["accuracy"]
    b = json.loads((tmp_path / "two" / "scorecard.json").read_text())["accuracy"]
    assert a["teacher"] > 0.5  # it learnt something: chance is 0.2
    assert abs(a["student"] - b["student"]) <= 0.02, (a, b)


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_a_sharded_launch_is_refused_before_any_step(monkeypatch, tmp_path, kind):
    """FSDP/DeepSpeed would shard weights that the stages save, merge and early-stop on whole."""
    import accelerate
    import torch
    from accelerate.utils import DistributedType

    from dsvl_adapt.config import TrainSchedule
    from dsvl_adapt.errors import ConfigError
    from dsvl_adapt.inject.training import Trainer

    monkeypatch.setattr(accelerate.Accelerator, "distributed_type", property(lambda self: DistributedType[kind]))
    with pytest.raises(ConfigError, match=rf"{kind}.*docs/distributed.md"):
        Trainer(torch.nn.Linear(2, 2), encoder=None, schedule=TrainSchedule(steps=1, lr=1e-3),
                checkpoint_dir=tmp_path, seed=0, label="test")
