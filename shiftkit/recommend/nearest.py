"""The measured-evidence recommender: rank the strategies by what won in the most similar measured scenarios.

A kernel-weighted nearest-scenario model over :mod:`shiftkit.recommend.scenario_evidence`, small enough to check by
hand:

1. Each scenario is a point in a few standardised :data:`~shiftkit.recommend.scenario_evidence.FEATURES` (mean 0,
   sd 1 over the scenarios it is fitted to). The distance is the root *mean* square difference over the features
   both sides know, so an unknown feature neither shrinks nor grows it.
2. A scenario's weight is ``exp(-d² / 2h²)``; ``h = inf`` weighs every scenario the same (the "best single strategy"
   baseline).
3. A strategy's expected gain over ``ft`` (percent, as the paper reports) is the weighted mean of its gains in the
   evidence, shrunk toward its unweighted mean with a pseudo-weight of :data:`SHRINKAGE`; its uncertainty is the
   weighted standard deviation of those gains (how much the outcome varied between similar scenarios).
4. Which features (at most :data:`MAX_FEATURES`, chosen greedily) and which bandwidth (from :data:`BANDWIDTHS`) are
   chosen by an inner leave-one-family-out over the scenarios being fitted, minimising the mean regret of the first
   strategy. Starting from no feature at all (the best single strategy), a feature joins only when it lowers that
   regret by more than one standard error of the per-scenario differences: the kernel must earn its place on
   families it was not fitted to, by more than the noise of a small table. Below :data:`MIN_FAMILIES` families or
   :data:`MIN_SCENARIOS` scenarios nothing is selected (the best of 50 trials on a handful of scenarios is noise).
5. The reasons name the most similar scenarios, how many of them each strategy won (within one standard error of
   the best), and the chosen features' values: yours against theirs.

Written here rather than taken from scikit-learn's ``KNeighborsRegressor`` because the missing-feature distance,
the shrinkage and the family-wise selection are the point, and they are a few lines of numpy.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from shiftkit.errors import DataError
from shiftkit.recommend.scenario_evidence import FEATURES, STRATEGIES, LABELS, Scenario, value_text

BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, math.inf)
SHRINKAGE = 0.5
MAX_FEATURES = 3
MIN_FAMILIES, MIN_SCENARIOS = 4, 12  # below these, the best of 50 (feature, bandwidth) trials is mostly noise
NEIGHBOURS = 8  # scenarios the reasons name and count
DEFAULT_FEATURES = tuple(FEATURES)


def _known(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _matrix(scenarios: Sequence[Scenario], features: Sequence[str]) -> np.ndarray:
    return np.array([[s.features.get(f, math.nan) for f in features] for s in scenarios], dtype=float).reshape(
        len(scenarios), len(features))


def _gains(scenarios: Sequence[Scenario]) -> np.ndarray:
    return np.array([[s.gain(k) for k in STRATEGIES] for s in scenarios], dtype=float)


def _regrets(scenarios: Sequence[Scenario]) -> np.ndarray:
    return np.array([[s.regret(k) for k in STRATEGIES] for s in scenarios], dtype=float)


@dataclass(frozen=True)
class NearestModel:
    """The fitted recommender: the evidence, the chosen features, their standardisation and the bandwidth."""

    scenarios: tuple[Scenario, ...] = field(hash=False)
    features: tuple[str, ...]
    bandwidth: float
    shrinkage: float = SHRINKAGE
    selection: list[dict] = field(default_factory=list, hash=False)  # the inner search, step by step

    def __post_init__(self) -> None:
        raw = _matrix(self.scenarios, self.features)
        with warnings.catch_warnings():  # a feature no scenario measured: its centre is NaN, then 0 below
            warnings.simplefilter("ignore", RuntimeWarning)
            center = np.nanmean(raw, axis=0) if raw.size else np.zeros(0)
            scale = (np.nanstd(raw, axis=0, ddof=1) if len(self.scenarios) > 1 and raw.size
                     else np.ones(len(self.features)))
        scale = np.where(np.isfinite(scale) & (scale > 1e-12), scale, 1.0)
        object.__setattr__(self, "_center", np.nan_to_num(center))
        object.__setattr__(self, "_scale", scale)
        object.__setattr__(self, "_z", (raw - self._center) / scale)
        object.__setattr__(self, "_g", _gains(self.scenarios))

    # -- the model ---------------------------------------------------------------------------------------------
    def distances(self, queries: np.ndarray) -> np.ndarray:
        """(queries × scenarios) root mean square standardised difference over the features both know."""
        if not self.features:
            return np.zeros((len(queries), len(self.scenarios)))
        zq = (queries - self._center) / self._scale
        diff = zq[:, None, :] - self._z[None, :, :]
        known = np.isfinite(diff)
        count = known.sum(axis=2)
        total = np.where(known, diff ** 2, 0.0).sum(axis=2)
        return np.where(count > 0, np.sqrt(total / np.maximum(count, 1)), np.inf)

    def _predict(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = self.distances(queries)
        w = np.ones_like(d) if math.isinf(self.bandwidth) else np.exp(-0.5 * (d / self.bandwidth) ** 2)
        pooled = self._g.mean(axis=0)
        total = w.sum(axis=1, keepdims=True) + self.shrinkage
        mean = (w @ self._g + self.shrinkage * pooled) / total
        spread = (np.einsum("qn,qns->qs", w, (self._g[None, :, :] - mean[:, None, :]) ** 2)
                  + self.shrinkage * (pooled - mean) ** 2) / total
        return mean, np.sqrt(spread)

    def _query(self, features: dict[str, float]) -> np.ndarray:
        return np.array([[features.get(f, math.nan) if _known(features.get(f)) else math.nan
                          for f in self.features]], dtype=float).reshape(1, len(self.features))

    def expected(self, features: dict[str, float]) -> dict[str, tuple[float, float]]:
        """strategy -> (expected gain over ft in percent, uncertainty)."""
        mean, spread = self._predict(self._query(features))
        return {s: (float(mean[0, i]), float(spread[0, i])) for i, s in enumerate(STRATEGIES)}

    def rank(self, features: dict[str, float]) -> list[str]:
        expected = self.expected(features)
        return sorted(STRATEGIES, key=lambda s: (-expected[s][0], STRATEGIES.index(s)))

    def neighbours(self, features: dict[str, float], k: int = NEIGHBOURS) -> list[tuple[Scenario, float]]:
        """The k most similar scenarios with their distances, nearest first; none when no chosen feature is known
        on both sides (then no scenario is nearer than another)."""
        d = self.distances(self._query(features))[0]
        order = sorted((i for i in range(len(self.scenarios)) if np.isfinite(d[i])),
                       key=lambda i: (d[i], self.scenarios[i].name))
        return [(self.scenarios[i], float(d[i])) for i in order[:k]]

    def advise(self, features: dict[str, float]) -> list[dict]:
        """The ranking with expected gains, uncertainties and checkable reasons, best first."""
        expected = self.expected(features)
        near = self.neighbours(features) if self.features else []
        which = "most similar measured scenarios"
        if not near:  # no feature to compare by: every scenario counts alike
            near, which = [(s, 0.0) for s in self.scenarios], "measured scenarios"
        ranking = self.rank(features)
        resemblance = self._resemblance(features, [s for s, _ in near])
        advice = []
        for strategy in ranking:
            won = [s.name for s, _ in near if strategy in s.winners()]
            reasons = [f"won (best, or within one standard error of it) in {len(won)} of the {len(near)} {which}"
                       + (f" (e.g. {', '.join(won[:2])})" if won else "")]
            if strategy == ranking[0] and resemblance:
                reasons.append(f"yours: {resemblance}")
            mean, spread = expected[strategy]
            advice.append({"strategy": strategy, "expected_gain": mean, "uncertainty": spread, "reasons": reasons,
                           "won_in": len(won), "neighbours": len(near)})
        return advice

    def _resemblance(self, features: dict[str, float], near: Sequence[Scenario]) -> str:
        """The chosen features: yours against the neighbours' mean."""
        parts = []
        for f in self.features:
            values = [s.features[f] for s in near if _known(s.features.get(f))]
            if values and _known(features.get(f)):
                parts.append(f"{LABELS[f]} {value_text(f, features[f])} (theirs {value_text(f, sum(values) / len(values))})")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"model": "nearest measured scenarios", "scenarios": len(self.scenarios),
                "families": sorted({s.family for s in self.scenarios}), "features": list(self.features),
                "bandwidth": None if math.isinf(self.bandwidth) else self.bandwidth, "shrinkage": self.shrinkage,
                "selection": self.selection}


