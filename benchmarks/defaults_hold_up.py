"""Do the strategy defaults hold up on real medical data? Every strategy with default settings (no lr, epoch or
strategy flags) on PneumoniaMNIST, BreastMNIST and a HAM10000 binary task (mel vs nv within rosendahl), with
EfficientNet-Lite0 ImageNet weights at 64 px, plus scikit-learn logistic regression on the same frozen features
(C chosen on validation) as a reference line.

Resumable: each run is a ``shiftkit finetune`` output folder (``OUT/runs/DATASET/STRATEGY/seedS``); a finished
run (metrics.json) is read back, an interrupted one resumes from its last epoch. Run it again with the same
arguments after a kill. ``--epochs`` caps the default 50 epochs when a CPU cannot afford them (say so).

    python benchmarks/defaults_hold_up.py --shared ../shared --out runs/defaults --seeds 0,1
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from shiftkit.data.medmnist import export_npz
from shiftkit.data.table import load_table
from shiftkit.features import extract
from shiftkit.finetune.linear_probe import DEFAULT_CS
from shiftkit.finetune.run import FinetuneRequest, run_finetune
from shiftkit.finetune.strategies import STRATEGY_CLASSES, StrategyConfig
from shiftkit.finetune.trainer import TrainConfig
from shiftkit.io import write_json, write_text
from shiftkit.models import build_model

ARCH, IMAGE_SIZE = "efficientnet_lite0", 64
DATASETS = ("pneumonia", "breast", "ham_mel_nv")


def _ham_manifests(shared: Path, out: Path, seed: int = 0) -> dict[str, Path]:
    """mel vs nv within rosendahl, split 60/20/20, stratified (seeded); absolute paths."""
    from sklearn.model_selection import train_test_split

    root = shared / "data" / "ham10000_sites"
    with (root / "metadata.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["site"] == "rosendahl" and r["label"] in ("mel", "nv")]
    labels = [r["label"] for r in rows]
    train, rest = train_test_split(rows, test_size=0.4, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=[r["label"] for r in rest], random_state=seed)
    manifests = {}
    for split, part in (("train", train), ("val", val), ("test", test)):
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["path", "label"])
        for r in sorted(part, key=lambda r: r["path"]):
            writer.writerow([str((root / r["path"]).resolve()), r["label"]])
        manifests[split] = out / f"{split}.csv"
        write_text(manifests[split], text.getvalue())
    return manifests


def prepare(name: str, shared: Path, out: Path) -> dict[str, Path]:
    medmnist = shared / "data" / "medmnist"
    if name == "pneumonia":
        return export_npz(medmnist / "pneumoniamnist.npz", out / name, limit=600, seed=0)
    if name == "breast":
        return export_npz(medmnist / "breastmnist.npz", out / name)
    return _ham_manifests(shared, out / name)


def relative_change(best: Path) -> float:
    """||w - w0|| / ||w0|| over the pre-trained weights (head and BatchNorm running statistics left out)."""
    start = build_model(ARCH, 2, "imagenet", IMAGE_SIZE).model.state_dict()
    state = torch.load(best, map_location="cpu", weights_only=True)["model_state"]
    keys = [k for k, v in start.items() if v.is_floating_point() and not k.startswith("_fc.") and "running" not in k]
    num = sum((state[k].double() - start[k].double()).pow(2).sum() for k in keys)
    den = sum(start[k].double().pow(2).sum() for k in keys)
    return float((num / den).sqrt())


def run_one(manifests: dict[str, Path], folder: Path, strategy: str, seed: int, epochs: int | None) -> dict:
    timing = folder / "timing.json"
    if (folder / "metrics.json").is_file() and timing.is_file():
        result = json.loads((folder / "metrics.json").read_text())
        seconds = json.loads(timing.read_text())["seconds"]
    else:
        started = time.perf_counter()
        train = TrainConfig(strategy=strategy, seed=seed, device="auto")
        if epochs is not None:
            train.epochs = epochs
        result = run_finetune(FinetuneRequest(
            data=manifests["train"], val=manifests["val"], test=manifests["test"], out=folder, arch=ARCH,
            image_size=IMAGE_SIZE, resume=True, train=train, strategy=StrategyConfig()))
        seconds = time.perf_counter() - started
        write_json(timing, {"seconds": seconds, "note": "wall time of this call (a resumed run: its last part)"})
    return {"test_auroc": result["test"]["auroc"], "val_auroc": result["val"]["auroc"],
            "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"], "seconds": seconds,
            "linear_probe_C": (result.get("linear_probe") or {}).get("C"),
            "linear_probe_solve_seconds": (result.get("linear_probe") or {}).get("solve_seconds"),
            "seconds_per_epoch": sum(h["seconds"] for h in result["history"]) / max(len(result["history"]), 1),
            "relative_change": relative_change(folder / "checkpoints" / "best.pt")}


def sklearn_reference(manifests: dict[str, Path], cache_dir: Path) -> dict:
    """Logistic regression on the frozen ImageNet features, C chosen on validation AUROC (the same C grid)."""
    adapted = build_model(ARCH, 2, "imagenet", IMAGE_SIZE)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = {}
    for split, path in manifests.items():
        table = load_table(path)
        data[split] = (extract(table, adapted, device, cache_dir=cache_dir).embeddings, table.targets())
    started = time.perf_counter()
    best = None
    for C in DEFAULT_CS:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000)).fit(*data["train"])
        val = roc_auc_score(data["val"][1], model.predict_proba(data["val"][0])[:, 1])
        if best is None or val > best[0]:
            best = (val, C, model)
    val, C, model = best
    test = roc_auc_score(data["test"][1], model.predict_proba(data["test"][0])[:, 1])
    return {"test_auroc": float(test), "val_auroc": float(val), "C": C, "solve_seconds": time.perf_counter() - started}


def table(results: dict, datasets: list[str], strategies: list[str]) -> str:
    lines = ["| strategy | " + " | ".join(f"{d} test AUROC" for d in datasets) + " | rel. weight change (mean) "
             "| wall time vs `ft` |", "|---" * (len(datasets) + 3) + "|"]
    for name in [*strategies, "sklearn_lr"]:
        cells, changes, ratios = [], [], []
        for d in datasets:
            runs = results.get(d, {}).get(name, {})
            values = [r["test_auroc"] for r in runs.values()]
            cells.append("—" if not values else
                         f"{np.mean(values):.3f}" + (f" ({min(values):.3f}–{max(values):.3f})" if len(values) > 1 else ""))
            changes += [r["relative_change"] for r in runs.values() if "relative_change" in r]
            ft = results.get(d, {}).get("ft", {})
            ratios += [r["seconds"] / ft[s]["seconds"] for s, r in runs.items() if "seconds" in r and s in ft]
        change = f"{np.mean(changes):.4f}" if changes else "—"
        ratio = f"{np.mean(ratios):.2f}" if ratios else "—"
        label = "scikit-learn LR (frozen features)" if name == "sklearn_lr" else f"`{name}`"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {change} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--out", type=Path, default=Path("runs/defaults"))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--strategies", default=",".join(STRATEGY_CLASSES))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=None, help="cap on epochs (default: the engine's 50)")
    args = parser.parse_args()
    datasets, strategies = args.datasets.split(","), args.strategies.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {}
    for dataset in datasets:
        manifests = prepare(dataset, args.shared, args.out / "data")
        results[dataset] = {"sklearn_lr": {"-": sklearn_reference(manifests, args.out / "embedding_cache")}}
        print(dataset, "sklearn_lr", json.dumps(results[dataset]["sklearn_lr"]["-"]), flush=True)
        for strategy in strategies:
            for seed in seeds:
                cap = f"_epochs{args.epochs}" if args.epochs is not None else ""  # capped runs kept apart
                folder = args.out / "runs" / dataset / strategy / f"seed{seed}{cap}"
                entry = run_one(manifests, folder, strategy, seed, args.epochs)
                results[dataset].setdefault(strategy, {})[f"seed{seed}"] = entry
                print(dataset, strategy, seed, json.dumps(entry), flush=True)
                write_json(args.out / "defaults.json", {"args": {k: str(v) for k, v in vars(args).items()},
                                                        "results": results})
    report = {
        "benchmark": "defaults_hold_up",
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "results": results,
    }
    write_json(args.out / "defaults.json", report)
    markdown = table(results, datasets, strategies)
    write_text(args.out / "defaults.md", markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
