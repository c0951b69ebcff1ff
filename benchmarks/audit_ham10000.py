"""``shiftkit audit`` on real multi-site data: the four HAM10000 acquisition sites, every pair and each site vs the rest.

Runs the CLI once (timed) and prints the pairwise matrix (MMD² and p, PAD, sliced Wasserstein and p, all with
adjusted p-values), the site ranking and the label shift. A second run with the same ``--cache-dir`` reuses the
embeddings and times the matrix alone:

    python benchmarks/audit_ham10000.py --shared ../shared --out runs/audit_ham --cache-dir /work/cache/emb
    python benchmarks/audit_ham10000.py --max-images-per-site 300     # a quicker look on a CPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--out", type=Path, default=Path("runs/audit_ham"))
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/audit_ham_cache"))
    parser.add_argument("--image-size", default="128")
    parser.add_argument("--max-images-per-site", default=None)
    parser.add_argument("--harmonize", default=None, help="e.g. colour or histmatch: also the matrix after it")
    parser.add_argument("--seed", default="0")
    args = parser.parse_args()
    manifest = args.shared / "data" / "ham10000_sites" / "metadata.csv"
    command = [sys.executable, "-m", "shiftkit", "audit", str(manifest), "--site-column", "site",
               "--label-column", "label", "--out", str(args.out), "--cache-dir", str(args.cache_dir),
               "--image-size", args.image_size, "--seed", args.seed]
    if args.max_images_per_site:
        command += ["--max-images-per-site", args.max_images_per_site]
    if args.harmonize:
        command += ["--harmonize", args.harmonize]
    print(" ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    report = json.loads((args.out / "audit.json").read_text())
    print(f"\nwall time {seconds:.0f} s; stages (s): {report['settings']['seconds']}")
    print(f"{'pair':34s} {'MMD²':>8s} {'p':>7s} {'p adj':>7s} {'PAD':>6s} {'AUC':>6s} {'SW':>7s} {'p':>7s} {'p adj':>7s}")
    sites = report["sites"]
    for i, a in enumerate(sites):
        for b in sites[i + 1:]:
            cell = report["pairwise"][a][b]
            mmd, dc, ot = cell["mmd"], cell["domain_classifier"], cell["ot"]
            print(f"{a + ' vs ' + b:34s} {mmd['statistic']:8.4f} {mmd['p_value']:7.4f} {mmd['p_adjusted']:7.4f} "
                  f"{dc['pad']:6.3f} {dc['auc']:6.3f} {ot['statistic']:7.4f} {ot['p_value']:7.4f} "
                  f"{ot['p_adjusted']:7.4f}")
    print("\nranking (leave-one-site-out PAD):")
    for row in report["ranking"]:
        print(f"  {row['rank']}. {row['site']:14s} loo PAD {row['loo_pad']:.3f}  mean pairwise PAD "
              f"{row['mean_pair_pad']:.3f}  shifted pairs {row['shifted_pairs']}")
    labels = report.get("label_shift") or {}
    for pair in labels.get("pairs", []):
        print(f"  labels {pair['a']} vs {pair['b']}: TV actual {pair.get('tv_actual', float('nan')):.3f}, "
              f"TV estimated {pair.get('tv_estimated', float('nan')):.3f}")
    summary = {"seconds": round(seconds, 1), "stages": report["settings"]["seconds"], "ranking": report["ranking"],
               "shifted_pairs": report["shifted_pairs"]}
    (args.out / "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
