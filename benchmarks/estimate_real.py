"""Issue 17's validation of label-free performance estimation on real data, against the truth.

Models and splits come from ``benchmarks/estimate_models.py`` (run it first). Cases:
- HAM10000: a model fine-tuned on rosendahl or vidir_modern (binary ``mel`` vs ``nv``, and multi-class), SRC = the
  training site's held-out ``cal`` split, every other site a target;
- PneumoniaMNIST and BreastMNIST: SRC = val, targets = the test split clean, with planted corruptions at three
  severities (Gaussian blur, contrast reduction, Gaussian noise), and resampled to planted prevalences; apart from
  the main table, the clean and corrupted test splits subsampled to SRC's prevalence (the corruption alone).
Per case and method (``shiftkit.estimate``; NannyML's CBPE on the same model outputs as the peer column): the
estimate of accuracy, its interval, and the accuracy measured with the target's labels. One column is not
label-free: ``ac_dc_known_prevalence``, the default method told the target's class shares (``--prior CLASS=P,...``:
what a site's case mix gives), which shows how much of the error the unknown prevalence carries; and one column is
label-free but not a shiftkit method: ``ac_dc_em_prevalence``, the default method handed EM-BCTS's estimated prior as
if it were known, which shows whether the estimated prior would close that gap. The summary per
method: mean absolute error, worst error, interval coverage and width, and how often it beat the naive baseline
(source accuracy); then per data set and per confident_shift flag, and the cases where the default's interval misses.

    python3 benchmarks/estimate_real.py --runs /work/runs/estimate [--bootstrap 500]
    python3 benchmarks/estimate_real.py --summary-only /work/runs/estimate/estimate_results.json   # the tables again
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

CORRUPTIONS = {"blur": (0.5, 1.0, 2.0), "contrast": (0.7, 0.5, 0.3), "noise": (0.05, 0.1, 0.2)}
PREVALENCES = (0.2, 0.5, 0.8)  # of the positive (second) class, by resampling the clean test split
# The test split, clean and with each corruption, subsampled to SRC's positive share: the planted corruption without
# the split's own prevalence change (PneumoniaMNIST: 74 % pneumonia in val, 62.5 % in test). Reported apart from the
# main table ("variant" cases), whose cases stay as they were.
AT_SRC = " at SRC prevalence"
KNOWN_PREVALENCE = "ac_dc_known_prevalence"
"""The default method told the target's true class shares (``--prior CLASS=P,...``): not label-free, a column apart."""
EM_PREVALENCE = "ac_dc_em_prevalence"
"""The default method handed EM-BCTS's estimated target prior as if it were known (posteriors moved to it, its chance
level, the prediction-rate cap always on): label-free, but not a method shiftkit offers. It answers "would the
estimated prior close the gap to the known one?" (a column apart)."""


sys.path.insert(0, str(Path(__file__).parent))
from estimate_models import _write, ham_cases, medmnist_cases  # noqa: E402  (the splits the models trained on)

from shiftkit.estimate.command import DEFAULT_METHOD  # noqa: E402


def _rows(manifest: Path) -> list[tuple[str, str]]:
    return [(str((manifest.parent / r["path"]).resolve()) if not Path(r["path"]).is_absolute() else r["path"],
             r["label"]) for r in csv.DictReader(open(manifest))]


def corrupted(test: Path, kind: str, severity: float, out: Path) -> Path:
    """The test split with one planted corruption (PNG copies; seeded noise)."""
    folder = out / f"{kind}_{severity}"
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        return manifest
    rng = np.random.default_rng(0)
    rows = []
    for index, (path, label) in enumerate(_rows(test)):
        image = Image.open(path).convert("L")
        if kind == "blur":
            image = image.filter(ImageFilter.GaussianBlur(severity))
        elif kind == "contrast":
            image = ImageEnhance.Contrast(image).enhance(severity)
        else:
            pixels = np.asarray(image, dtype=np.float64) / 255 + rng.normal(0, severity, image.size[::-1])
            image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))
        target = folder / f"{index:05d}.png"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(target)
        rows.append((str(target), label))
    return _write(manifest, rows)


