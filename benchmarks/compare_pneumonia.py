"""``shiftkit compare`` on PneumoniaMNIST: the full grid of eight strategies, then ``--search``, on one CPU.

Exports the MedMNIST ``.npz`` to PNGs (once), keeps a seeded subset of the training split, runs the two CLI
commands it prints (in one output folder, so the search is checked against the grid), and writes
``OUT/compare_pneumonia.json`` with the winners, the search's cost in epochs and wall time, and the commands.

    python benchmarks/compare_pneumonia.py --npz ../shared/data/medmnist/pneumoniamnist.npz \
        --train-limit 600 --epochs 3 --seeds 2 --lrs 1e-4 --image-size 64 --out runs/compare_pneumonia

On a shared 2-core CPU (load ~16) a 64-px ``ft`` epoch on 600 + 524 images took 318 s; the figures reported
by the session that wrote this used ``--train-limit 500 --val-limit 200 --image-size 32`` with
``OMP_NUM_THREADS=1`` to finish.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

from shiftkit.data.medmnist import export_npz
from shiftkit.io import write_json


def _subset(manifest: Path, limit: int, seed: int) -> Path:
    """A seeded random subset of a manifest's rows, written beside it as ``<split>_<limit>.csv``."""
    lines = manifest.read_text().splitlines()
    rows = lines[1:]
    random.Random(seed).shuffle(rows)
    out = manifest.with_name(f"{manifest.stem}_{limit}.csv")
    out.write_text("\n".join([lines[0], *sorted(rows[:limit])]) + "\n")
    return out


def _run(command: list[str]) -> float:
    print("$", shlex.join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=Path("../shared/data/medmnist/pneumoniamnist.npz"))
    parser.add_argument("--train-limit", type=int, default=600)
    parser.add_argument("--val-limit", type=int, default=None, help="validation subset (it is evaluated every epoch)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--lrs", default="1e-4")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--lp-epochs", type=int, default=1, help="lp_ft: head-only epochs (of --epochs)")
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/compare_pneumonia"))
    args = parser.parse_args()

    manifests = export_npz(args.npz, args.out / "data")
    train = _subset(manifests["train"], args.train_limit, seed=0)
    val = _subset(manifests["val"], args.val_limit, seed=0) if args.val_limit else manifests["val"]
    folder = args.out / "compare"
    common = [
        sys.executable, "-m", "shiftkit", "compare", str(train), "--val", str(val),
        "--test", str(manifests["test"]), "--strategies", "all", "--archs", args.arch, "--lrs", args.lrs,
        "--seeds", str(args.seeds), "--weights", "imagenet", "--epochs", str(args.epochs),
        "--lp-epochs", str(args.lp_epochs), "--image-size", str(args.image_size), "--device", args.device,
        "--out", str(folder),
    ]
    grid_seconds = _run(common)
    search_seconds = _run([*common, "--search"])

    summary = json.loads((folder / "compare.json").read_text())
    search = json.loads((folder / "search.json").read_text())["archs"][args.arch]
    table = summary["table"]
    main_metric = table["main_metric"]
    comparison = search["comparison"]
    report = {
        "benchmark": "compare_pneumonia",
        "commands": [shlex.join(common), shlex.join([*common, "--search"])],
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()},
        "grid": {"wall_seconds": grid_seconds, "winner": summary["winners"][args.arch],
                 "main_metric": f"{table['split']} {main_metric}",
                 "table": {s: {m: table["rows"][s][args.arch][m] for m in table["metrics"]}
                           for s in table["strategies"]},
                 "relative_improvement": summary["relative_improvement"][main_metric][args.arch],
                 "effectiveness": summary["effectiveness"]},
        "search": {"wall_seconds_process": search_seconds, "wall_seconds_search": search["wall_seconds"],
                   "winner": search["winner"], "budgets": search["budgets"], "epochs_run": search["epochs_run"],
                   "ranking": search["ranking"], "ranking_source": search["ranking_source"], "comparison": comparison},
    }
    write_json(args.out / "compare_pneumonia.json", report)
    print(f"\ngrid ({grid_seconds:.0f} s): winner {report['grid']['winner']} on {report['grid']['main_metric']}")
    print(f"{'strategy':10} {main_metric:>14} {'rel. vs ft %':>13}")
    for s in table["strategies"]:
        cell = table["rows"][s][args.arch][main_metric]
        rel = report["grid"]["relative_improvement"].get(s)
        print(f"{s:10} {100 * cell['mean']:7.2f} ({100 * (cell['se'] or 0):4.2f}) {rel:+13.2f}")
    print(f"search ({search['wall_seconds']:.0f} s, {search['epochs_run']} epochs, budgets {search['budgets']}): "
          f"winner {search['winner']['strategy']} @ {search['winner']['lr']:g}; found the grid's winner: "
          f"{comparison.get('found_grid_winner')}; rank in grid {comparison.get('search_winner_rank_in_grid')}; "
          f"cost {100 * comparison.get('cost_fraction', 0):.0f} % of the grid's {comparison.get('grid_epochs')} epochs")


if __name__ == "__main__":
    main()
