"""The medical vertical: registry, report metrics on hand-checked examples, JSONL and DICOM loaders."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dsvl_adapt.data.loading import load_split
from dsvl_adapt.errors import DataError
from dsvl_adapt.plugins import PluginManager
from dsvl_adapt.schemas import DatasetRequest

pytest.importorskip("dsvl_adapt_medical")
pydicom = pytest.importorskip("pydicom")

from dsvl_adapt_medical import DATASET, REPORT_QUESTION  # noqa: E402
from dsvl_adapt_medical import dicom as D  # noqa: E402
from dsvl_adapt_medical import metrics as M  # noqa: E402


@pytest.fixture(scope="module")
def registry():
    return PluginManager().registry


def _spec(registry):
    return registry.datasets.get(DATASET)


def _request(split, source, size=1):
    return DatasetRequest(split=split, size=size, source=source)


# ------------------------------------------------------------------------------ registry
def test_registry_holds_the_vertical_and_its_parts(registry):
    vertical = registry.vertical("medical")
    assert vertical.primary_metric == "finding_f1"
    assert vertical.metrics == ["finding_f1", "finding_precision", "finding_recall", "rouge_l"]
    assert vertical.dataset in registry.datasets and vertical.prompt in registry.prompts
    assert all(m in registry.metrics for m in vertical.metrics)
    t4 = registry.targets.get("hospital-t4")
    assert (t4.device, t4.runtime, t4.memory_gb, t4.dtypes) == ("gpu", "tensorrt", 16, ["fp16", "int8"])
    assert t4.latency_p90_ms == 3200 and t4.peak_tops == {"fp16": 65, "int8": 130}
    assert t4.memory_bandwidth_gbps == 320
    cpu = registry.targets.get(vertical.targets[1])
    assert (cpu.device, cpu.runtime) == ("cpu", "onnxruntime")
    assert vertical.objectives.min_retention is not None
    assert "pkg://dsvl_adapt_medical.conf" in registry.config_search_path
    assert not [f for f in registry.failures if "medical" in f]


# ------------------------------------------------------------------------------ findings
@pytest.mark.parametrize(("report", "labels"), [
    ("no acute finding", {M.NO_FINDING}),
    ("Nodule in the right lung.", {("nodule", "right")}),
    ("pleural effusion on the left", {("effusion", "left")}),
    ("opacity in the left lung and nodule in the right lung", {("opacity", "left"), ("nodule", "right")}),
    ("bilateral pleural effusions", {("effusion", "left"), ("effusion", "right")}),
    ("no pleural effusion", {M.NO_FINDING}),                       # only a negated finding: normal
    ("No effusion. Nodule in the left lung", {("nodule", "left")}),
    ("nodule", {("nodule", "")}),                                  # no side: its own label
    ("zzz-not-an-answer", set()), ("", set()), ("abnormal", set()),
])
def test_parse_findings(report, labels):
    assert M.parse_findings(report) == labels


def test_parser_reads_every_generator_report_back():
    generator = pytest.importorskip("dsvl_adapt_medical.generator")
    assert set(M.FINDING_TERMS.values()) == set(generator.ABNORMAL)
    assert set(generator.SIDES) <= set(M.SIDE_TERMS)
    assert REPORT_QUESTION in generator.QUESTIONS
    for answer in generator.ANSWERS:
        truth = generator.parse_answer(answer)
        expected = {M.NO_FINDING} if truth["finding"] == "normal" else {(truth["finding"], truth["side"])}
        assert M.parse_findings(answer) == expected, answer


# reference                      generated                                          labels: TP FP FN
# nodule in the right lung       nodule in the right lung                                  1  0  0
# pleural effusion on the left   pleural effusion on the right                             0  1  1
# no acute finding               no acute finding                                          1  0  0
# opacity in the left lung       opacity in the left lung and bilateral nodules            1  2  0
# nodule in the left lung        "" (nothing readable)                                     0  0  1
# opacity in the right lung      Opacity in the right lung.                                1  0  0
# pooled: TP 4, FP 3, FN 2 -> precision 4/7, recall 4/6, F1 = 2*4 / (2*4 + 3 + 2) = 8/13
FINDING_REFS = ["nodule in the right lung", "pleural effusion on the left", "no acute finding",
                "opacity in the left lung", "nodule in the left lung", "opacity in the right lung"]
FINDING_PREDS = ["nodule in the right lung", "pleural effusion on the right", "no acute finding",
                 "opacity in the left lung and bilateral nodules", "", "Opacity in the right lung."]


def test_finding_precision_recall_f1_by_hand():
    assert M.finding_counts(FINDING_PREDS, FINDING_REFS) == (4, 3, 2)
    assert M.finding_precision(FINDING_PREDS, FINDING_REFS) == pytest.approx(4 / 7)
    assert M.finding_recall(FINDING_PREDS, FINDING_REFS) == pytest.approx(4 / 6)
    assert M.finding_f1(FINDING_PREDS, FINDING_REFS) == pytest.approx(8 / 13)
    assert M.finding_f1(FINDING_REFS, FINDING_REFS) == 1.0
    assert M.finding_f1([""] * 6, FINDING_REFS) == 0.0 and M.finding_precision([""] * 6, FINDING_REFS) == 0.0


# ------------------------------------------------------------------------------ ROUGE-L
def test_rouge_l_by_hand():
    # reference "small nodule in the left lung" (m = 6), generated "Nodule in the right lung." (n = 5)
    # LCS = nodule in the lung = 4; R = 4/6, P = 4/5, F = 2RP / (R + P) = (16/15) / (22/15) = 8/11
    assert M.lcs_length("a b c d".split(), "a c b d".split()) == 3
    assert M.rouge_l_f("small nodule in the left lung", "Nodule in the right lung.") == pytest.approx(8 / 11)
    # mean over reports: (8/11 + 1 + 0) / 3
    refs = ["small nodule in the left lung", "no acute findings", "effusion"]
    preds = ["Nodule in the right lung.", "No acute findings.", ""]
    assert M.rouge_l(preds, refs) == pytest.approx((8 / 11 + 1) / 3)


# ------------------------------------------------------------------------------ DICOM
def _dicom(path, stored, **tags):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = tags.pop("PhotometricInterpretation", "MONOCHROME2")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# stored [[1024, 1064], [0, 4095]] with RescaleSlope 1, RescaleIntercept -1024 -> HU [[0, 40], [-1024, 3071]]
# window C = 40, W = 401 (linear, PS3.3 C.11.2.1.2): below C - 0.5 - (W-1)/2 = -160.5 -> 0, above 239.5 -> 255,
# else ((x - 39.5) / 400 + 0.5) * 255:  HU 0 -> 0.40125 * 255 = 102.3 -> 102;  HU 40 -> 0.50125 * 255 = 127.8 -> 128
STORED = np.array([[1024, 1064], [0, 4095]])
EXPECTED = [[102, 128], [0, 255]]


def test_windowing_uses_rescale_and_window_from_the_header(tmp_path):
    path = _dicom(tmp_path / "ct.dcm", STORED, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40,
                  WindowWidth=401)
    image = D.read_dicom(path)
    assert image.mode == "RGB" and np.asarray(image)[..., 0].tolist() == EXPECTED
    # slope 2: stored 532 -> 2 * 532 - 1024 = 40 HU -> 128 again
    path = _dicom(tmp_path / "ct2.dcm", np.array([[532, 0]]), RescaleSlope=2, RescaleIntercept=-1024,
                  WindowCenter=40, WindowWidth=401)
    assert np.asarray(D.read_dicom(path))[..., 0].tolist() == [[128, 0]]


def test_monochrome1_is_inverted_and_the_first_window_is_used(tmp_path):
    path = _dicom(tmp_path / "cr.dcm", STORED, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=[40, 400],
                  WindowWidth=[401, 2000], PhotometricInterpretation="MONOCHROME1")
    assert np.asarray(D.read_dicom(path))[..., 0].tolist() == [[255 - v for v in r] for r in EXPECTED]


def test_no_window_uses_the_image_range(tmp_path):
    # stored 0, 100, 200, 400 with no window: min..max -> 0, 63.75, 127.5, 255 -> 0, 64, 128, 255
    path = _dicom(tmp_path / "raw.dcm", np.array([[0, 100], [200, 400]]))
    assert np.asarray(D.read_dicom(path))[..., 0].tolist() == [[0, 64], [128, 255]]


def test_dicom_folder_loads_through_the_core(registry, tmp_path):
    _dicom(tmp_path / "test" / "studies" / "a.dcm", STORED, RescaleSlope=1, RescaleIntercept=-1024,
           WindowCenter=40, WindowWidth=401)
    labels = [{"file": "studies/a.dcm", "answer": "Small nodule in the left lung.", "id": "s1",
               "meta": {"view": "PA"}}]
    (tmp_path / "test" / "labels.jsonl").write_text("\n".join(json.dumps(x) for x in labels) + "\n")
    (row,) = load_split(_spec(registry), _request("test", tmp_path)).rows
    assert row.id == "s1" and row.question == REPORT_QUESTION and row.answer == "Small nodule in the left lung."
    assert row.meta == {"view": "PA", "file": "studies/a.dcm"}
    assert np.asarray(row.image)[..., 0].tolist() == EXPECTED


@pytest.mark.parametrize("damage", ["not dicom", "truncated"])
def test_corrupt_dicom_fails_by_name(registry, tmp_path, damage):
    folder = tmp_path / "train"
    good = _dicom(folder / "good.dcm", STORED, WindowCenter=40, WindowWidth=401)
    bad = folder / "bad.dcm"
    bad.write_bytes(b"this is not a DICOM file" * 20 if damage == "not dicom" else good.read_bytes()[:-3])
    labels = [{"file": "good.dcm", "answer": "No acute findings."}, {"file": "bad.dcm", "answer": "Effusion."}]
    (folder / "labels.jsonl").write_text("\n".join(json.dumps(x) for x in labels) + "\n")
    with pytest.raises(DataError) as info:
        load_split(_spec(registry), _request("train", tmp_path))
    message = str(info.value)
    assert f"{folder / 'labels.jsonl'}:2" in message and str(bad) in message
    assert ("not a DICOM file" if damage == "not dicom" else "cannot decode the DICOM pixel data") in message
    skipped = load_split(_spec(registry), _request("train", tmp_path), on_bad_row="skip")
    assert len(skipped.rows) == 1 and len(skipped.skipped) == 1


def test_jsonl_loader(registry, tmp_path):
    Image.new("L", (32, 32), 90).save(tmp_path / "cxr.png")
    line = {"image": "cxr.png", "question": REPORT_QUESTION, "answer": "No acute findings."}
    (tmp_path / "train.jsonl").write_text(json.dumps(line) + "\n")
    (row,) = load_split(_spec(registry), _request("train", tmp_path)).rows
    assert row.answer == "No acute findings." and row.image.mode == "RGB"


def test_missing_split_names_both_formats(registry, tmp_path):
    with pytest.raises(DataError, match=r"test\.jsonl .*test/labels\.jsonl"):
        load_split(_spec(registry), _request("test", tmp_path))


# ------------------------------------------------------------------------------ config
def test_plugin_passes_the_conformance_kit():
    from dsvl_adapt.testing import check_plugin

    check_plugin("medical").raise_for_problems()


def test_validate_composes_the_vertical():
    done = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "validate", "vertical=medical"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "vertical=medical" in done.stdout
