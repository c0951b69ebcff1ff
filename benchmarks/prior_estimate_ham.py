"""Issue 17's within-site prior check: do the target-prior estimates hold on real data?

One HAM10000 site (rosendahl, its five classes with >= 100 images) is split in two halves, stratified and seeded:
the source half keeps the site's priors, the target half is subsampled (without replacement) to planted priors.
There is no covariate shift beyond what the priors cause. Per planted prior and seed, each prior estimator
(EM-BCTS, BBSE, RLLS) runs on EfficientNet-Lite0 ImageNet features (128 px, the images' native size) with each
source classifier, from the oldest default to today's: logistic regression with C = 1 on the embedding and a 30 %
held-out split; C chosen by cross-validated log-loss with balanced class weights (same split); the same cross-fitted
(every source image held out once); and today's default, cross-fitted on the representation with the better
cross-validated log-loss (the embedding or the early blocks' channel statistics, from the same forward pass).
Reported: mean L1 error of the estimated priors, and how often the 95 % bootstrap interval covers each class's
planted prior.

    python3 benchmarks/prior_estimate_ham.py --out /work/runs/prior_ham --seeds 5
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CLASSES = ("akiec", "bcc", "bkl", "mel", "nv")
PLANTED = {  # the case (mel 0.25, nv 0.55) and two more
    "mel_up": {"akiec": 0.05, "bcc": 0.05, "bkl": 0.10, "mel": 0.25, "nv": 0.55},
    "nv_heavy": {"akiec": 0.02, "bcc": 0.03, "bkl": 0.05, "mel": 0.05, "nv": 0.85},
    "flat": {c: 0.2 for c in CLASSES},
}
CLASSIFIERS = {  # name: (SourceClassifier.fit options, representation: "embedding" or chosen by log-loss)
    "C=1, 30 % held out (first default)": ({"C": 1.0, "class_weight": None, "held_out": 0.3}, "embedding"),
    "cross-validated C, balanced, 30 % held out": ({"held_out": 0.3}, "embedding"),
    "cross-fitted, embedding": ({}, "embedding"),
    "cross-fitted, representation by log-loss (default)": ({}, "chosen"),
}


def representations(out: Path, site: str, device: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    from shiftkit.data.table import load_table
    from shiftkit.features import extract
    from shiftkit.finetune.trainer import resolve_device
    from shiftkit.models.registry import build_model
    from shiftkit.shift.diagnose import prior_representations

    rows = [r for r in csv.DictReader(open(SHARED / "ham10000_sites" / "metadata.csv"))
            if r["site"] == site and r["label"] in CLASSES]
    manifest = out / f"{site}.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows((SHARED / "ham10000_sites" / r["path"], r["label"]) for r in rows)
    table = load_table(manifest)
    adapted = build_model("efficientnet_lite0", 1, "imagenet", 128)
    rep = extract(table, adapted, resolve_device(device), cache_dir=out / "cache", blocks=True)
    candidates = {name: x.astype(np.float64) for name, x in prior_representations(rep).items()}
    return candidates, np.array([r.labels[0] for r in table.records])


def planted_target(rng: np.random.Generator, labels: np.ndarray, rows: np.ndarray, prior: dict,
                   classes=CLASSES) -> np.ndarray:
    """The largest subsample of ``rows`` (without replacement) whose class shares are ``prior``."""
    available = {c: rows[labels[rows] == c] for c in classes}
    n = int(min(len(available[c]) / prior[c] for c in classes if prior[c] > 0))
    picked = [rng.choice(available[c], size=int(round(prior[c] * n)), replace=False) for c in classes]
    return np.concatenate(picked)


def checkpoint_rows(model: Path, split: Path, seeds: int, bootstrap: int) -> list[dict]:
    """The same check with a fine-tuned checkpoint's outputs (``benchmarks/estimate_models.py``'s rosendahl
    multi-class model): source = its ``cal`` split, target = its ``val`` split subsampled to the planted priors
    (the only rosendahl images it did not train on, so both halves are smaller than above)."""
    from shiftkit.data.table import load_table
    from shiftkit.estimate.command import EstimateRequest, model_outputs
    from shiftkit.features import load_finetuned
    from shiftkit.finetune.trainer import resolve_device
    from shiftkit.shift.label import METHODS, SourceClassifier, estimate_label_shift

    adapted, classes = load_finetuned(model)
    outputs, labels = {}, {}
    for name in ("cal", "val"):
        table = load_table(split / f"{name}.csv")
        outputs[name] = np.log(np.clip(model_outputs(table, adapted, resolve_device("cpu"),
                                                     EstimateRequest(model, split, split), None).probabilities,
                                       1e-12, None))
        labels[name] = np.array([r.labels[0] for r in table.records])
    classifier = SourceClassifier.from_logits(outputs["cal"], [classes.index(c) for c in labels["cal"]], classes)
    rows = []
    for seed in range(seeds):
        for planted_name, prior in PLANTED.items():
            full = {c: prior.get(c, 0.0) for c in classes}
            keep = planted_target(np.random.default_rng(seed), labels["val"], np.arange(len(labels["val"])), full,
                                  classes)
            truth = np.array([np.mean(labels["val"][keep] == c) for c in classes])
            for method in METHODS:
                result = estimate_label_shift(classifier, outputs["val"][keep], method=method, bootstrap=bootstrap,
                                              seed=seed).to_dict()
                estimate = np.array([result["target_prior"][c] for c in classes])
                covered = [result["ci"][c][0] <= t <= result["ci"][c][1] for c, t in zip(classes, truth)]
                rows.append({"seed": seed, "classifier": "fine-tuned checkpoint (lp_ft)", "planted": planted_name,
                             "method": method, "n_source": len(labels["cal"]), "n_target": int(len(keep)),
                             "covered": dict(zip(classes, map(bool, covered))),
                             "held_out_accuracy": classifier.details["held_out_accuracy"],
                             "balanced_accuracy": classifier.details["held_out_balanced_accuracy"],
                             "l1": float(np.abs(estimate - truth).sum()), "coverage": float(np.mean(covered)),
                             "all_covered": bool(all(covered))})
    return rows


def main() -> None:
    from sklearn.model_selection import train_test_split

    from shiftkit.shift.label import METHODS, SourceClassifier, estimate_label_shift

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/prior_ham"))
    parser.add_argument("--site", default="rosendahl")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--checkpoint-split", type=Path, default=None,
                        help="also: estimate_models.py's rosendahl_multiclass folder (its model/, cal.csv, val.csv)")
    parser.add_argument("--summary-only", action="store_true", help="print the tables from OUT/results.json")
    args = parser.parse_args()
    if args.summary_only:
        summarise(json.loads((args.out / "results.json").read_text()))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    candidates, y = representations(args.out, args.site, args.device)
    results = []
    for seed in range(args.seeds):
        source_rows, target_rows = train_test_split(np.arange(len(y)), test_size=0.5, stratify=y, random_state=seed)
        for name, (options, representation) in CLASSIFIERS.items():
            started = time.perf_counter()
            if representation == "chosen":  # what diagnose does
                classifier = SourceClassifier.fit_best({k: v[source_rows] for k, v in candidates.items()},
                                                       y[source_rows], CLASSES, seed=seed)
                representation = classifier.details["representation"]
            else:
                classifier = SourceClassifier.fit(candidates[representation][source_rows], y[source_rows], CLASSES,
                                                  seed=seed, **options)
            x = candidates[representation]
            fit_seconds = time.perf_counter() - started
            for planted_name, prior in PLANTED.items():
                rows = planted_target(np.random.default_rng(seed), y, target_rows, prior)
                truth = np.array([np.mean(y[rows] == c) for c in CLASSES])
                logits = classifier.log_probabilities(x[rows])
                for method in METHODS:
                    result = estimate_label_shift(classifier, logits, method=method, bootstrap=args.bootstrap,
                                                  seed=seed).to_dict()
                    estimate = np.array([result["target_prior"][c] for c in CLASSES])
                    covered = [result["ci"][c][0] <= t <= result["ci"][c][1] for c, t in zip(CLASSES, truth)]
                    results.append({"seed": seed, "classifier": name, "planted": planted_name, "method": method,
                                    "n_source": len(source_rows), "n_target": len(rows),
                                    "covered": dict(zip(CLASSES, map(bool, covered))),
                                    "held_out_accuracy": classifier.details["held_out_accuracy"],
                                    "balanced_accuracy": classifier.details.get("held_out_balanced_accuracy"),
                                    "C": classifier.details["C"], "fit_seconds": round(fit_seconds, 2),
                                    "representation": representation,
                                    "l1": float(np.abs(estimate - truth).sum()),
                                    "coverage": float(np.mean(covered)), "all_covered": bool(all(covered))})
        print(f"seed {seed} done", flush=True)
    if args.checkpoint_split is not None:
        results += checkpoint_rows(args.checkpoint_split / "model", args.checkpoint_split, args.seeds, args.bootstrap)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{args.site}: {len(y)} images; mean over {args.seeds} seeds x {len(PLANTED)} planted priors")
    summarise(results)


def summarise(results: list[dict]) -> None:
    """The table per classifier and method, and the default's figures per planted prior (README)."""
    from shiftkit.shift.label import METHODS

    print(f"{'classifier':52s} {'method':8s} {'n_src':>5s} {'acc':>5s} {'L1':>6s} {'worst L1':>8s} "
          f"{'class CI coverage':>17s}")
    for name in dict.fromkeys(r["classifier"] for r in results):
        for method in METHODS:
            rows = [r for r in results if r["classifier"] == name and r["method"] == method]
            print(f"{name:52s} {method:8s} {rows[0]['n_source']:5d} "
                  f"{np.mean([r['held_out_accuracy'] for r in rows]):5.2f} "
                  f"{np.mean([r['l1'] for r in rows]):6.3f} {np.max([r['l1'] for r in rows]):8.3f} "
                  f"{np.mean([r['coverage'] for r in rows]):17.2f}")
    default = [r for r in results if r["classifier"].endswith("(default)") and r["method"] == METHODS[0]]
    chosen = [r["representation"] for r in default]
    print("default's representation, per seed x planted prior:",
          {name: chosen.count(name) for name in sorted(set(chosen))})
    checkpoint = [r for r in results if r["classifier"].startswith("fine-tuned") and r["method"] == METHODS[0]]
    for name, runs in (("default", default), ("checkpoint", checkpoint)):
        for planted in PLANTED if runs else ():
            rows = [r for r in runs if r["planted"] == planted]
            print(f"{name}, {METHODS[0]}, {planted}: L1 {np.mean([r['l1'] for r in rows]):.3f}, class CI coverage "
                  f"{np.mean([r['coverage'] for r in rows]):.2f}, every class covered in "
                  f"{sum(r['all_covered'] for r in rows)} of {len(rows)}")
        classes = runs[0].get("covered", {}) if runs else {}  # results.json of an older run has no per-class record
        per_class = {c: [r["covered"][c] for r in runs] for c in classes}
        if per_class:  # which class the misses are (an absent class's true prior is exactly 0)
            print(f"{name}, {METHODS[0]}, runs whose interval covers the planted prior, per class: "
                  + ", ".join(f"{c} {sum(v)} of {len(v)}" for c, v in per_class.items()))

if __name__ == "__main__":
    main()
