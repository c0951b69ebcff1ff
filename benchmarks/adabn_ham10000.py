"""BN adaptation across HAM10000 sites: fine-tune on one site, evaluate on another before/after AdaBN and TENT.

EfficientNet-Lite0 (ImageNet weights) is fine-tuned with a cheap strategy on a few hundred images of the source
site (classes present in both sites), then evaluated on the target site as it is, after AdaBN and after TENT
(both fitted on the unlabeled target images, then evaluated on the same images: the transductive setting of
both papers). The held-out source test split is evaluated the same way as a control.

    python benchmarks/adabn_ham10000.py --shared ../shared --out runs/adabn_ham10000

Prints a table and writes OUT/adabn_ham10000.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import time
from pathlib import Path

import torch

from shiftkit.finetune.run import FinetuneRequest, run_finetune
from shiftkit.finetune.strategies import StrategyConfig
from shiftkit.finetune.trainer import TrainConfig
from shiftkit.harmonize.bn import AdaptBNRequest, run_adapt_bn


def write_manifests(shared: Path, out: Path, args) -> dict[str, Path]:
    """Seeded per-class samples: source train / val / test and target, restricted to ``args.classes``."""
    root = shared / "data" / "ham10000_sites"
    rows = list(csv.DictReader((root / "metadata.csv").open()))
    rng = random.Random(args.seed)
    classes = args.classes.split(",")
    parts: dict[str, list[dict]] = {"train": [], "val": [], "source_test": [], "target": []}
    for label in classes:
        source = sorted((r for r in rows if r["site"] == args.source and r["label"] == label), key=lambda r: r["path"])
        target = sorted((r for r in rows if r["site"] == args.target and r["label"] == label), key=lambda r: r["path"])
        rng.shuffle(source)
        rng.shuffle(target)
        n_train, n_eval = args.train_per_class, args.eval_per_class
        if len(source) < n_train + 2 * min(n_eval, 5):
            raise SystemExit(f"{args.source} has only {len(source)} '{label}' images")
        parts["train"] += source[:n_train]
        parts["val"] += source[n_train:n_train + n_eval]
        parts["source_test"] += source[n_train + n_eval:n_train + 2 * n_eval]
        parts["target"] += target[:args.target_per_class]
    out.mkdir(parents=True, exist_ok=True)
    manifests = {}
    for name, part in parts.items():
        manifests[name] = out / f"{name}.csv"
        with manifests[name].open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "site"])
            for row in part:
                writer.writerow([str((root / row["path"]).resolve()), row["label"], row["site"]])
    return manifests


def summary(evaluation: dict) -> dict:
    metrics = evaluation.get("metrics", {})
    return {"top1_accuracy": evaluation.get("top1_accuracy"), "macro_accuracy": metrics.get("accuracy"),
            "auroc": metrics.get("auroc"), "f1": metrics.get("f1"), "mean_entropy": evaluation["mean_entropy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--out", type=Path, default=Path("runs/adabn_ham10000"))
    parser.add_argument("--source", default="rosendahl")
    parser.add_argument("--target", default="vidir_modern")
    parser.add_argument("--classes", default="bcc,bkl,mel,nv", help="classes with enough images at both sites")
    parser.add_argument("--train-per-class", type=int, default=75)
    parser.add_argument("--eval-per-class", type=int, default=25, help="source validation and source test")
    parser.add_argument("--target-per-class", type=int, default=100)
    parser.add_argument("--strategy", default="ft")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tent-lr", type=float, default=1e-3)
    parser.add_argument("--tent-epochs", type=int, default=1)
    parser.add_argument("--seeds", default="0", help="comma-separated; each seed fine-tunes and adapts once")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image samples")
    args = parser.parse_args()

    manifests = write_manifests(args.shared, args.out / "manifests", args)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        run_dir = args.out / f"finetune_seed{seed}"
        start = time.perf_counter()
        metrics = run_finetune(FinetuneRequest(
            data=manifests["train"], val=manifests["val"], out=run_dir, arch="efficientnet_lite0",
            weights="imagenet", image_size=args.image_size,
            train=TrainConfig(strategy=args.strategy, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                              patience=args.epochs, seed=seed, device=args.device),
            strategy=StrategyConfig(lp_epochs=max(1, args.epochs // 2)),
        ))
        record = {"seed": seed, "finetune_seconds": time.perf_counter() - start, "best_epoch": metrics["best_epoch"],
                  "val": metrics["val"]}
        for domain in ("source_test", "target"):
            for method in ("adabn", "tent"):
                result = run_adapt_bn(AdaptBNRequest(
                    checkpoint=run_dir, target=manifests[domain], out=args.out / f"{method}_{domain}_seed{seed}",
                    method=method, lr=args.tent_lr, epochs=args.tent_epochs, batch_size=args.batch_size,
                    device=args.device, seed=seed,
                ))
                record.setdefault(domain, {"images": result.images, "before": summary(result.before)})
                record[domain][method] = summary(result.after)
                record[domain][f"{method}_seconds"] = result.seconds
        results.append(record)
        print_seed(record)

    mean = {}
    for domain in ("source_test", "target"):
        for state in ("before", "adabn", "tent"):
            mean[f"{domain}.{state}"] = {
                k: sum(r[domain][state][k] for r in results) / len(results)
                for k in results[0][domain][state] if all(r[domain][state][k] is not None for r in results)
            }
    report = {
        "settings": vars(args) | {"shared": str(args.shared), "out": str(args.out)},
        "seeds": results,
        "mean_over_seeds": mean,
        "environment": {"torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
                        "threads": torch.get_num_threads(),
                        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    }
    path = args.out / "adabn_ham10000.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nmean over seeds {args.seeds}:")
    for key, values in mean.items():
        print(f"  {key:20s} " + "  ".join(f"{k} {v:.3f}" for k, v in values.items()))
    print(f"wrote {path}")


def print_seed(record: dict) -> None:
    print(f"\nseed {record['seed']}: fine-tuned in {record['finetune_seconds']:.0f} s (best epoch "
          f"{record['best_epoch']}, val AUROC {record['val']['auroc']:.3f})")
    print(f"{'domain':12s} {'state':7s} {'acc':>6s} {'macro':>6s} {'auroc':>6s} {'f1':>6s} {'entropy':>8s}")
    for domain in ("source_test", "target"):
        for state in ("before", "adabn", "tent"):
            s = record[domain][state]
            fmt = lambda v: "  —  " if v is None else f"{v:.3f}"  # noqa: E731
            print(f"{domain:12s} {state:7s} {fmt(s['top1_accuracy']):>6s} {fmt(s['macro_accuracy']):>6s} "
                  f"{fmt(s['auroc']):>6s} {fmt(s['f1']):>6s} {s['mean_entropy']:8.3f}")


if __name__ == "__main__":
    main()
