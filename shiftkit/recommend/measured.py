"""The recommendation shiftkit gives: the measured-evidence model first, the published cases as a second opinion.

:func:`recommend_for_report` ranks the strategies for a ``diagnose`` report with the nearest-scenario model
(:mod:`shiftkit.recommend.nearest`) fitted to the packaged scenario evidence. From ImageNet, each strategy also gets
the published (Davila et al. 2024) expected gain as a reason, so the paper's cases still inform that setting. The
result has the shape of :meth:`shiftkit.recommend.recommender.Recommendation.to_dict` (arch, best, facts, ranking,
notes, model, unit), so every report and table that shows a recommendation shows this one.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from shiftkit.errors import ConfigError, DataError
from shiftkit.recommend.nearest import NearestModel, fit
from shiftkit.scenarios.evidence import EVIDENCE_PROTOCOL
from shiftkit.recommend.recommender import ShiftFacts, recommend, shift_notes
from shiftkit.recommend.scenario_evidence import EVIDENCE_FILE, FEATURES, fact_features, load_scenarios, \
    shift_features

STARTS = ("imagenet", "source")
UNIT = "relative gain over ft, percent of the main metric"


@lru_cache(maxsize=4)
def evidence_model(path: Path = EVIDENCE_FILE) -> NearestModel:
    """The recommender fitted to all of the scenario evidence (features and bandwidth chosen family-wise)."""
    scenarios = load_scenarios(path)
    if not scenarios:
        raise DataError(f"{path} holds no measured scenario")
    return fit(scenarios)


def facts_features(train_size: int, num_classes: int, start: str) -> dict[str, float]:
    """The features known before any image is diagnosed: the fingerprint's are unknown (NaN)."""
    return {**{f: math.nan for f in FEATURES}, **fact_features(train_size, num_classes, start)}


def default_start(report: dict) -> str:
    """``source`` when the report was made with the source model (``diagnose --checkpoint``), else ``imagenet``."""
    return "source" if (report.get("settings") or {}).get("checkpoint") else "imagenet"


def default_budget(report: dict) -> int:
    """The labelled target images when the report counted them, else the source size (the images you train on)."""
    dataset = report.get("dataset") or {}
    labelled = dataset.get("target_labelled")
    return int(labelled) if isinstance(labelled, int) and labelled > 0 else max(int(dataset.get("n_source") or 1), 1)


def recommend_for_report(report: dict, arch: str, budget: int | None = None, start: str | None = None,
                         domain: str | None = None, top: int | None = None,
                         evidence: Path = EVIDENCE_FILE) -> dict:
    """The ranked strategies for this report (see the module docstring)."""
    start = start or default_start(report)
    if start not in STARTS:
        raise ConfigError(f"--start '{start}': choose imagenet or source")
    budget = default_budget(report) if budget is None else budget
    features = shift_features(report, budget, start)
    facts = ShiftFacts.from_report(report)
    facts = replace(facts, train_size=budget, domain=domain or facts.domain)
    return recommend_for_features(features, facts, arch, start, top, evidence)


def recommend_for_features(features: dict[str, float], facts: ShiftFacts, arch: str, start: str,
                           top: int | None = None, evidence: Path = EVIDENCE_FILE) -> dict:
    """The ranking from measured features (unknown ones NaN) and the dataset facts."""
    if top is not None and top < 1:
        raise ConfigError(f"--top {top} must be at least 1")
    try:
        model = evidence_model(evidence)
    except DataError as exc:  # no or damaged evidence must not cost a finished diagnose its report
        published = recommend(facts, arch, top=top).to_dict()
        published["notes"].append(f"{exc}: the ranking rests on the published cases"
                                  + (", all of them fine-tuned from ImageNet" if start == "source" else ""))
        return {**published, "start": start}
    scenarios = model.scenarios
    advice = model.advise(features)
    notes = []
    if start == "imagenet":
        published = {a.strategy: a for a in recommend(facts, arch).ranking}
        for item in advice:
            p = published[item["strategy"]]
            item["reasons"].append(f"the paper's most similar published cases: {p.expected_gain:+.1f} ± "
                                   f"{p.uncertainty:.1f} % (Davila et al. 2024)")
    missing = [f for f in model.features if not math.isfinite(features.get(f, math.nan))]
    if missing:
        notes.append(f"not measured in this report: {', '.join(missing)} (run `shiftkit diagnose --fingerprint`); "
                     "the ranking leans on the other features and the pooled evidence")
    if not any(s.start == start for s in scenarios):
        notes.append(f"no measured scenario starts from {'the source model' if start == 'source' else 'ImageNet'}: "
                     "the ranking borrows from the other starting point")
    if arch != EVIDENCE_PROTOCOL["arch"]:
        notes.append(f"the scenario evidence was measured with {EVIDENCE_PROTOCOL['arch']} at "
                     f"{EVIDENCE_PROTOCOL['image_size']} px; {arch} may differ")
    if not model.features:
        notes.append("no fingerprint feature improved the leave-one-family-out regret on the evidence: the ranking "
                     "is the best single strategy's over all measured scenarios")
    notes += [n for n in shift_notes(facts) if not n.startswith("covariate shift not measured")]
    best = advice[0]["strategy"] if advice else None
    return {"arch": arch, "best": best, "start": start, "facts": facts.to_dict(),
            "features": {f: (v if math.isfinite(v) else None) for f, v in features.items()},
            "ranking": advice[:top] if top else advice, "notes": notes, "unit": UNIT,
            "model": (f"nearest measured scenarios ({len(model.scenarios)} scenarios, "
                      f"{len({s.family for s in model.scenarios})} families; features: "
                      f"{', '.join(model.features) or 'none'}; bandwidth "
                      f"{'inf' if math.isinf(model.bandwidth) else f'{model.bandwidth:g}'})"),
            "evidence": model.to_dict(), "feature_meanings": {f: FEATURES[f] for f in model.features}}
