"""All eight strategies on a MedMNIST set with EfficientNet-Lite0 ImageNet weights (CPU-sized).

Prints and writes (``--out``/strategies.json) per strategy: test metrics of the best validation epoch,
epochs run, and the mean seconds per epoch relative to ``ft`` on the same model and data.

    python benchmarks/strategies_medmnist.py --npz ../shared/data/medmnist/pneumoniamnist.npz \
        --train-limit 1000 --epochs 5 --lp-epochs 2 --image-size 64 --lr 1e-4 --out runs/bench_strategies
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from shiftkit.data.medmnist import export_npz
from shiftkit.finetune.run import FinetuneRequest, run_finetune
from shiftkit.finetune.strategies import STRATEGY_CLASSES, StrategyConfig
from shiftkit.finetune.trainer import TrainConfig
from shiftkit.io import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=Path("../shared/data/medmnist/pneumoniamnist.npz"))
    parser.add_argument("--train-limit", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lp-epochs", type=int, default=2, help="lp_ft: head-only epochs before all layers train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--strategies", default=",".join(STRATEGY_CLASSES))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_strategies"))
    args = parser.parse_args()

    data = args.out / "data"
    manifests = export_npz(args.npz, data, limit=None)
    if args.train_limit:
        train_lines = manifests["train"].read_text().splitlines()
        import random

        rows = train_lines[1:]
        random.Random(args.seed).shuffle(rows)
        subset = data / f"train_{args.train_limit}.csv"
        subset.write_text("\n".join([train_lines[0], *sorted(rows[: args.train_limit])]) + "\n")
        manifests["train"] = subset
    results = {}
    for name in args.strategies.split(","):
        started = time.perf_counter()
        result = run_finetune(
            FinetuneRequest(
                data=manifests["train"], val=manifests["val"], test=manifests["test"], out=args.out / name,
                arch=args.arch, weights="imagenet", image_size=args.image_size,
                train=TrainConfig(strategy=name, lr=args.lr, epochs=args.epochs, patience=args.patience,
                                  seed=args.seed, device="auto"),
                strategy=StrategyConfig(lp_epochs=args.lp_epochs),
            )
        )
        seconds = [h["seconds"] for h in result["history"]]
        results[name] = {
            "test": {k: v for k, v in result["test"].items() if k != "loss"},
            "best_epoch": result["best_epoch"],
            "epochs_run": result["epochs_run"],
            "seconds_per_epoch": sum(seconds) / len(seconds),
            "wall_seconds": time.perf_counter() - started,
        }
        print(name, json.dumps(results[name]), flush=True)
    if "ft" in results:
        for entry in results.values():
            entry["epoch_time_vs_ft"] = entry["seconds_per_epoch"] / results["ft"]["seconds_per_epoch"]
    report = {
        "benchmark": "strategies_medmnist",
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "results": results,
    }
    write_json(args.out / "strategies.json", report)
    print(f"{'strategy':10} {'AUROC':>7} {'acc':>7} {'epochs':>6} {'s/epoch':>8} {'vs ft':>6}")
    for name, entry in results.items():
        print(f"{name:10} {entry['test']['auroc']:7.4f} {entry['test']['accuracy']:7.4f} {entry['epochs_run']:6d} "
              f"{entry['seconds_per_epoch']:8.2f} {entry.get('epoch_time_vs_ft', float('nan')):6.2f}")


if __name__ == "__main__":
    main()
