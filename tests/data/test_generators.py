"""Synthetic task generators: determinism, split separation, balance, image format, label space.

Fast (no training): small ``n`` and small images. Learnability is checked separately by
``benchmarks/learnability.py``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
MODULES = {
    "industrial": "dsvl_adapt_industrial.generator",
    "medical": "dsvl_adapt_medical.generator",
    "ecommerce": "dsvl_adapt_ecommerce.generator",
    "finance": "dsvl_adapt_finance.generator",
    "general": "dsvl_adapt.data.general",
}


def _load(name: str):
    try:
        return importlib.import_module(MODULES[name])
    except ImportError:  # plugin not installed: use the in-repo source
        for p in [ROOT, *sorted((ROOT / "plugins").glob("*"))]:
            if str(p) not in sys.path:
                sys.path.insert(0, str(p))
        return importlib.import_module(MODULES[name])


@pytest.fixture(params=list(MODULES), scope="module")
def gen(request):
    return _load(request.param)


def _digest(rows) -> list[str]:
    out = []
    for r in rows:
        h = hashlib.sha256(r["image"].tobytes())
        h.update(json.dumps([r["id"], r["question"], r["answer"], r["meta"]], sort_keys=True, default=str).encode())
        out.append(h.hexdigest())
    return out


def _image_hashes(rows) -> set[str]:
    return {hashlib.sha256(r["image"].tobytes()).hexdigest() for r in rows}


def test_row_schema_and_image_format(gen):
    for size in (32, 64):
        rows = gen.generate_rows("train", 6, seed=1, image_size=size)
        assert len(rows) == 6
        for r in rows:
            assert set(r) >= {"id", "image", "question", "answer", "meta"}
            assert isinstance(r["image"], Image.Image)
            assert r["image"].mode == "RGB" and r["image"].size == (size, size)
            assert isinstance(r["id"], str) and r["id"]
            assert isinstance(r["question"], str) and r["question"].strip()
            assert isinstance(r["meta"], dict)


def test_default_image_size_is_128(gen):
    (row,) = gen.generate_rows("validation", 1)
    assert row["image"].size == (128, 128) and row["image"].mode == "RGB"


def test_answers_in_label_space_and_normalised(gen):
    rows = gen.generate_rows("train", gen.BALANCE_BLOCK, seed=0, image_size=32)
    assert set(gen.QUESTION_TYPES) == set(gen.ANSWER_SPACE)
    for r in rows:
        q = r["meta"]["question_type"]
        assert q in gen.QUESTION_TYPES
        a = r["answer"]
        assert a in gen.ANSWER_SPACE[q]
        assert a == a.lower().strip() and " ".join(a.split()) == a
        assert 1 <= len(a.split()) <= 6


def test_deterministic(gen):
    a = gen.generate_rows("train", 5, seed=7, image_size=48)
    b = gen.generate_rows("train", 5, seed=7, image_size=48)
    assert _digest(a) == _digest(b)


def test_prefix_stable(gen):
    """Row i depends only on (split, seed, i, image_size): a longer list extends a shorter one."""
    short = gen.generate_rows("test", 3, seed=2, image_size=32)
    long = gen.generate_rows("test", 7, seed=2, image_size=32)
    assert _digest(short) == _digest(long[:3])


def test_seed_changes_data(gen):
    a = gen.generate_rows("train", 4, seed=0, image_size=32)
    b = gen.generate_rows("train", 4, seed=1, image_size=32)
    assert _image_hashes(a).isdisjoint(_image_hashes(b))


def test_splits_disjoint(gen):
    splits = {s: gen.generate_rows(s, 12, seed=0, image_size=32) for s in ("train", "validation", "test")}
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert len(ids) == len(set(ids))
    hashes = {s: _image_hashes(rows) for s, rows in splits.items()}
    assert hashes["train"].isdisjoint(hashes["validation"])
    assert hashes["train"].isdisjoint(hashes["test"])
    assert hashes["validation"].isdisjoint(hashes["test"])


def test_class_balance(gen):
    """In every block of BALANCE_BLOCK rows each answer of a question type is equally frequent.

    (Medical balances findings, then sides within each finding: "no acute finding" is one
    of four findings but has no side, so it is one answer in four, not one in seven.)
    """
    n = 2 * gen.BALANCE_BLOCK
    rows = gen.generate_rows("train", n, seed=3, image_size=32)
    medical = gen.__name__.endswith("medical.generator")
    for block in (rows[: n // 2], rows[n // 2:]):
        by_q: dict[str, Counter] = {}
        for r in block:
            by_q.setdefault(r["meta"]["question_type"], Counter())[r["answer"]] += 1
        assert set(by_q) == set(gen.QUESTION_TYPES)
        for q, counts in by_q.items():
            assert set(counts) == set(gen.ANSWER_SPACE[q]), q
            if medical:
                findings = Counter(r["meta"]["finding"] for r in block)
                assert len(set(findings.values())) == 1 and set(findings) == set(gen.FINDINGS), findings
                sides = Counter((r["meta"]["finding"], r["meta"]["side"]) for r in block if r["meta"]["side"])
                assert len(set(sides.values())) == 1 and len(sides) == 2 * len(gen.ABNORMAL), sides
            else:
                assert len(set(counts.values())) == 1, (q, counts)


def test_bad_arguments(gen):
    with pytest.raises(ValueError):
        gen.generate_rows("dev", 2)
    with pytest.raises(ValueError):
        gen.generate_rows("train", 2, seed=-1)
    assert gen.generate_rows("train", 0) == []


def test_streams_do_not_use_python_hash():
    """Same rows under different PYTHONHASHSEED (split streams come from a stable hash)."""
    code = (
        "import sys, hashlib; sys.path[:0] = {paths!r}\n"
        "from dsvl_adapt_industrial.generator import generate_rows\n"
        "rows = generate_rows('validation', 3, seed=5, image_size=32)\n"
        "print(hashlib.sha256(b''.join(r['image'].tobytes() for r in rows)).hexdigest())\n"
    ).format(paths=[str(ROOT), str(ROOT / "plugins" / "industrial")])
    outs = set()
    for hs in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hs}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout.strip())
    gen = _load("industrial")
    rows = gen.generate_rows("validation", 3, seed=5, image_size=32)
    outs.add(hashlib.sha256(b"".join(r["image"].tobytes() for r in rows)).hexdigest())
    assert len(outs) == 1


# ----------------------------------------------------------------- generator-specific meta
def test_industrial_meta():
    g = _load("industrial")
    rows = g.generate_rows("train", g.BALANCE_BLOCK * 2, seed=0, image_size=64)
    for r in rows:
        m = r["meta"]
        assert m["defect"] == r["answer"] and m["surface"] in g.SURFACES
        if m["defect"] == "none":
            assert m["bbox"] is None and m["location"] is None
        else:
            x0, y0, x1, y1 = m["bbox"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert m["location"] in g.LOCATIONS


def test_medical_report_parses_back():
    g = _load("medical")
    for finding, side in g._SLOTS:
        assert g.parse_answer(g.format_answer(finding, side)) == {"finding": finding, "side": side}
    assert g.parse_answer("No acute finding.") == {"finding": "normal", "side": None}
    assert g.parse_answer("Small NODULE, left lung") == {"finding": "nodule", "side": "left"}
    assert g.parse_answer("gibberish") == {"finding": None, "side": None}
    rows = g.generate_rows("test", g.BALANCE_BLOCK, seed=0, image_size=32)
    for r in rows:
        m = r["meta"]
        assert g.parse_answer(r["answer"]) == {"finding": m["finding"], "side": m["side"]}
        if m["side"] is not None:  # radiological convention: patient's right is on the image left
            assert m["image_side"] == {"right": "left", "left": "right"}[m["side"]]
    findings = Counter(r["meta"]["finding"] for r in rows)
    assert set(findings.values()) == {g.BALANCE_BLOCK // len(g.FINDINGS)}


def test_ecommerce_meta_has_all_attributes():
    g = _load("ecommerce")
    for r in g.generate_rows("train", 6, seed=0, image_size=32):
        m = r["meta"]
        assert m["category"] in g.CATEGORIES and m["colour"] in g.COLOURS and m["pattern"] in g.PATTERNS
        assert m["asked"] == m["question_type"] and m[m["asked"]] == r["answer"]


def test_finance_meta_keeps_document_fields():
    g = _load("finance")
    rows = g.generate_rows("train", g.BALANCE_BLOCK, seed=0, image_size=32)
    for r in rows:
        m = r["meta"]
        assert m["vendor"] in g.VENDOR_NAMES and m["doc_type"] in g.DOC_TYPES
        assert m["number"].startswith("INV-" if m["doc_type"] == "invoice" else "RCP-")
        assert len(m["date"]) == 10 and isinstance(m["total"], float)
        assert abs(m["total"] - (sum(i["amount"] for i in m["items"]) + m["tax"])) < 0.011
        if m["question_type"] == "paid":
            assert m["doc_type"] == "invoice" and r["answer"] == ("yes" if m["paid"] else "no")
        if m["doc_type"] == "receipt":
            assert m["paid"] is True
        if m["question_type"] == "vendor":
            assert r["answer"] == m["vendor"].lower()


def test_general_meta():
    g = _load("general")
    for r in g.generate_rows("train", g.BALANCE_BLOCK, seed=0, image_size=32):
        m, q = r["meta"], r["meta"]["question_type"]
        if q == "count":
            assert str(m["count"]) == r["answer"] and len(m["centres"]) == m["count"]
        elif q == "position":
            x = m["centres"][0][0]
            assert (x < 0.5) == (r["answer"] == "left")
            assert abs(x - 0.5) > m["radius"]  # entirely inside its half
        else:
            assert m[q] == r["answer"]
