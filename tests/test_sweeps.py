"""Hydra multirun sweeps through the CLI: a parallel grid sharing its upstream stages, an Optuna search
under the vertical's objectives, the report on a sweep folder, a failing trial, cluster launcher configs.

Every sweep is tiny (reference-tiny, a few steps, no quantize/export, student-only scoring) and runs in
a subprocess (`python -m dsvl_adapt.cli run -m ...`) with cwd=tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsvl_adapt.sweep import WORST, TrialConstraints

pytest.importorskip("hydra_plugins.hydra_joblib_launcher",
                    reason='needs the sweep extra: pip install "dsvl-adapt[sweep]"')

TINY = [
    "model=reference-tiny", "finetune=fast", "distill=fast",
    "data.train_size=16", "data.validation_size=4", "data.test_size=4",
    "finetune.full.steps=2", "finetune.lora.r=4", "finetune.lora.train.steps=1", "distill.train.steps=1",
    "pipeline.stages=[load,finetune,prune.structural,prune.weights,distill,score]",
    "score.models=[student]", "score.latency_repeats=2", "score.latency_warmup=0",
]
PARALLEL = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]

PLUGIN = '''
from dsvl_adapt import hookimpl
from dsvl_adapt.schemas import Objectives, Vertical


@hookimpl
def dsvl_adapt_register_verticals(register):
    register(Vertical(name="sweeptest", description="industrial's data, an objective a tiny model can meet",
                      dataset="industrial-surfaces", prompt="industrial-inspection", metrics=["accuracy"],
                      targets=["cpu-box"], max_answer_tokens=6,
                      objectives=Objectives(min_accuracy=0.0, floor_margin=None, max_forgetting=None)))


@hookimpl
def dsvl_adapt_config_search_path():
    return "pkg://sweeptest_vertical.conf"
'''


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An installed-looking plugin with a vertical whose objective a tiny model meets (feasible trials)."""
    root = tmp_path_factory.mktemp("sweeptest-plugin")
    package = root / "sweeptest_vertical"
    (package / "conf" / "vertical").mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN)
    (package / "conf" / "__init__.py").write_text("")
    (package / "conf" / "vertical" / "sweeptest.yaml").write_text("# @package _global_\nvertical:\n  name: sweeptest\n")
    dist = root / "sweeptest_vertical-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sweeptest-vertical\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dsvl_adapt]\nsweeptest = sweeptest_vertical\n")
    return {"PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stage cache for the sweeps below that share load and finetune (not the grid's own)."""
    return tmp_path_factory.mktemp("sweep-cache")


def _cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", *args], capture_output=True, text=True,
                          check=False, cwd=cwd, env=dict(os.environ, DSVL_ADAPT_NO_PROGRESS="1", **(env or {})),
                          timeout=timeout)


