"""Learnability check for the synthetic task generators.

A cheap proxy for "can the small reference VLM learn this task in the tiny fine-tuning
budget?": train, from scratch, a SigLIP vision tower shaped like the default reference
model's (hidden 256, 4 layers, 128 px, patch 16 -> 8x8 = 64 image tokens), mean-pool its
token features and put one linear head per question type over that type's answers.
200 steps, batch 8, AdamW lr 1e-3 with linear warm-up then cosine decay. Report test
accuracy per generator and question type next to chance (the majority-answer rate on the
test rows), with a 95% bootstrap interval over the test rows and whether that interval lies
above chance (``benchmarks/_stats.py``; "no claim" under 500 rows of that type), as JSON on stdout.

If a generator module exports ``parse_answer(answer) -> dict``, accuracy is also reported
per parsed field (e.g. the medical report's ``finding`` and ``side``).

    python benchmarks/learnability.py                       # all generators
    python benchmarks/learnability.py industrial medical --train-rows 1600 --seeds 0 1
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from _stats import bootstrap_metric, enough_evidence

ROOT = Path(__file__).resolve().parents[1]

GENERATORS = {
    "industrial": "dsvl_adapt_industrial.generator",
    "medical": "dsvl_adapt_medical.generator",
    "ecommerce": "dsvl_adapt_ecommerce.generator",
    "finance": "dsvl_adapt_finance.generator",
    "general": "dsvl_adapt.data.general",
}


def load_generator(name: str):
    """Import a generator module, falling back to the in-repo source tree."""
    modname = GENERATORS.get(name, name)
    try:
        return importlib.import_module(modname)
    except ImportError:
        for p in [ROOT, *sorted((ROOT / "plugins").glob("*"))]:
            if str(p) not in sys.path:
                sys.path.insert(0, str(p))
        return importlib.import_module(modname)


def qtype_of(row: dict) -> str:
    return str(row["meta"].get("question_type", "default"))


def to_pixels(rows: list[dict]):
    import torch

    arr = np.stack([np.asarray(r["image"].convert("RGB"), dtype=np.float32) for r in rows])
    arr = (arr / 255.0 - 0.5) / 0.5  # mean = std = 0.5, as the real DeepSeek-VL processor
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def run_one(name: str, *, train_rows: int, test_rows: int, steps: int, batch: int, lr: float,
            warmup: int, seed: int, data_seed: int, image_size: int, patch_size: int,
            pool: str = "mean") -> dict:
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    gen = load_generator(name)
    t0 = time.perf_counter()
    train = gen.generate_rows("train", train_rows, seed=data_seed, image_size=image_size)
    test = gen.generate_rows("test", test_rows, seed=data_seed, image_size=image_size)
    gen_s = time.perf_counter() - t0

    # Label space: one head per question type, over that type's answers.
    vocab: dict[str, list[str]] = defaultdict(list)
    for r in train + test:
        q = qtype_of(r)
        if r["answer"] not in vocab[q]:
            vocab[q].append(r["answer"])
    qtypes = sorted(vocab)
    for q in qtypes:
        vocab[q].sort()
    offsets, total = {}, 0
    for q in qtypes:
        offsets[q] = total
        total += len(vocab[q])

    def encode(rows):
        y = torch.tensor([offsets[qtype_of(r)] + vocab[qtype_of(r)].index(r["answer"]) for r in rows])
        mask = torch.full((len(rows), total), float("-inf"))
        for i, r in enumerate(rows):
            q = qtype_of(r)
            mask[i, offsets[q]: offsets[q] + len(vocab[q])] = 0.0
        return y, mask

    xtr, (ytr, mtr) = to_pixels(train), encode(train)
    xte, (yte, mte) = to_pixels(test), encode(test)

    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                             num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                             vision_use_head=False)
    tower = SiglipVisionModel(cfg)
    n_tokens = (image_size // patch_size) ** 2
    # "mean": mean-pooled tokens (the default proxy; blind to where things are unless the
    # tower learns to encode it). "tokens": a linear readout over every token, which keeps
    # token identity the way the VLM's language model sees 64 image tokens at distinct positions.
    head = torch.nn.Linear(cfg.hidden_size * (n_tokens if pool == "tokens" else 1), total)
    # (the answer-range mask below makes this one head per question type)
    params = list(tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    def logits_of(x, m):
        h = tower(pixel_values=x).last_hidden_state
        feats = h.flatten(1) if pool == "tokens" else h.mean(dim=1)
        return head(feats) + m

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=g)
    pos = 0
    t1 = time.perf_counter()
    tower.train()
    losses = []
    for _step in range(steps):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(train), generator=g), 0
        idx = order[pos: pos + batch]
        pos += batch
        loss = torch.nn.functional.cross_entropy(logits_of(xtr[idx], mtr[idx]), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - t1

    tower.eval()
    with torch.no_grad():
        pred = torch.cat([logits_of(xte[i: i + 64], mte[i: i + 64]).argmax(-1) for i in range(0, len(test), 64)])
    flat = [a for q in qtypes for a in vocab[q]]
    pred_answers = [flat[int(p)] for p in pred]

    per_q = {}
    for q in qtypes:
        idx = [i for i, r in enumerate(test) if qtype_of(r) == q]
        if not idx:
            continue
        answers = [test[i]["answer"] for i in idx]
        correct = sum(pred_answers[i] == test[i]["answer"] for i in idx)
        hits = np.array([pred_answers[i] == test[i]["answer"] for i in idx], dtype=float)
        interval = bootstrap_metric([lambda rows, hits=hits: float(hits[rows].mean())], len(idx))
        chance = Counter(answers).most_common(1)[0][1] / len(idx)
        entry = {
            "n": len(idx),
            "classes": len(vocab[q]),
            "accuracy": round(correct / len(idx), 4),
            "accuracy_ci95": [round(interval.low, 4), round(interval.high, 4)],
            "chance": round(chance, 4),
            "above_chance": ("no claim" if not enough_evidence(len(idx), 1) else
                             "yes" if interval.low > chance else "no (within noise of chance or below)"),
        }
        parse = getattr(gen, "parse_answer", None)
        if parse is not None:
            parsed = [(parse(test[i]["answer"]), parse(pred_answers[i])) for i in idx]
            entry["fields"] = {}
            for k in parsed[0][0]:
                # rows where the field applies (e.g. no side for a normal study)
                rows_k = [(ref, hyp) for ref, hyp in parsed if ref.get(k) is not None]
                if not rows_k:
                    continue
                ok = [ref[k] == hyp.get(k) for ref, hyp in rows_k]
                info = {
                    "n": len(rows_k),
                    "accuracy": round(sum(ok) / len(ok), 4),
                    "chance": round(Counter(ref[k] for ref, _ in rows_k).most_common(1)[0][1] / len(rows_k), 4),
                }
                others = [j for j in parsed[0][0] if j != k]
                # the field on its own: only rows where every other field was predicted right
                given = [o for o, (ref, hyp) in zip(ok, rows_k) if all(ref[j] == hyp.get(j) for j in others)]
                if others and given:
                    info["accuracy_given_others_right"] = round(sum(given) / len(given), 4)
                    info["n_given_others_right"] = len(given)
                for j in others:  # broken down by the reference value of each other field
                    by: dict[str, list[bool]] = defaultdict(list)
                    for o, (ref, _) in zip(ok, rows_k):
                        by[str(ref[j])].append(o)
                    info[f"accuracy_by_{j}"] = {v: round(sum(b) / len(b), 3) for v, b in sorted(by.items())}
                entry["fields"][k] = info
        # per-answer recall shows which classes are (not) learnt
        entry["recall"] = {
            a: round(sum(pred_answers[i] == a for i in idx if test[i]["answer"] == a)
                     / max(1, sum(test[i]["answer"] == a for i in idx)), 3)
            for a in vocab[q]
        }
        confusions = Counter(f"{test[i]['answer']} -> {pred_answers[i]}" for i in idx
                             if pred_answers[i] != test[i]["answer"])
        entry["confusions"] = dict(confusions.most_common(8))
        per_q[q] = entry

    return {
        "generator": name,
        "seed": seed,
        "pool": pool,
        "train_rows": len(train),
        "test_rows": len(test),
        "steps": steps,
        "final_train_loss": round(float(np.mean(losses[-20:])), 4),
        "accuracy": round(float((pred == yte).float().mean()), 4),
        "questions": per_q,
        "data_s": round(gen_s, 1),
        "train_s": round(train_s, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("generators", nargs="*", default=list(GENERATORS))
    ap.add_argument("--train-rows", type=int, default=1600)
    ap.add_argument("--test-rows", type=int, default=200)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="model/training seeds")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--patch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pool", choices=("mean", "tokens"), default="mean",
                    help="mean-pooled features (default) or a linear readout over all tokens")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    results = []
    for name in args.generators:
        for seed in args.seeds:
            res = run_one(name, train_rows=args.train_rows, test_rows=args.test_rows, steps=args.steps,
                          batch=args.batch, lr=args.lr, warmup=args.warmup, seed=seed,
                          data_seed=args.data_seed, image_size=args.image_size, patch_size=args.patch_size,
                          pool=args.pool)
            print(json.dumps(res), file=sys.stderr, flush=True)
            results.append(res)
    print(json.dumps({"config": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