def prevalence(test: Path, positive_share: float, out: Path, classes: list[str], name: str | None = None) -> Path:
    """The largest subsample of a split's manifest (without replacement, seeded) with the planted positive share,
    written to ``out/name``."""
    rows = _rows(test)
    rng = np.random.default_rng(0)
    positive = [r for r in rows if r[1] == classes[1]]
    negative = [r for r in rows if r[1] == classes[0]]
    n = int(min(len(positive) / positive_share, len(negative) / (1 - positive_share)))
    keep = ([positive[i] for i in rng.choice(len(positive), int(round(positive_share * n)), replace=False)]
            + [negative[i] for i in rng.choice(len(negative), n - int(round(positive_share * n)), replace=False)])
    return _write(out / (name or f"prevalence_{positive_share}.csv"), keep)


def positive_share(manifest: Path, classes: list[str]) -> float:
    labels = [label for _, label in _rows(manifest)]
    return labels.count(classes[1]) / len(labels)


def cbpe(src_proba, src_y, tgt_proba, classes) -> dict | None:
    """NannyML's CBPE accuracy on the same outputs (one chunk; its interval is NannyML's sampling band)."""
    os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # no network: NannyML would try to send usage data
    warnings.filterwarnings("ignore", module="nannyml")
    try:
        import nannyml as nml
        import pandas as pd
    except ImportError:
        return None
    k = len(classes)
    names = [f"p_{i}" for i in range(k)]

    def frame(proba, y=None):
        data = {name: proba[:, i] for i, name in enumerate(names)}
        data["pred"] = proba.argmax(axis=1)
        data["y"] = y if y is not None else np.full(len(proba), np.nan)
        return pd.DataFrame(data)

    binary = k == 2
    estimator = nml.CBPE(metrics=["accuracy"], y_true="y", y_pred="pred", chunk_number=1,
                         y_pred_proba=names[1] if binary else {i: n for i, n in enumerate(names)},
                         problem_type="classification_binary" if binary else "classification_multiclass")
    estimator.fit(frame(src_proba, src_y))
    result = estimator.estimate(frame(tgt_proba)).filter(period="analysis").to_df()
    row = result.iloc[-1]
    value = float(row[("accuracy", "value")])
    lo = row.get(("accuracy", "lower_confidence_boundary"))
    hi = row.get(("accuracy", "upper_confidence_boundary"))
    interval = [float(lo) if lo is not None else None, float(hi) if hi is not None else None]
    return {"estimate": value, "interval": interval}


def atc_dc_as_published(src_proba, src_y, tgt_proba, distance) -> dict:
    """ATC with the distance check as Roschewitz & Glocker publish it: a target image counts as correct when its
    score is above ATC's threshold and it passes the check (shiftkit's ac_dc scores the failing ones at chance
    level instead). A point estimate; the paper gives no interval."""
    from shiftkit.estimate import atc_threshold, confidence_scores

    log = lambda p: np.log(np.clip(p, 1e-12, None))  # noqa: E731
    threshold = atc_threshold(confidence_scores(log(src_proba)), src_proba.argmax(1) == src_y)
    above = confidence_scores(log(tgt_proba)) > threshold
    return {"estimate": float(np.mean(above & distance.target_inside)), "interval": None}


