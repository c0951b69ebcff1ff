"""Training throughput of each strategy relative to ``ft`` on the same model and data.

Runs ``--epochs`` epochs of every strategy (plus ``lp`` through the frozen backbone, without cached features)
on a MedMNIST subset and reports training images per second and seconds per epoch (train + validation).
``ft`` runs first and last, so drift of the machine's speed shows up as a difference between the two.
Training images/s count an epoch's time without its validation (so with Auto-RGN's probe and lp's cache fill);
the summary states Auto-RGN's overhead over ``ft`` and what ``lp``'s feature cache saves.

    python benchmarks/strategy_throughput.py --arch efficientnet_lite0 --image-size 64 --epochs 2 \
        --train-limit 1000 --out runs/throughput.json
    python benchmarks/strategy_throughput.py --quick      # smoke run: 64 images, 1 epoch
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mmd_speed import _machine_info  # noqa: E402

from shiftkit.data import ImageCache, ImageDataset, load_table
from shiftkit.data.medmnist import export_npz
from shiftkit.finetune.strategies import STRATEGY_CLASSES, StrategyConfig, make_strategy
from shiftkit.finetune.trainer import Trainer, TrainConfig
from shiftkit.io import write_json
from shiftkit.models import build_model


def _timed_validation(trainer: Trainer) -> list[float]:
    """Wrap the trainer's validation so its seconds can be taken out of each epoch's time."""
    seconds: list[float] = []
    validate = trainer._validate

    def timed():
        started = time.perf_counter()
        try:
            return validate()
        finally:
            seconds.append(time.perf_counter() - started)

    trainer._validate = timed
    return seconds


def run(name: str, args, train, val, cache_features: bool = True) -> dict:
    torch.manual_seed(0)
    adapted = build_model(args.arch, 2, "imagenet", args.image_size)
    config = TrainConfig(strategy=name, lr=1e-4, epochs=args.epochs, patience=100, device=args.device,
                         cache_features=cache_features)
    cache = ImageCache(adapted.preprocessing)
    train_set, val_set = ImageDataset(train, cache), ImageDataset(val, cache)
    train_set.warm()
    val_set.warm()
    strategy = make_strategy(name, adapted, StrategyConfig(epochs_per_block=1, lp_epochs=1), config)
    trainer = Trainer(adapted, strategy, "binary", train_set, val_set, config)
    validation = _timed_validation(trainer)
    started = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - started
    seconds = [h["seconds"] for h in trainer.history]
    return {"seconds_per_epoch": sum(seconds) / len(seconds), "per_epoch": seconds, "wall_seconds": wall,
            "train_seconds_per_epoch": (train_seconds := [e - v for e, v in zip(seconds, validation)]),
            "train_images_per_second": len(train_set) * len(train_seconds) / max(sum(train_seconds), 1e-9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=Path("../shared/data/medmnist/pneumoniamnist.npz"))
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs/throughput.json"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 training images, 1 epoch, 32 px")
    args = parser.parse_args()
    if args.quick:
        args.train_limit, args.epochs, args.image_size = 64, 1, 32
    manifests = export_npz(args.npz, args.out.parent / "throughput_data", limit=args.train_limit)
    train, val = load_table(manifests["train"]), load_table(manifests["val"])
    val = val.with_classes(train.classes)
    results = {"ft": run("ft", args, train, val)}
    for name in [s for s in STRATEGY_CLASSES if s != "ft"]:
        results[name] = run(name, args, train, val)
        print(name, f"{results[name]['seconds_per_epoch']:.2f} s/epoch", flush=True)
    results["lp (no feature cache)"] = run("lp", args, train, val, cache_features=False)
    results["ft (again)"] = run("ft", args, train, val)
    reference = (results["ft"]["seconds_per_epoch"] + results["ft (again)"]["seconds_per_epoch"]) / 2
    ft_rate = (results["ft"]["train_images_per_second"] + results["ft (again)"]["train_images_per_second"]) / 2
    print(f"{'strategy':22} {'s/epoch':>8} {'vs ft':>6} {'train img/s':>12} {'vs ft':>6}")
    for name, entry in results.items():
        entry["epoch_time_vs_ft"] = entry["seconds_per_epoch"] / reference
        entry["train_throughput_vs_ft"] = entry["train_images_per_second"] / ft_rate
        print(f"{name:22} {entry['seconds_per_epoch']:8.2f} {entry['epoch_time_vs_ft']:6.2f} "
              f"{entry['train_images_per_second']:12.1f} {entry['train_throughput_vs_ft']:6.2f}")
    summary = {
        "auto_rgn_overhead": ft_rate / results["auto_rgn"]["train_images_per_second"] - 1,
        "lp_cached_speedup_train_only": results["lp"]["train_images_per_second"]
        / results["lp (no feature cache)"]["train_images_per_second"],
        "lp_cached_speedup_per_epoch": results["lp (no feature cache)"]["seconds_per_epoch"]
        / results["lp"]["seconds_per_epoch"],
    }
    print(f"Auto-RGN overhead: {summary['auto_rgn_overhead']:+.0%} training time per image against ft "
          f"({args.epochs} epochs, its gradient probe included)")
    print(f"lp with cached features: {summary['lp_cached_speedup_train_only']:.1f}x the training images/s of lp "
          f"through the frozen backbone (training time, the pass that fills the cache included); "
          f"{summary['lp_cached_speedup_per_epoch']:.1f}x per whole epoch (cache fill and validation included)")
    write_json(args.out, {
        "benchmark": "strategy_throughput", "args": {k: str(v) for k, v in vars(args).items()},
        "machine": _machine_info("cuda" if torch.cuda.is_available() else "cpu", torch.get_num_threads()),
        "summary": summary,
        "results": results,
    })


if __name__ == "__main__":
    main()