# -- fitting ---------------------------------------------------------------------------------------------------
def family_splits(scenarios: Sequence[Scenario]) -> list[tuple[str, list[Scenario], list[Scenario]]]:
    """(held-out family, training scenarios, held-out scenarios) per family, each checked for leaks."""
    splits = []
    for family in sorted({s.family for s in scenarios}):
        train = [s for s in scenarios if s.family != family]
        held = [s for s in scenarios if s.family == family]
        check_no_leak(train, held)
        splits.append((family, train, held))
    return splits


def check_no_leak(train: Sequence[Scenario], held_out: Sequence[Scenario]) -> None:
    """Refuse a split in which a held-out scenario, or its target data (``variant``: the same images with the same
    shift), also sits in the training set. The same base images under another shift (blurred here, relabelled
    there) are another variant and pass: families are held out by the kind of shift."""
    names = {s.name for s in train}
    variants = {s.variant: s for s in train}
    for s in held_out:
        if s.name in names:
            raise DataError(f"leak: held-out scenario {s.name} is also in the training set")
        if s.variant in variants:
            other = variants[s.variant]
            raise DataError(f"leak: held-out scenario {s.name} ({s.family}) shares its target data with training "
                            f"scenario {other.name} ({other.family})")


def inner_regrets(scenarios: Sequence[Scenario], features: Sequence[str], bandwidth: float,
                  shrinkage: float = SHRINKAGE) -> np.ndarray:
    """Per scenario, the regret (metric points) of the first-ranked strategy, leave-one-family-out within
    ``scenarios`` (in :func:`family_splits` order)."""
    regrets = []
    for _, train, held in family_splits(scenarios):
        model = NearestModel(tuple(train), tuple(features), bandwidth, shrinkage)
        mean, _ = model._predict(_matrix(held, model.features))
        first = mean.argmax(axis=1)  # ties: the first strategy in STRATEGIES order, as rank() does
        regrets += list(_regrets(held)[np.arange(len(held)), first])
    return np.array(regrets)