def run_case(name: str, model: Path, cal: Path, target: Path, cache: Path, bootstrap: int) -> dict:
    from shiftkit.data.table import load_table
    from shiftkit.estimate import embedding_inputs, estimate_performance
    from shiftkit.estimate.command import EstimateRequest, model_outputs
    from shiftkit.estimate.measured import measured_metrics
    from shiftkit.features import load_finetuned
    from shiftkit.finetune.trainer import resolve_device

    adapted, classes = load_finetuned(model)
    request = EstimateRequest(model, cal, target, cache_dir=cache, device="cpu")
    device = resolve_device("cpu")
    src_table, tgt_table = load_table(cal), load_table(target)
    src, tgt = (model_outputs(t, adapted, device, request, None) for t in (src_table, tgt_table))
    src_y = np.array([classes.index(r.labels[0]) for r in src_table.records])
    tgt_y = np.array([classes.index(r.labels[0]) for r in tgt_table.records])
    started = time.perf_counter()
    inputs = embedding_inputs(src.embeddings, src_y, tgt.embeddings, tgt.probabilities.argmax(1), seed=0)
    density, distance = inputs["density_ratio"], inputs["distance"]
    src_log, tgt_log = (np.log(np.clip(p, 1e-12, None)) for p in (src.probabilities, tgt.probabilities))
    estimate = estimate_performance(src_log, src_y, tgt_log, classes=classes, bootstrap=bootstrap, seed=0, **inputs)
    seconds = time.perf_counter() - started
    truth = measured_metrics(tgt.probabilities, tgt_y, classes, classes[1] if len(classes) == 2 else None)
    methods = {r.method: {"estimate": r.estimate, "interval": list(r.interval) if r.interval else None}
               for r in estimate.results if r.metric == "accuracy"}
    methods["atc_dc_published"] = atc_dc_as_published(src.probabilities, src_y, tgt.probabilities, distance)
    # Not label-free: the same estimate told the target's true class shares (what a site's case mix or registry
    # gives, as `--prior CLASS=P,...`), to show how much of the error the unknown prevalence carries.
    known = dict(zip(classes, (np.bincount(tgt_y, minlength=len(classes)) / len(tgt_y)).tolist()))
    informed = estimate_performance(src_log, src_y, tgt_log, classes=classes, target_prior=known, bootstrap=bootstrap,
                                    seed=0, **inputs)
    methods[KNOWN_PREVALENCE] = _default_accuracy(informed)
    em = dict(estimate.target_prior["target"])  # the label-free point estimate
    methods[EM_PREVALENCE] = _default_accuracy(estimate_performance(src_log, src_y, tgt_log, classes=classes,
                                                                    target_prior=em, bootstrap=bootstrap, seed=0,
                                                                    **inputs))
    peer = cbpe(src.probabilities, src_y, tgt.probabilities, classes)
    if peer is not None:
        methods["nannyml_cbpe"] = peer
    return {"case": name, "n_source": len(src_y), "n_target": len(tgt_y), "true_accuracy": truth["accuracy"],
            "methods": methods, "flags": [f.code for f in estimate.raised], "estimate_seconds": round(seconds, 2),
            "domain_auc": density.domain_auc, "outside_fraction": distance.outside_fraction,
            "priors": {"source": estimate.target_prior["source"], "em_bcts": estimate.target_prior["target"],
                       "target": known}}


def _default_accuracy(estimate) -> dict:
    return next({"estimate": r.estimate, "interval": list(r.interval) if r.interval else None}
                for r in estimate.results if r.method == DEFAULT_METHOD and r.metric == "accuracy")


def summarise(results: list[dict]) -> list[dict]:
    methods = sorted({m for r in results for m in r["methods"]})
    rows = []
    for method in methods:
        errors, covered, beat, widths = [], [], [], []
        for r in results:
            m = r["methods"].get(method)
            if not m or m["estimate"] is None:
                continue
            error = abs(m["estimate"] - r["true_accuracy"])
            errors.append(error)
            if m["interval"] and None not in m["interval"]:
                covered.append(m["interval"][0] <= r["true_accuracy"] <= m["interval"][1])
                widths.append(m["interval"][1] - m["interval"][0])
            beat.append(error <= abs(r["methods"]["source"]["estimate"] - r["true_accuracy"]))
        rows.append({"method": method, "cases": len(errors), "mae": float(np.mean(errors)),
                     "worst": float(np.max(errors)), "coverage": float(np.mean(covered)) if covered else None,
                     "at_least_as_good_as_source": float(np.mean(beat)),
                     "mean_width": float(np.mean(widths)) if widths else None})
    return sorted(rows, key=lambda row: row["mae"])


