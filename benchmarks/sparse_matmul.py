"""Dense vs torch CSR sparse matmul on CPU for an unstructured-pruned Linear weight.

    PYTHONPATH=. python benchmarks/sparse_matmul.py [--threads 1] [--rounds 15] [--out 1024 --in 4096 --tokens 96]

The weight (out x in) is magnitude-pruned to 50/75/90 %; y = x @ W.T is timed dense
(``torch.nn.functional.linear``) and as ``W_csr @ x.T`` with ``W`` in CSR. Each round times both, in an
order that rotates (A B, then B A, ...) so drift (thermal, other tenants) and position hit both sides alike.
``csr_speedup`` = dense time / CSR time per round (> 1: CSR faster): geometric mean with a 95% paired t interval
and a claim ("faster" needs >= 1.10 with the interval above 1; ``benchmarks/_stats.py``). Also records whether 2:4
semi-structured sparsity (``to_sparse_semi_structured``) runs on CPU. ``--quick``: 3 rounds of 1 call, 256 x 512.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from _stats import RATIO_METHOD, paired_ratio, round_orders


def _time(fn, inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def _semi_structured_on_cpu() -> str:
    try:
        from torch.sparse import to_sparse_semi_structured
        w = torch.randn(128, 128, dtype=torch.float16)
        w.view(128, 32, 4)[..., :2] = 0
        to_sparse_semi_structured(w)
        return "ok"
    except Exception as exc:  # the point is to record the failure
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15, help="A B pairs")
    ap.add_argument("--inner", type=int, default=5, help="matmuls per timed sample")
    ap.add_argument("--out", type=int, default=1024)
    ap.add_argument("--in", dest="in_", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    ap.add_argument("--seed", type=int, default=0, help="seed of the rotating round order")
    ap.add_argument("--quick", action="store_true", help="3 rounds of 1 call on a 256 x 512 weight")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.inner, args.out, args.in_ = 3, 1, 256, 512

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.tokens, args.in_)
    xt = x.t().contiguous()
    results = []
    for s in args.sparsities:
        w = torch.randn(args.out, args.in_)
        k = round(s * w.numel())
        thresh = w.abs().flatten().kthvalue(k).values
        w = torch.where(w.abs() > thresh, w, torch.zeros(()))
        csr = w.to_sparse_csr()
        dense_fn = lambda: torch.nn.functional.linear(x, w)  # noqa: E731
        csr_fn = lambda: torch.sparse.mm(csr, xt)  # noqa: E731
        err = (csr_fn().t() - dense_fn()).abs().max().item()
        for _ in range(2):  # warm-up
            dense_fn(), csr_fn()
        times: dict[str, list[float]] = {"dense": [], "csr": []}
        fns = {"dense": dense_fn, "csr": csr_fn}
        for order in round_orders(list(fns), args.rounds, args.seed):
            for name in order:
                times[name].append(_time(fns[name], args.inner))
        dense_t, csr_t = times["dense"], times["csr"]
        d, c = statistics.median(dense_t), statistics.median(csr_t)
        results.append({
            "sparsity": s,
            "actual_sparsity": round(1 - csr.values().numel() / w.numel(), 4),
            "dense_ms": round(d * 1e3, 3),
            "csr_ms": round(c * 1e3, 3),
            "csr_speedup": paired_ratio(dense_t, csr_t).to_json(),
            "max_abs_err": err,
        })
    print(json.dumps({
        "shape": {"weight": [args.out, args.in_], "tokens": args.tokens},
        "threads": args.threads,
        "rounds": args.rounds,
        "ratios": RATIO_METHOD,
        "inner": args.inner,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "results": results,
        "semi_structured_2_4_on_cpu": _semi_structured_on_cpu(),
    }, indent=1))


if __name__ == "__main__":
    main()
