"""``dsvl-adapt report``: collecting a sweep, Pareto fronts, feasibility, the best run, report.html, JSON."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from dsvl_adapt.score.report import (
    collect_runs,
    collect_scorecards,
    pareto_front,
    report_main,
    write_report,
)
from dsvl_adapt.score.scorecard import (
    FitCheck,
    Latency,
    ObjectiveCheck,
    Scorecard,
    Size,
    TargetFit,
)

MIB = 2**20


def make_card(accuracy: float, p90: float, mib: float, *, retention: float = 0.97, latency_limit: float = 600.0,
              r: int = 8) -> Scorecard:
    teacher = 0.92
    objectives = [ObjectiveCheck(name="min_retention", ok=retention >= 0.95, value=retention, limit=0.95)]
    latency = {"p50_ms": p90 * 0.9, "p99_ms": p90 * 1.1, "runtime": "torch-eager", "threads": 8, "cpu": "Xeon"}
    return Scorecard(
        vertical="industrial", metric="accuracy",
        accuracy={"base": 0.4, "teacher": teacher, "student": accuracy}, retention=retention,
        metrics={m: {"accuracy": v} for m, v in (("base", 0.4), ("teacher", teacher), ("student", accuracy))},
        general={"base": 0.6, "teacher": 0.55, "student": round(accuracy - 0.3, 2)},
        latency={"teacher": Latency(p90_ms=900.0, **{**latency, "p50_ms": 800.0, "p99_ms": 950.0}),
                 "student": Latency(p90_ms=p90, **latency)},
        size={"teacher": Size(bytes=int(3800 * MIB)), "student": Size(bytes=int(mib * MIB))},
        params={"teacher": 1_900_000_000, "student": int(mib * MIB)},
        targets=[TargetFit(name="cpu-xeon-ort", device="cpu", runtime="onnxruntime", fits=p90 <= latency_limit,
                           checks=[FitCheck(name="memory", ok=True, value=1.2, limit=16.0, unit="GB"),
                                   FitCheck(name="latency_p90", ok=p90 <= latency_limit, value=p90,
                                            limit=latency_limit, unit="ms", note="measured")])],
        objectives=objectives, verdict=all(o.ok for o in objectives),
        provenance={"config": {"vertical": {"name": "industrial", "target": None},
                               "pipeline": {"stages": ["load", "finetune", "compress", "score"]},
                               "finetune": {"lora": {"r": r}}, "seed": 0}},
    )


def write_run(run_dir: Path, card: Scorecard | None, overrides: list[str] | None, failure: str | None = None) -> None:
    run_dir.mkdir(parents=True)
    if overrides is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if failure is not None:
        (run_dir / "failure.json").write_text(json.dumps({"error": failure, "type": "StageError"}))
    if card is not None:
        card.write(run_dir)  # scorecard.json + scorecard.md, as the score stage publishes them
        card.write(run_dir / "stages" / "score")  # the stage's own copy must not count twice
        student = run_dir / "stages" / "compress" / "student"
        student.mkdir(parents=True)
        record = {"stage": "compress", "artifacts": {"student": "student"}}
        (student.parent / "stage.json").write_text(json.dumps(record))


# index in the sweep: (accuracy, p90 ms, MiB, extra)
SWEEP = {
    0: (0.80, 300.0, 1000.0, {}),                        # feasible, on both fronts
    1: (0.86, 420.0, 1200.0, {}),                        # feasible, on both fronts: the best feasible
    2: (0.90, 500.0, 1500.0, {"latency_limit": 450.0}),  # most accurate, misses its target's latency
    3: (0.70, 520.0, 900.0, {"retention": 0.76}),        # misses min_retention; smallest: on the size front only
    5: (0.84, 450.0, 1300.0, {}),                        # feasible, dominated by 1 on both
}


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2026-11-28" / "10-00-00"
    for index, (accuracy, p90, mib, extra) in SWEEP.items():
        r = 2 ** (index + 2)
        write_run(root / str(index), make_card(accuracy, p90, mib, r=r, **extra),
                  ["vertical=industrial", "model=reference-tiny", f"finetune.lora.r={r}", f"seed={index % 2}"])
    write_run(root / "4", None, ["vertical=industrial", "model=reference-tiny", "finetune.lora.r=64", "seed=0"],
              failure="stage 'compress': out of memory while pruning")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_pareto_front() -> None:
    assert pareto_front([]) == []
    points = [(0.8, 300), (0.86, 420), (0.9, 500), (0.7, 520), (0.84, 450), (None, 10), (0.99, None)]
    assert pareto_front(points) == [0, 1, 2]
    assert pareto_front([(0.8, 1000), (0.86, 1200), (0.9, 1500), (0.7, 900), (0.84, 1300)]) == [3, 0, 1, 2]
    assert pareto_front([(0.5, 10), (0.5, 10), (0.4, 10)]) == [0, 1]  # equal points are both on it
    assert pareto_front([(0.5, 10), (float("nan"), 1)]) == [0]


def test_collect_finds_every_run_once_with_failures(sweep: Path) -> None:
    runs = collect_runs([sweep.parent.parent])
    assert [r.path.name for r in runs] == ["0", "1", "2", "3", "4", "5"]
    failed = runs[4]
    assert failed.status == "failed" and failed.card is None and "out of memory" in failed.failure
    assert runs[1].student_dir == sweep / "1" / "stages" / "compress" / "student"
    assert runs[1].overrides["finetune.lora.r"] == "8"
    cards = collect_scorecards([sweep])
    assert len(cards) == 5 and all(isinstance(card, Scorecard) for _, card in cards)
    (sweep / "6").mkdir()  # a trial still running (or killed): manifest, no scorecard, no failure.json
    (sweep / "6" / "manifest.json").write_text(json.dumps({"config": {"finetune": {"lora": {"r": 256}}}}))
    (sweep / "7").mkdir()
    (sweep / "7" / "scorecard.json").write_text("{not json")
    runs = collect_runs([sweep])
    assert [(r.path.name, r.status) for r in runs[-2:]] == [("6", "incomplete"), ("7", "failed")]
    assert runs[-2].setting("finetune.lora.r") == "256" and "unreadable scorecard.json" in runs[-1].failure


def test_report_fronts_feasibility_and_best(sweep: Path, tmp_path: Path) -> None:
    report = write_report([sweep], tmp_path / "out")
    by_name = {r.path.name: r for r in report.runs}
    assert [n for n, r in by_name.items() if r.pareto_latency] == ["0", "1", "2"]
    assert sorted(n for n, r in by_name.items() if r.pareto_size) == ["0", "1", "2", "3"]
    assert [n for n, r in by_name.items() if r.feasible] == ["0", "1", "5"]
    assert "cpu-xeon-ort latency_p90: 500.000 ms (limit 450.000 ms)" in by_name["2"].reasons
    assert by_name["3"].reasons == ["min_retention: 0.760 (limit 0.950)"]
    assert report.best is by_name["1"] and report.best_feasible
    assert report.varying == ["finetune.lora.r", "seed"]  # vertical and model are the same everywhere

    html = report.path.read_text()
    assert report.path == tmp_path / "out" / "report.html"
    assert "<script" not in html.lower()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 2 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "best feasible run: #2" in html  # runs are numbered from 1 in natural order
    assert "student model:" in html and 'href="../multirun/2026-11-28/10-00-00/1/stages/compress/student"' in html
    assert "out of memory while pruning" in html and "finetune.lora.r" in html


def test_nearest_miss_when_nothing_is_feasible(tmp_path: Path) -> None:
    write_run(tmp_path / "a", make_card(0.9, 700, 1000, latency_limit=400), None)   # 75% over its latency
    write_run(tmp_path / "b", make_card(0.6, 300, 1000, retention=0.93, r=16), None)  # 2% short on retention
    report = write_report([tmp_path], tmp_path)
    assert not report.best_feasible and report.best.path.name == "b"
    assert report.varying == ["finetune.lora.r"]  # no overrides.yaml: differences come from provenance.config
    assert "nearest miss" in report.path.read_text()


def test_report_main_json_and_table(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert report_main([str(sweep)], as_json=True, out=str(tmp_path / "j")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["best"]["label"] == "1" and data["best_feasible"] is True
    assert data["counts"] == {"ok": 5, "failed": 1, "feasible": 3}
    assert data["report"] == str(tmp_path / "j" / "report.html")
    row = next(r for r in data["runs"] if r["label"] == "4")
    assert row["status"] == "failed" and "out of memory" in row["failure"] and row["varying"]["finetune.lora.r"] == "64"
    assert next(r for r in data["runs"] if r["label"] == "0")["pareto_latency"] is True
    assert next(r for r in data["runs"] if r["label"] == "1")["general"] == 0.56  # the student's general accuracy

    monkeypatch.setenv("COLUMNS", "160")
    assert report_main([str(sweep)], as_json=False, out=None) == 0
    out = capsys.readouterr().out
    assert "best feasible run: #2 (1), accuracy 0.860, student model: " in out
    assert "r=64" in out and "out of memory" in out and (sweep / "report.html").is_file()


def test_report_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main([str(tmp_path / "missing")], as_json=False, out=None) == 2
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty")], as_json=False, out=None) == 2
    assert "no runs under" in capsys.readouterr().err
    write_run(tmp_path / "bad" / "0", make_card(0.6, 300, 1000, retention=0.5), None)
    assert report_main([str(tmp_path / "bad")], as_json=True, out=None) == 3


def test_the_report_draws_what_each_update_did_to_the_old_and_the_new(tmp_path: Path) -> None:
    import io

    from PIL import Image

    from dsvl_adapt.score.lineage import Lineage, SetScore

    def update_of(parent: Path, version: int, old: tuple[float, float], new: tuple[float, float]) -> Scorecard:
        scores = {key: SetScore(rows=100, parent=p, update=u, parent_ci=[p - 0.05, p + 0.05],
                                update_ci=[u - 0.04, u + 0.04], change=u - p, change_ci=[u - p - 0.06, u - p + 0.06],
                                within_noise=False) for key, (p, u) in (("old", old), ("new", new))}
        lineage = Lineage(version=version, parent=str(parent), parent_manifest_sha256="0" * 64, strategy="replay",
                          increment={"source": f"week{version - 1}"}, scores=scores,
                          accuracy_old={"parent": old[0], "update": old[1]},
                          accuracy_new={"parent": new[0], "update": new[1]},
                          forgetting=old[0] - old[1], forgetting_ci=[old[0] - old[1] - 0.06, old[0] - old[1] + 0.06])
        return make_card(0.85, 300.0, 1000.0).model_copy(update={"lineage": lineage})

    first, second, third = tmp_path / "shop", tmp_path / "shop-v2", tmp_path / "shop-v3"
    write_run(first, make_card(0.85, 300.0, 1000.0), None)
    write_run(second, update_of(first, 2, (0.90, 0.88), (0.40, 0.92)), None)
    write_run(third, update_of(second, 3, (0.91, 0.55), (0.30, 0.95)), None)
    report = write_report([first, second, third], tmp_path / "report")

    edges = report.lineage()
    assert [(Path(e["child"]).name, e["intervals"]["new"]["update"]) for e in edges] == [
        ("shop-v2", [pytest.approx(0.88), pytest.approx(0.96)]), ("shop-v3", [pytest.approx(0.91), pytest.approx(0.99)])]
    page = (tmp_path / "report" / "report.html").read_text()
    section = page[page.index('<section id="lineage">'):]
    section = section[:section.index("</section>")]
    assert "forgetting +0.360" in section  # v3 forgot: the text says so beside the picture
    encoded = re.search(r'<img alt="old and new accuracy[^"]*" src="data:image/png;base64,([^"]+)"', section)
    assert encoded is not None, "the lineage section has no plot"
    assert Image.open(io.BytesIO(base64.b64decode(encoded.group(1)))).size == (1040, 400)
