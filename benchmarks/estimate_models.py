"""Models for issue 17's validation benchmark (``benchmarks/estimate_real.py`` reads them): fine-tuned checkpoints
whose accuracy at an unlabelled site is estimated and then checked against the site's labels.

Per training site with enough images (HAM10000 rosendahl and vidir_modern) and per task (binary ``mel`` vs ``nv``;
multi-class over the site's classes with at least 10 images), a stratified 60/20/20 split: ``train``, ``val`` (early
stopping) and ``cal`` (SRC for ``shiftkit estimate``: labelled images the model never trained on). Every other
site is a target (its rows of the task's classes). PneumoniaMNIST and BreastMNIST: the official train split
trains, val is SRC, test (clean or corrupted, see estimate_real.py) is the target.

EfficientNet-Lite0 (the ImageNet weights that install offline), ``lp_ft``, 128 px for HAM10000 and 64 px for MedMNIST.
Resumable: a model whose ``metrics.json`` exists is not trained again.

    python3 benchmarks/estimate_models.py --out /work/runs/estimate
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HAM_TRAIN_SITES = ("rosendahl", "vidir_modern")
MIN_CLASS = 10


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def ham_cases(out: Path) -> list[dict]:
    """One case per (training site, task): CSVs for train/val/cal and one target CSV per other site."""
    ham = SHARED / "ham10000_sites"
    rows = list(csv.DictReader(open(ham / "metadata.csv")))
    by_site: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        by_site.setdefault(r["site"], []).append((str(ham / r["path"]), r["label"]))
    cases = []
    for site in HAM_TRAIN_SITES:
        counts = Counter(label for _, label in by_site[site])
        for task, classes in (("binary", ("mel", "nv")),
                              ("multiclass", tuple(sorted(c for c, n in counts.items() if n >= MIN_CLASS)))):
            folder = out / "ham" / f"{site}_{task}"
            data = [r for r in by_site[site] if r[1] in classes]
            labels = [label for _, label in data]
            train, rest = train_test_split(data, test_size=0.4, stratify=labels, random_state=0)
            val, cal = train_test_split(rest, test_size=0.5, stratify=[label for _, label in rest], random_state=0)
            targets = {other: _write(folder / f"target_{other}.csv", [r for r in by_site[other] if r[1] in classes])
                       for other in by_site if other != site}
            cases.append({"name": f"ham_{site}_{task}", "train": _write(folder / "train.csv", train),
                          "val": _write(folder / "val.csv", val), "cal": _write(folder / "cal.csv", cal),
                          "targets": targets, "classes": classes, "image_size": 128, "model": folder / "model"})
    return cases


def medmnist_cases(out: Path) -> list[dict]:
    from shiftkit.data.medmnist import export_npz

    cases = []
    for name in ("pneumoniamnist", "breastmnist"):
        folder = out / name
        splits = export_npz(SHARED / "medmnist" / f"{name}.npz", folder / "images", seed=0)
        cases.append({"name": name, "train": splits["train"], "val": splits["val"], "cal": splits["val"],
                      "test": splits["test"], "targets": {}, "image_size": 64, "model": folder / "model"})
    return cases


def train(case: dict, epochs: int, device: str) -> dict:
    from shiftkit.finetune.config import TrainConfig
    from shiftkit.finetune.run import FinetuneRequest, run_finetune
    from shiftkit.finetune.strategies import StrategyConfig

    metrics = case["model"] / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    return run_finetune(FinetuneRequest(
        data=case["train"], val=case["val"], out=case["model"], arch="efficientnet_lite0", weights="imagenet",
        image_size=case["image_size"],
        train=TrainConfig(strategy="lp_ft", lr=1e-4, epochs=epochs, patience=3, seed=0, device=device),
        strategy=StrategyConfig(lp_epochs=2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/estimate"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", default=None, help="comma-separated case names")
    args = parser.parse_args()
    cases = ham_cases(args.out) + medmnist_cases(args.out)
    wanted = set(args.only.split(",")) if args.only else None
    for case in cases:
        if wanted and case["name"] not in wanted:
            continue
        result = train(case, args.epochs, args.device)
        print(case["name"], "val", {k: round(v, 3) for k, v in result.get("val", {}).items()
                                    if isinstance(v, float)}, flush=True)
    manifest = [{k: (str(v) if isinstance(v, Path) else {t: str(p) for t, p in v.items()} if isinstance(v, dict)
                     else list(v) if isinstance(v, tuple) else v) for k, v in case.items()} for case in cases]
    (args.out / "cases.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
