"""How ``diagnose``'s covariate tests scale: time and peak memory for 1k, 5k and 20k images per side, against
alibi-detect's MMDDrift (PyTorch backend) on the same embeddings.

For every size and test a fresh worker process generates the embeddings (source N(0, I), target N(0, I) with
+0.1 on the first 4 of ``--dim`` dimensions: ``diagnose`` runs MMD and OT on 32 PCA components), runs the test
once and reports wall time and peak memory (growth of the peak resident set size from after imports and data
generation; on CUDA ``torch.cuda.max_memory_allocated``). Tests:

- ``mmd``: shiftkit's unbiased MMD² (RBF, median heuristic) with ``--permutations`` permutations;
- ``domain_classifier``: logistic regression, 5-fold AUC; ``ot``: sliced Wasserstein (200 projections and
  permutations) plus exact EMD on 500 points per side;
- ``alibi_mmd``: alibi-detect's ``MMDDrift(backend="pytorch")`` with the same number of permutations, when
  ``alibi_detect`` imports in the worker's interpreter (``--alibi-python``); otherwise ``reference_mmd``: a
  plain reimplementation of the same algorithm (alibi-detect 0.13 ``cd/pytorch/mmd.py``: the full (n+m)²
  Gaussian kernel matrix with bandwidth sqrt(median(d²)/2) over the reference pairs, zeroed diagonal,
  MMD² = mean K_xx + mean K_yy − 2 mean K_xy over off-diagonal entries, and each permutation re-indexes the
  whole matrix; p = share of permuted MMD² ≥ observed). The JSON says which ran.
  Sizes above ``--peer-max`` are not run for the peer: its (2n)² matrix and per-permutation copies need
  about 3 × 4 (2n)² bytes (19 GiB at 20k per side) and time ∝ permutations × (2n)²; the JSON records why.

    python benchmarks/diagnose_scale.py --sizes 1000,5000,20000 --permutations 1000 --out runs/diagnose_scale.json
    python benchmarks/diagnose_scale.py --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mmd_speed import _machine_info, _maxrss_mib  # noqa: E402

TESTS = ("mmd", "domain_classifier", "ot", "peer_mmd")


def reference_mmd(x_ref, x, permutations: int, seed: int, device: str = "cpu") -> tuple[float, float]:
    """alibi-detect's MMDDrift algorithm (PyTorch backend), reimplemented: returns (p-value, MMD²)."""
    import torch

    torch.manual_seed(seed)
    x_ref = torch.as_tensor(x_ref, dtype=torch.float32, device=device)
    x = torch.as_tensor(x, dtype=torch.float32, device=device)

    def sq_dist(a, b):
        return (a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)[None]).clamp_min_(1e-30)

    d_xx = sq_dist(x_ref, x_ref)
    n_ref = len(x_ref)
    # alibi's sigma_median on the reference pairs: the sorted distances start with the n (clamped) zeros of the
    # diagonal; its index n + (n² - n) // 2 - 1 is the median of the off-diagonal ones
    median = d_xx.flatten().sort().values[n_ref + (n_ref * n_ref - n_ref) // 2 - 1]
    gamma = 1.0 / (2 * (0.5 * median))  # sigma² = median / 2; k = exp(-d² / (2 sigma²))
    k = torch.cat([torch.cat([torch.exp(-gamma * d_xx), torch.exp(-gamma * sq_dist(x_ref, x))], 1),
                   torch.cat([torch.exp(-gamma * sq_dist(x, x_ref)), torch.exp(-gamma * sq_dist(x, x))], 1)], 0)
    del d_xx
    k.fill_diagonal_(0)
    m = len(x)

    def mmd2(mat):
        n = mat.shape[0] - m
        return mat[:-m, :-m].sum() / (n * (n - 1)) + mat[-m:, -m:].sum() / (m * (m - 1)) - 2 * mat[-m:, :-m].mean()

    observed = mmd2(k)
    permuted = []
    for _ in range(permutations):
        idx = torch.randperm(k.shape[0], device=device)
        permuted.append(mmd2(k[idx][:, idx]))
    permuted = torch.stack(permuted)
    return float((observed <= permuted).float().mean()), float(observed)


def _worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    n = args.size
    source = rng.normal(size=(n, args.dim))
    target = rng.normal(size=(n, args.dim))
    target[:, : min(4, args.dim)] += 0.1
    peer = None
    if args.test == "peer_mmd":
        try:
            from alibi_detect.cd import MMDDrift  # noqa: F401

            peer = "alibi-detect MMDDrift (pytorch)"
        except Exception as exc:  # not installed, or broken against this torch/numpy
            peer = f"reference reimplementation (alibi_detect not importable: {type(exc).__name__})"
    else:
        from shiftkit.shift.covariate import domain_classifier_test, mmd_test, ot_test
    on_cuda = args.device == "cuda" and args.test in ("mmd", "peer_mmd")
    if on_cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    baseline = _maxrss_mib()
    start = time.perf_counter()
    if args.test == "mmd":
        result = mmd_test(source, target, permutations=args.permutations, seed=args.seed, device=args.device)
        p, statistic = result.p_value, result.statistic
    elif args.test == "domain_classifier":
        result = domain_classifier_test(source, target, seed=args.seed)
        p, statistic = result.p_value, result.statistic
    elif args.test == "ot":
        result = ot_test(source, target, seed=args.seed)
        p, statistic = result.p_value, result.statistic
    elif peer.startswith("alibi"):
        torch.manual_seed(args.seed)
        detector = MMDDrift(source.astype(np.float32), backend="pytorch", n_permutations=args.permutations,
                            device=args.device)
        prediction = detector.predict(target.astype(np.float32))["data"]
        p, statistic = float(prediction["p_val"]), float(prediction["distance"])
    else:
        p, statistic = reference_mmd(source, target, args.permutations, args.seed, args.device)
    if on_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "test": args.test, "implementation": peer or "shiftkit", "n_per_domain": n, "dim": args.dim,
        "permutations": args.permutations if args.test in ("mmd", "peer_mmd") else None,
        "device": args.device if args.test in ("mmd", "peer_mmd") else "cpu", "seconds": seconds,
        "peak_rss_growth_mib": _maxrss_mib() - baseline,
        "cuda_peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None,
        "statistic": statistic, "p_value": p,
    }))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,5000,20000", help="samples per domain, comma-separated")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--tests", default=",".join(TESTS))
    parser.add_argument("--peer-max", type=int, default=5000, help="largest size per side for the peer MMD")
    parser.add_argument("--alibi-python", default=sys.executable,
                        help="interpreter for the peer worker (e.g. a venv where alibi-detect[torch] installed)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (the MMDs; the others run on CPU)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/diagnose_scale.json"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 per side, 50 permutations")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--test", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        _worker(args)
        return 0
    if args.quick:
        args.sizes, args.permutations = "300", 50
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    tests = [t for t in args.tests.split(",") if t]
    records = []
    print(f"{'test':<18} {'n/domain':>8} {'seconds':>9} {'peak MiB':>9} {'p':>7}  implementation")
    for size in sizes:
        for test in tests:
            if test == "peer_mmd" and size > args.peer_max:
                gib = 3 * 4 * (2 * size) ** 2 / 2**30
                records.append({"test": test, "n_per_domain": size, "skipped": f"above --peer-max {args.peer_max}: "
                                f"its full kernel matrix and per-permutation copies need about {gib:.0f} GiB"})
                print(f"{test:<18} {size:>8} skipped (needs about {gib:.0f} GiB; --peer-max {args.peer_max})")
                continue
            python = args.alibi_python if test == "peer_mmd" else sys.executable
            command = [python, str(Path(__file__).resolve()), "--worker", "--test", test, "--size", str(size),
                       "--dim", str(args.dim), "--permutations", str(args.permutations), "--device", args.device,
                       "--seed", str(args.seed)] + (["--threads", str(args.threads)] if args.threads else [])
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                error = done.stderr.strip()[-1500:]
                print(f"{test:<18} {size:>8} failed: {error.splitlines()[-1] if error else done.returncode}")
                records.append({"test": test, "n_per_domain": size, "error": error})
                continue
            record = json.loads(done.stdout.strip().splitlines()[-1])
            records.append(record)
            memory = record["cuda_peak_allocated_mib"] or record["peak_rss_growth_mib"]
            print(f"{test:<18} {size:>8} {record['seconds']:>9.2f} {memory:>9.0f} {record['p_value']:>7.4f}  "
                  f"{record['implementation']}", flush=True)
    payload = {
        "benchmark": "diagnose tests at scale, with alibi-detect's MMDDrift as the peer",
        "settings": {"sizes": sizes, "dim": args.dim, "permutations": args.permutations, "tests": tests,
                     "peer_max": args.peer_max, "alibi_python": args.alibi_python, "seed": args.seed},
        "machine": _machine_info(args.device, args.threads),
        "results": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