def variant(result: dict) -> bool:
    """A case of the at-SRC-prevalence variant (kept out of the main table)."""
    return result["case"].endswith(AT_SRC)


GROUPS = {"HAM10000": lambda r: r["case"].startswith("ham"), "BreastMNIST": lambda r: r["case"].startswith("breast"),
          "PneumoniaMNIST": lambda r: r["case"].startswith("pneumonia"),
          "confident_shift raised": lambda r: "confident_shift" in r["flags"],
          "confident_shift not raised": lambda r: "confident_shift" not in r["flags"]}
VARIANT_GROUPS = {"BreastMNIST" + AT_SRC: lambda r: r["case"].startswith("breast"),
                  "PneumoniaMNIST" + AT_SRC: lambda r: r["case"].startswith("pneumonia")}


def print_summary(results: list[dict], default: str = DEFAULT_METHOD) -> None:
    """Every method over all cases, then per group (data set; confident_shift raised or not): MAE, how many
    intervals cover the truth, mean width; and the cases where the default method's interval misses."""
    variants = [r for r in results if variant(r)]
    results = [r for r in results if not variant(r)]
    summary = summarise(results)
    print(f"\n{len(results)} cases")
    print(f"{'method':22s} {'cases':>5s} {'MAE':>6s} {'worst':>6s} {'coverage':>8s} {'<= source':>9s} {'width':>6s}")
    for row in summary:
        coverage = f"{row['coverage']:.2f}" if row["coverage"] is not None else "—"
        width = f"{row['mean_width']:.3f}" if row["mean_width"] is not None else "—"
        print(f"{row['method']:22s} {row['cases']:5d} {row['mae']:6.3f} {row['worst']:6.3f} {coverage:>8s} "
              f"{row['at_least_as_good_as_source']:9.2f} {width:>6s}")
    print(f"\n{'group':34s} {'method':22s} {'cases':>5s} {'MAE':>6s} {'covered':>8s} {'width':>6s}")
    grouped = [(group, [r for r in results if member(r)]) for group, member in GROUPS.items()]
    grouped += [(group, [r for r in variants if member(r)]) for group, member in VARIANT_GROUPS.items()]
    for group, cases in grouped:
        for row in summarise(cases) if cases else []:
            covered = round(row["coverage"] * row["cases"]) if row["coverage"] is not None else 0
            width = f"{row['mean_width']:.2f}" if row["mean_width"] is not None else "—"
            print(f"{group:34s} {row['method']:22s} {row['cases']:5d} {row['mae']:6.3f} "
                  f"{covered:>3d} of {row['cases']:<2d} {width:>6s}")
    print_prior_errors(results + variants)

    def missed(r: dict) -> bool:
        interval = r["methods"].get(default, {}).get("interval")
        return bool(interval) and not interval[0] <= r["true_accuracy"] <= interval[1]

    misses = [r for r in results + variants if missed(r)]
    print(f"\n{default}'s interval misses the truth in {len(misses)} case(s):")
    for r in misses:
        print(f"  {r['case']}: true {r['true_accuracy']:.3f}, {default} {r['methods'][default]['estimate']:.3f} "
              f"{[round(v, 3) for v in r['methods'][default]['interval']]}, flags {r['flags']}, "
              f"domain AUC {r.get('domain_auc', float('nan')):.2f}")