def _sweep(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Path:
    out = _cli(["run", "-m", "hydra.sweep.dir=sweep", *args], cwd, env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return cwd / "sweep"


def _trials(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The grid preset narrowed to 2 x 2 (command-line values win), two trials at a time under joblib."""
    cwd = tmp_path_factory.mktemp("grid")
    return _sweep(["sweep=grid", *PARALLEL, *TINY,
                   "prune.structural.lm_mlp_ratio=0.25,0.5", "prune.weights.sparsity=0.0,0.5"], cwd)


@pytest.mark.slow  # a Hydra multirun of several trials: minutes on 2 cores
def test_parallel_grid_runs_every_trial_and_finetunes_once(grid_sweep):
    trials = _trials(grid_sweep)
    assert len(trials) == 4
    assert all((t / "scorecard.json").is_file() for t in trials)
    cached = [t for t in trials if (t / "stages" / "finetune" / "from-cache.txt").is_file()]
    assert len(cached) == 3, "finetune must run once for the sweep; the other trials restore it"
    (computed,) = set(trials) - set(cached)
    assert json.loads((computed / "stages" / "finetune" / "stage.json").read_text())["seconds"] > 0
    assert len(list((grid_sweep / "cache").glob("finetune-*[!k]"))) == 1  # one entry (and its .lock)
    overrides = [set(json.loads((t / "objectives.json").read_text())["overrides"]) for t in trials]
    assert {o for s in overrides for o in s if o.startswith("prune.")} == {
        "prune.structural.lm_mlp_ratio=0.25", "prune.structural.lm_mlp_ratio=0.5",
        "prune.weights.sparsity=0.0", "prune.weights.sparsity=0.5"}


@pytest.mark.slow  # a Hydra multirun of several trials: minutes on 2 cores
def test_report_on_the_sweep_folder_writes_the_pareto_plot(grid_sweep):
    out = _cli(["report", str(grid_sweep), "--json"], grid_sweep.parent, timeout=120)
    assert out.returncode in (0, 3), out.stderr  # 3: no trial meets industrial's retention objective
    report = json.loads(out.stdout)
    assert len(report["runs"]) == 4 and all(r["status"] == "ok" for r in report["runs"])
    assert report["best"] is not None
    html = (grid_sweep / "report.html").read_text()
    assert 'id="pareto"' in html and "data:image/png;base64," in html


@pytest.mark.slow  # a Hydra multirun of several trials: minutes on 2 cores
def test_optuna_search_under_the_verticals_objectives(tmp_path, plugin_env, shared_cache):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    optuna = pytest.importorskip("optuna")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sweep = _sweep(["sweep=optuna", *PARALLEL, *TINY, "vertical=sweeptest", f"cache_dir={shared_cache}",
                    "hydra.sweeper.n_trials=4", f"hydra.sweeper.storage={storage}"], tmp_path, plugin_env)
    trials = _trials(sweep)
    assert len(trials) == 4
    for trial in trials:
        assert (trial / "scorecard.json").is_file() or (trial / "failure.json").is_file()
    assert (sweep / "optimization_results.yaml").is_file()

    study = optuna.load_study(study_name="dsvl-adapt", storage=storage)
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    for trial in study.trials:
        record = json.loads((sweep / str(trial.number) / "objectives.json").read_text())
        assert list(trial.values) == record["values"]  # (student accuracy, student p90 ms) as returned
        assert trial.system_attrs["nsga2:constraints"] == record["constraints"]  # read back by TrialConstraints
        assert (record["constraints"] == [0.0]) == record["feasible"]
    assert any(json.loads((t / "objectives.json").read_text())["feasible"] for t in trials)

    out = _cli(["report", str(sweep)], tmp_path, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "best feasible run: #" in out.stdout
    assert (sweep / "report.html").is_file()


def test_a_failing_trial_records_why_and_the_sweep_goes_on(tmp_path, plugin_env, shared_cache):
    """lm_mlp_ratio=0.99 leaves no channels of reference-tiny's 128 (rounded to round_to=8): that trial fails."""
    sweep = _sweep([*PARALLEL, *TINY, "vertical=sweeptest", f"cache_dir={shared_cache}",
                    "prune.structural.lm_mlp_ratio=0.99,0.25", "prune.structural.round_to=8"], tmp_path, plugin_env)
    failed, done = _trials(sweep)
    failure = json.loads((failed / "failure.json").read_text())
    assert "would leave no channels" in failure["error"] and failure["type"] == "StageError"
    assert not (failed / "scorecard.json").exists()
    record = json.loads((failed / "objectives.json").read_text())
    assert "prune.structural.lm_mlp_ratio=0.99" in record["overrides"]
    assert record["values"] == [-WORST, WORST] and not record["feasible"]
    assert (done / "scorecard.json").is_file() and not (done / "failure.json").exists()
    out = _cli(["report", str(sweep), "--json"], tmp_path, timeout=120)
    report = json.loads(out.stdout)
    assert [r["status"] for r in report["runs"]] == ["failed", "ok"]
    assert report["best"]["path"] == str(done) and report["best_feasible"]


@pytest.mark.slow
def test_optuna_preset_six_trials(tmp_path, plugin_env, shared_cache):
    """The product check: the preset as shipped (6 trials, NSGA-II with constraints), on a tiny model."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = _sweep(["sweep=optuna", *PARALLEL, *TINY, "vertical=sweeptest", f"cache_dir={shared_cache}"],
                   tmp_path, plugin_env)
    trials = _trials(sweep)
    assert len(trials) == 6
    assert all((t / "scorecard.json").is_file() or (t / "failure.json").is_file() for t in trials)
    out = _cli(["report", str(sweep)], tmp_path, timeout=120)
    assert out.returncode == 0 and "best feasible run: #" in out.stdout, out.stdout + out.stderr


# -- launchers: compose only (no cluster here) ------------------------------------------------
def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from dsvl_adapt.config import conf_dir, search_path_override
    from dsvl_adapt.plugins import get_registry

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return compose("config", overrides=overrides + search_path_override(get_registry().config_search_path),
                       return_hydra_config=True)


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "sweep=grid"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.timeout_min == 240
    folder = launcher.submitit_folder
    assert folder.startswith("multirun/industrial/") and folder.endswith("/.submitit/%j")


def test_ray_launcher_config_composes():
    cfg = _compose(["hydra/launcher=ray_cluster", "hydra.launcher.ray.init.address=ray://head:10001"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert launcher.ray.init.address == "ray://head:10001" and launcher.ray.remote.num_cpus == 8


def test_optuna_preset_composes_with_constraints():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = _compose(["sweep=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and list(sweeper.direction) == ["maximize", "minimize"]
    assert sweeper.sampler._target_ == "optuna.samplers.NSGAIISampler"
    assert sweeper.sampler.constraints_func._target_ == "dsvl_adapt.sweep.TrialConstraints"
    assert list(cfg.sweep.objectives) == ["metric", "p90_ms"] and cfg.sweep.penalize_infeasible is False
    tpe = _compose(["sweep=optuna-tpe"])
    assert tpe.hydra.sweeper.sampler._target_ == "optuna.samplers.MOTPESampler" and tpe.sweep.penalize_infeasible


# -- the constraints function on its own --------------------------------------------------------
class _Trial:
    def __init__(self, params):
        self.params = params


def test_trial_constraints_find_each_trials_record(tmp_path):
    def record(num, overrides, constraints):
        (tmp_path / str(num)).mkdir()
        (tmp_path / str(num) / "objectives.json").write_text(json.dumps(
            {"overrides": overrides, "constraints": constraints}))

    record(0, ["a=0.25", "b=x", "model=reference-tiny"], [0.0])
    record(1, ["a=0.5", "b=x", "model=reference-tiny"], [0.3])
    record(2, ["a=0.5", "b=x", "model=reference-tiny"], [0.3])
    constraints = TrialConstraints(tmp_path)
    assert constraints(_Trial({"a": 0.5, "b": "x"})) == [0.3]
    assert constraints(_Trial({"a": 0.25, "b": "x"})) == [0.0]
    assert constraints(_Trial({"a": 0.5, "b": "x"})) == [0.3]  # the other trial with the same parameters
    assert constraints(_Trial({"a": 0.5, "b": "x"})) == [WORST]  # none left: counted infeasible


@pytest.mark.slow  # a Hydra multirun of several trials: minutes on 2 cores
def test_trial_objectives_penalties_and_checks(tmp_path, grid_sweep):
    from dsvl_adapt.errors import ConfigError
    from dsvl_adapt.sweep import objective_names, trial_objectives

    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "failure.json").write_text(json.dumps({"error": "boom", "type": "StageError"}))
    assert trial_objectives(failed, {}, None) == (-WORST, WORST)
    assert trial_objectives(failed, {"objectives": ["size_mib"]}, ["minimize"]) == WORST  # one objective: a float
    assert json.loads((failed / "objectives.json").read_text())["constraints"] == [WORST]

    infeasible = tmp_path / "infeasible"  # industrial's retention objective is not met by the tiny grid
    infeasible.mkdir()
    (infeasible / "scorecard.json").write_text((grid_sweep / "0" / "scorecard.json").read_text())
    accuracy, p90 = trial_objectives(infeasible, {}, ["maximize", "minimize"])
    assert accuracy >= 0 and 0 < p90 < WORST
    record = json.loads((infeasible / "objectives.json").read_text())
    assert not record["feasible"] and record["constraints"][0] > 0
    assert any(r.startswith("min_retention") for r in record["reasons"])
    assert trial_objectives(infeasible, {"penalize_infeasible": True}, ["maximize", "minimize"]) == (-WORST, WORST)
    with pytest.raises(ConfigError, match="unknown objective"):
        objective_names({"objectives": ["speed"]})