def _clear_improvement(current: np.ndarray, candidate: np.ndarray) -> bool:
    """The one-standard-error rule: the candidate's mean regret is lower by more than the standard error of the
    per-scenario differences (a feature must earn its place by more than the noise of a small evidence table)."""
    diff = current - candidate
    se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else math.inf
    return float(diff.mean()) > se


def fit(scenarios: Sequence[Scenario], candidates: Sequence[str] = DEFAULT_FEATURES,
        bandwidth: float | None = None, shrinkage: float = SHRINKAGE, max_features: int = MAX_FEATURES,
        select: bool = True) -> NearestModel:
    """Fit to the given scenarios only. ``select``: choose up to ``max_features`` of ``candidates`` and the bandwidth
    by an inner leave-one-family-out among these scenarios; otherwise use ``candidates`` and ``bandwidth`` as given."""
    if not scenarios:
        raise DataError("the recommender needs at least one measured scenario to fit")
    unknown = [f for f in candidates if f not in FEATURES]
    if unknown:
        raise DataError(f"unknown recommender feature(s): {', '.join(unknown)}")
    if not select:
        return NearestModel(tuple(scenarios), tuple(candidates), math.inf if bandwidth is None else bandwidth,
                            shrinkage)
    if len({s.family for s in scenarios}) < MIN_FAMILIES or len(scenarios) < MIN_SCENARIOS:
        return NearestModel(tuple(scenarios), (), math.inf, shrinkage)  # too little to choose features from
    bandwidths = BANDWIDTHS if bandwidth is None else (bandwidth,)
    chosen: tuple[str, ...] = ()
    current, current_h = inner_regrets(scenarios, (), math.inf, shrinkage), math.inf
    steps = [{"features": [], "bandwidth": None, "regret": float(current.mean())}]
    while len(chosen) < max_features:
        trials = [(float(r.mean()), -h, f, h, r) for f in candidates if f not in chosen for h in bandwidths
                  for r in [inner_regrets(scenarios, chosen + (f,), h, shrinkage)]]
        if not trials:
            break
        _, _, feature, h, regrets = min(trials, key=lambda t: t[:3])
        if not _clear_improvement(current, regrets):
            break
        chosen, current, current_h = chosen + (feature,), regrets, h
        steps.append({"features": list(chosen), "bandwidth": None if math.isinf(h) else h,
                      "regret": float(regrets.mean())})
    return NearestModel(tuple(scenarios), chosen, current_h, shrinkage, steps)