def print_prior_errors(results: list[dict]) -> None:
    """Per group, the mean L1 distance to the target's class shares of the source's prior (what the label-free
    default assumes) and of EM-BCTS's estimate (what ``ac_dc_em_prevalence`` is handed)."""
    rows = [r for r in results if "priors" in r]
    if not rows:
        return
    print(f"\n{'target prior: mean L1 to the true shares':40s} {'cases':>5s} {'source':>7s} {'EM-BCTS':>8s}")
    groups = {**{g: GROUPS[g] for g in ("HAM10000", "BreastMNIST", "PneumoniaMNIST")}, **VARIANT_GROUPS}
    for group, member in groups.items():
        cases = [r for r in rows if member(r) and variant(r) == group.endswith(AT_SRC)]
        if not cases:
            continue
        l1 = {key: np.mean([sum(abs(r["priors"][key][c] - r["priors"]["target"][c]) for c in r["priors"]["target"])
                            for r in cases]) for key in ("source", "em_bcts")}
        print(f"{group:40s} {len(cases):5d} {l1['source']:7.3f} {l1['em_bcts']:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/estimate"))
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--only", default=None, help="comma-separated case-name prefixes")
    parser.add_argument("--summary-only", type=Path, default=None, metavar="RESULTS_JSON",
                        help="print the tables of an estimate_results.json and exit")
    args = parser.parse_args()
    if args.summary_only is not None:
        print_summary(json.loads(args.summary_only.read_text()))
        return
    cases = [{k: (str(v) if isinstance(v, Path) else {t: str(p) for t, p in v.items()} if isinstance(v, dict) else v)
              for k, v in case.items()} for case in ham_cases(args.runs) + medmnist_cases(args.runs)]
    cache = args.runs / "cache"
    done_file = args.runs / "estimate_results.json"
    results = json.loads(done_file.read_text()) if done_file.is_file() else []
    done = {r["case"] for r in results}
    for case in cases:
        if args.only and not any(case["name"].startswith(p) for p in args.only.split(",")):
            continue
        if not (Path(case["model"]) / "metrics.json").is_file():
            print(f"{case['name']}: no model yet (run estimate_models.py)", flush=True)
            continue
        targets = dict(case["targets"])
        if "test" in case:
            test = Path(case["test"])
            classes = sorted({label for _, label in _rows(Path(case["train"]))})
            targets["test_clean"] = str(test)
            source_share = positive_share(Path(case["cal"]), classes)
            at_source_share = {"test_clean" + AT_SRC: str(prevalence(test, source_share, args.runs / case["name"],
                                                                     classes, "test_at_src_prevalence.csv"))}
            for kind, severities in CORRUPTIONS.items():
                for severity in severities:
                    manifest = corrupted(test, kind, severity, args.runs / case["name"] / "corrupted")
                    targets[f"{kind}_{severity}"] = str(manifest)
                    at_source_share[f"{kind}_{severity}{AT_SRC}"] = str(
                        prevalence(manifest, source_share, manifest.parent, classes, "at_src_prevalence.csv"))
            for share in PREVALENCES:
                targets[f"prevalence_{share}"] = str(prevalence(test, share, args.runs / case["name"], classes))
            targets.update(at_source_share)
        for target_name, target in targets.items():
            name = f"{case['name']} -> {target_name}"
            if name in done:
                continue
            result = run_case(name, Path(case["model"]), Path(case["cal"]), Path(target), cache, args.bootstrap)
            results.append(result)
            done_file.write_text(json.dumps(results, indent=1))  # resumable: one case at a time
            shown = ", ".join(f"{m} {v['estimate']:.3f}" for m, v in result["methods"].items()
                              if v["estimate"] is not None)
            print(f"{name}: true {result['true_accuracy']:.3f}; {shown}; flags {result['flags']}", flush=True)
    (args.runs / "estimate_summary.json").write_text(json.dumps(summarise([r for r in results if not variant(r)]),
                                                                indent=1))
    print_summary(results)

if __name__ == "__main__":
    main()
