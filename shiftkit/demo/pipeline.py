"""The demo's work: generate the hospitals, diagnose B against A, recommend, fine-tune, adapt BN, report.

Each step uses the same library calls as the commands (``diagnose``, ``recommend``, ``finetune``), so the demo
shows what a user's own run would produce, on data whose shift is known.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from shiftkit.demo.hospitals import PlantedShift, planted_property_changes, write_hospitals
from shiftkit.estimate.command import EstimateRequest, run_estimate
from shiftkit.finetune.run import FinetuneRequest, run_finetune
from shiftkit.harmonize.bn import AdaptBNRequest, run_adapt_bn
from shiftkit.finetune.strategies import StrategyConfig
from shiftkit.finetune.trainer import TrainConfig, TrainerCallback
from shiftkit.io import write_json
from shiftkit.shift.diagnose import DiagnoseRequest, run_diagnose
from shiftkit.shift.profile import LABEL_CAVEAT

ARCH = "efficientnet_lite0"  # the one backbone with real ImageNet weights that installs offline


@dataclass
class DemoRequest:
    out: Path
    seed: int = 0
    image_size: int = 64
    epochs: int = 6
    permutations: int = 500
    device: str = "auto"
    shift: PlantedShift = field(default_factory=PlantedShift)


@dataclass
class DemoHooks:
    """Progress callbacks the CLI passes in (all optional)."""

    on_stage: Callable | None = None  # (description, total) -> advance()
    on_step: Callable[[str], None] | None = None
    trainer: TrainerCallback | None = None  # an EpochProgress: epochs and the decoding stage
    on_phase: Callable[[str], None] | None = None


def _phase(hooks: DemoHooks, text: str) -> None:
    if hooks.on_phase:
        hooks.on_phase(text)


def _found_vs_planted(shift: PlantedShift, report: dict) -> list[dict]:
    """One row per shift type: what was planted, what diagnose reported."""
    cov = report["covariate"]
    verdict = report["verdict"]
    auc = cov.get("domain_classifier", {}).get("statistic")
    covariate_found = (f"{verdict['covariate']['level']}: domain-classifier AUC {auc:.3f}, "
                       f"MMD p = {cov['mmd']['p_value']:.3g}")
    label = report.get("label")
    if label:
        estimated = ", ".join(f"{c} {label['target_prior'][c]:.2f} [{label['ci'][c][0]:.2f}–{label['ci'][c][1]:.2f}]"
                              for c in label["classes"])
        label_found = f"{verdict['label']['level']}: estimated {estimated} (p = {label['p_value']:.3g})"
        right = sum((label["target_prior"][c] > label["source_prior"][c]) == (shift.target_prior[c] > shift.source_prior[c])
                    for c in label["classes"])
        label_found += f"; moved in the planted direction for {right} of {len(label['classes'])} classes"
        if LABEL_CAVEAT in verdict["label"]["reason"]:
            label_found += ("; sizes may be biased: prior estimators assume P(X|Y) is shared, which the strong "
                            "covariate shift breaks")
    else:
        label_found = f"{verdict['label']['level']}: {verdict['label']['reason']}"
    planted_priors = ", ".join(f"{c} {p:.2f}" for c, p in shift.target_prior.items())
    return [
        {"shift": "covariate",
         "planted": (f"contrast x{shift.contrast}, brightness +{shift.brightness}, blur sigma {shift.blur_sigma} px, "
                     f"noise sigma {shift.noise_sigma}, {shift.target_size} px instead of 64 px"),
         "found": covariate_found},
        {"shift": "label", "planted": f"target priors {planted_priors} (source: a third each)", "found": label_found},
        {"shift": "concept", "planted": "none (the class is set by the shape alone)",
         "found": f"{verdict['concept']['level']}: {verdict['concept']['reason']}"},
        *_fingerprint_rows(shift, report.get("fingerprint")),
    ]


def _fingerprint_rows(shift: PlantedShift, fingerprint: dict | None) -> list[dict]:
    """Where the shift lands (planted at the input: the first blocks) and the planted image properties: those with a
    known direction counted as found in it or not; the confounded ones (blur and noise, whose net direction the
    resize and the contrast compression decide) shown as measured."""
    if fingerprint is None:
        return []
    peak = fingerprint["peak"]
    early = peak["index"] < peak["of"] / 2
    where = (f"peaks at block {peak['index'] + 1} of {peak['of']} ({peak['block']}): "
             + ("in the first half, as planted" if early else "NOT in the first half") if peak["shifted"]
             else "no block's shift is significant")
    expected = planted_property_changes(shift)
    known = {name: direction for name, direction in expected.items() if direction != "confounded"}
    rows = {row["property"]: row for row in fingerprint["image_properties"] if row.get("testable")}

    def described(name: str) -> str:
        row = rows.get(name)
        if row is None or not row["significant"]:
            return f"{name}: not significant"
        size = f"d = {row['cohens_d']:.2g}" if row.get("cohens_d") is not None else f"r = {row['rank_biserial']:.2f}"
        return f"{name} {'higher' if row['rank_biserial'] > 0 else 'lower'} ({size})"

    matched = sum(name in rows and rows[name]["significant"]
                  and (rows[name]["rank_biserial"] > 0) == (direction == "higher") for name, direction in known.items())
    confounded = [name for name in expected if name not in known]
    extra = [row["property"] for row in fingerprint["image_properties"]
             if row.get("significant") and row["property"] not in expected]
    properties_found = (f"{matched} of {len(known)} in the planted direction: "
                        + "; ".join(described(name) for name in known)
                        + (f". Confounded (no known direction): {'; '.join(described(n) for n in confounded)}"
                           if confounded else "")
                        + (f". Also changed: {', '.join(extra)}" if extra else ""))
    return [
        {"shift": "where it lands", "planted": "at the input (intensity, blur, noise, pixel grid): the first blocks",
         "found": where, "matches": bool(peak["shifted"] and early)},
        {"shift": "image properties",
         "planted": ", ".join(f"{name} {direction}" for name, direction in known.items())
         + (f"; {' and '.join(confounded)} confounded (see planted_property_changes)" if confounded else ""),
         "found": properties_found, "matches": matched == len(known)},
    ]


def _estimate_summary(estimate: dict) -> dict:
    """The default method's accuracy and balanced accuracy estimated without B's labels, next to what B's labels
    then measure, and the flags raised."""
    method = estimate["default_method"]
    rows = {r["metric"]: r for r in estimate["estimates"] if r["method"] == method or
            (r["metric"] == "balanced_accuracy" and r["method"] == "cm_atc")}
    return {"method": method,
            "accuracy": {"estimate": rows["accuracy"]["estimate"], "interval": rows["accuracy"]["interval"],
                         "measured": estimate["measured"]["accuracy"],
                         "measured_interval": estimate["measured"]["intervals"]["accuracy"]},
            "balanced_accuracy": {"method": rows["balanced_accuracy"]["method"],
                               "estimate": rows["balanced_accuracy"]["estimate"],
                               "interval": rows["balanced_accuracy"]["interval"],
                               "measured": estimate["measured"]["balanced_accuracy"],
                               "measured_interval": estimate["measured"]["intervals"]["balanced_accuracy"]},
            "flags": [f["code"] for f in estimate["flags"] if f["status"] == "raised"]}


def run_demo(request: DemoRequest, hooks: DemoHooks | None = None) -> dict:
    """Run the whole demo into ``request.out`` and return its summary (also written to ``demo.json``)."""
    from shiftkit.report.diagnose import write_report
    from shiftkit.report.estimate import write_report as write_estimate_report

    hooks = hooks or DemoHooks()
    started = time.perf_counter()
    out = Path(request.out)
    _phase(hooks, "1/6 generating two synthetic hospitals")
    paths = write_hospitals(out / "data", seed=request.seed, shift=request.shift)

    _phase(hooks, "2/6 diagnosing hospital B against hospital A")
    diagnose_request = DiagnoseRequest(source=paths["source"], target=paths["target"], arch=ARCH, weights="imagenet",
                                       image_size=request.image_size, permutations=request.permutations,
                                       seed=request.seed, device=request.device, fingerprint=True)
    profile, embedded = run_diagnose(diagnose_request, on_stage=hooks.on_stage, on_step=hooks.on_step)

    _phase(hooks, "3/6 recommending a fine-tuning strategy")
    report = write_report(profile, embedded, out / "diagnose")  # the report carries the recommendation
    recommendation = report["recommendation"]
    chosen = recommendation["ranking"][0]["strategy"]

    _phase(hooks, f"4/6 fine-tuning with '{chosen}' on hospital A, testing on hospital B")
    finetune = run_finetune(FinetuneRequest(
        data=paths["source"], test=paths["target_labels"], out=out / "finetune", arch=ARCH, weights="imagenet",
        image_size=request.image_size,
        train=TrainConfig(strategy=chosen, lr=1e-3, epochs=request.epochs, patience=request.epochs,
                          seed=request.seed, device=request.device),
        strategy=StrategyConfig(lp_epochs=max(1, request.epochs // 2)),
    ), callback=hooks.trainer, on_stage=hooks.trainer)  # EpochProgress also shows decoding

    _phase(hooks, "5/6 estimating the model's accuracy at hospital B without B's labels")
    estimate = run_estimate(EstimateRequest(checkpoint=out / "finetune", source_val=paths["source_calibration"],
                                            target=paths["target_labels"], bootstrap=500, seed=request.seed,
                                            device=request.device), on_stage=hooks.on_stage)
    write_estimate_report(estimate, out / "estimate")

    _phase(hooks, "6/6 adapting the model's BatchNorm statistics to hospital B (AdaBN, no labels used)")
    adabn = run_adapt_bn(AdaptBNRequest(checkpoint=out / "finetune", target=paths["target_labels"],
                                        out=out / "adabn", method="adabn", device=request.device,
                                        seed=request.seed), on_stage=hooks.trainer)

    summary = {
        "planted": request.shift.to_dict(),
        "found_vs_planted": _found_vs_planted(request.shift, report),
        "recommendation": recommendation,
        "finetune": {"strategy": chosen, "val_hospital_a": finetune["val"], "test_hospital_b": finetune["test"],
                     "epochs_run": finetune["epochs_run"]},
        "estimate": _estimate_summary(estimate),
        "adabn": {"test_hospital_b_before": adabn.before.get("metrics"),
                  "test_hospital_b_after": adabn.after.get("metrics")},
        "outputs": {"data": str(out / "data"), "diagnose": str(out / "diagnose" / "report.html"),
                    "finetune": str(out / "finetune" / "metrics.json"),
                    "estimate": str(out / "estimate" / "estimate.html"),
                    "adabn": str(out / "adabn" / "adaptation.json")},
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "demo.json", summary)
    return summary
