"""The site matrix: covariate shift between every pair of sites, and between each site and all the others pooled.

Works on embeddings already computed (one row per image, one site name per row), so that an audit of tens of sites
embeds every image once and slices per site; nothing here runs a network. Per pair of sites:

- **MMD²** (RBF, median heuristic, permutation test) and **sliced Wasserstein** (permutation test) on the first
  ``pca`` principal components of the pooled embeddings. The PCA is fitted *once*, on all sites pooled and without
  site labels, so the permutation tests stay exact (as in ``diagnose``);
- the **domain classifier** (cross-validated logistic regression on the full embedding): AUC, error ε and the proxy
  A-distance PAD = 2(1 - 2ε), exact binomial p-value.

Multiple comparisons: for each measure the p-values of all pairs form one family and are adjusted with
:func:`~shiftkit.shift.corrections.adjust_p_values` (Benjamini-Hochberg by default; Holm or Bonferroni on request);
the leave-one-site-out tests form a second family per measure. A pair (or a site) is **shifted** when any measure's
adjusted p-value is below alpha / (number of measures): a Bonferroni step across the measures on top of the
correction across pairs, so that one cell is not flagged three times as often as one test would be.

Sites are ranked by how far they sit from the rest: the leave-one-site-out PAD (site vs all others pooled, classes
balanced), ties broken by the mean pairwise PAD.

The measures are covariate tests of :mod:`shiftkit.shift.registry` (those registered with ``defaults=("audit", ...)``
unless named): each reads the array its entry names (``reduced``: the PCA components; ``full``: the full embedding or
``classifier_inputs``; ``outputs``: the PCA components, an audit has no classifier) and its entry says which of its
``details`` go into audit.json.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from shiftkit.shift.corrections import DESCRIPTIONS, adjust_p_values
from shiftkit.errors import ConfigError, DataError
from shiftkit.shift import registry
from shiftkit.shift.stats import TestResult

MIN_PER_SITE = 4  # below this a two-sample test (and 2+ folds per class) means nothing


def __getattr__(name: str) -> Any:
    """``MEASURES``: the tests an audit runs by default, read from the registry when asked (reading it imports the
    tests, and with them torch, which a features-table audit does not need)."""
    if name == "MEASURES":
        return registry.default_tests("audit")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Comparison:
    """One two-sample comparison: two sites (or a site and the rest), each measure's test, adjusted p-values."""

    a: str
    b: str
    n_a: int
    n_b: int
    tests: dict[str, TestResult]
    p_adjusted: dict[str, float]
    shifted: bool

    @property
    def pad(self) -> float:
        return float(self.tests["domain_classifier"].details["pad"]) if "domain_classifier" in self.tests else float("nan")

    def value(self, measure: str, key: str) -> Any:
        """One value of one measure: ``statistic``, ``p_value``, ``p_adjusted`` or a key of the test's details."""
        if key == "p_adjusted":
            return self.p_adjusted[measure]
        test = self.tests[measure]
        return getattr(test, key) if key in ("statistic", "p_value") else test.details[key]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"a": self.a, "b": self.b, "n_a": self.n_a, "n_b": self.n_b}
        for name, test in self.tests.items():
            entry = {"statistic": test.statistic, "p_value": test.p_value, "p_adjusted": self.p_adjusted[name],
                     "permutations": test.permutations, "seed": test.seed}
            summary = registry.find(name).summary if registry.find(name) is not None else ()
            entry.update({k: test.details[k] for k in summary if k in test.details})
            out[name] = entry
        out["shifted"] = self.shifted
        return out


@dataclass(frozen=True)
class ShiftMatrix:
    """Pairwise and leave-one-site-out covariate shift between sites, with the sites ranked by distance."""

    sites: tuple[str, ...]
    counts: dict[str, int]
    pairs: tuple[Comparison, ...]
    leave_one_out: tuple[Comparison, ...]
    ranking: tuple[dict, ...]
    measures: tuple[str, ...]
    correction: str
    alpha: float
    settings: dict = field(default_factory=dict)

    def pair(self, a: str, b: str) -> Comparison:
        for comparison in self.pairs:
            if {comparison.a, comparison.b} == {a, b}:
                return comparison
        raise KeyError(f"no pair ({a}, {b})")

    def grid(self, measure: str, value: str = "statistic") -> np.ndarray:
        """S x S symmetric array of one measure (``statistic``, ``p_value``, ``p_adjusted`` or a numeric key of its
        details such as the domain classifier's ``pad``), NaN on the diagonal, rows and columns in :attr:`sites`
        order."""
        index = {s: i for i, s in enumerate(self.sites)}
        out = np.full((len(self.sites), len(self.sites)), np.nan)
        for c in self.pairs:
            out[index[c.a], index[c.b]] = out[index[c.b], index[c.a]] = float(c.value(measure, value))
        return out

    def shifted_pairs(self) -> list[tuple[str, str]]:
        return [(c.a, c.b) for c in self.pairs if c.shifted]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``pairwise[a][b]`` (both orders) keyed by site names, ``matrices`` as S x S lists."""
        pairwise: dict[str, dict[str, Any]] = {s: {} for s in self.sites}
        for c in self.pairs:
            entry = c.to_dict()
            pairwise[c.a][c.b] = entry
            pairwise[c.b][c.a] = entry
        matrices = {}
        for measure in self.measures:
            matrices[measure] = {v: self.grid(measure, v).tolist() for v in ("statistic", "p_value", "p_adjusted")}
        for measure in self.measures:  # a heatmap of a details value (the domain classifier's PAD): its own matrix
            entry = registry.find(measure)
            if entry is not None and entry.heatmap[0] not in ("statistic", "p_value", "p_adjusted"):
                matrices[entry.heatmap[0]] = {"statistic": self.grid(measure, entry.heatmap[0]).tolist()}
        return {
            "sites": list(self.sites), "counts": self.counts, "measures": list(self.measures),
            "correction": {"method": self.correction, "description": DESCRIPTIONS[self.correction],
                           "family": "per measure, over all pairs (and separately over the leave-one-out tests)",
                           "alpha": self.alpha,
                           "shifted_rule": f"any measure's adjusted p < alpha / {len(self.measures)}"},
            "pairwise": pairwise, "matrices": matrices,
            "shifted_pairs": [list(p) for p in self.shifted_pairs()],
            "leave_one_out": {c.a: c.to_dict() for c in self.leave_one_out},
            "ranking": list(self.ranking), "settings": self.settings,
        }


def _run_tests(x: np.ndarray, y: np.ndarray, x_full: np.ndarray, y_full: np.ndarray, measures: Sequence[str],
               settings: registry.TestSettings) -> dict[str, TestResult]:
    return registry.run_tests(measures, registry.TestInputs(reduced=(x, y), full=(x_full, y_full)), settings,
                              noun="measure")


def _adjusted(raw: list[dict[str, TestResult]], measures: Sequence[str], correction: str) -> list[dict[str, float]]:
    adjusted = {m: adjust_p_values([r[m].p_value for r in raw], correction) for m in measures}
    return [{m: float(adjusted[m][i]) for m in measures} for i in range(len(raw))]


def _is_shifted(p_adjusted: dict[str, float], alpha: float) -> bool:
    threshold = alpha / max(len(p_adjusted), 1)
    return any(np.isfinite(p) and p < threshold for p in p_adjusted.values())


def shift_matrix(
    embeddings: np.ndarray,
    sites: Sequence[str],
    *,
    pca: int = 32,
    measures: Sequence[str] | None = None,
    permutations: int = 1000,
    ot_permutations: int = 200,
    ot_projections: int = 200,
    correction: str = "bh",
    alpha: float = 0.05,
    leave_one_out: bool = True,
    seed: int = 0,
    device: Any = None,
    reduced: np.ndarray | None = None,
    classifier_inputs: np.ndarray | None = None,
    on_step: Callable[[str], None] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> ShiftMatrix:
    """Covariate shift between every pair of sites (and each site vs the rest) from one embedding matrix.

    ``embeddings``: n x d, row i belongs to ``sites[i]``. ``pca``: components for MMD and OT, fitted once on all
    rows pooled (0 = use the embeddings as they are); the domain classifier sees the full embedding. Each
    comparison k uses the seed ``seed + k`` (pairs first, then leave-one-out), so results are reproducible.
    ``reduced``: the caller's own projection of ``embeddings`` (n x k, e.g. one PCA shared with a plot), used
    instead of fitting a PCA here. ``classifier_inputs``: what the domain classifier sees instead of the full
    embedding (e.g. the first 128 principal components, much faster for tens of sites and 1,000+ dimensions).
    ``measures``: registered covariate tests (default: those registered for the audit); ``options``: per test its
    own keyword arguments (``ot_permutations`` and ``ot_projections`` are OT's).
    """
    from shiftkit.features import fit_pca

    x_full = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray([str(s) for s in sites])
    if x_full.ndim != 2 or len(x_full) != len(labels):
        raise ConfigError(f"embeddings ({x_full.shape}) and sites ({len(labels)}) must have one row per image")
    if not np.all(np.isfinite(x_full)):
        raise DataError("embeddings contain NaN or inf")
    measures = registry.check_names(registry.default_tests("audit") if measures is None else measures, "measure")
    test_options = {"ot": {"permutations": ot_permutations, "projections": ot_projections}} if registry.find("ot") else {}
    for name, own in (options or {}).items():
        test_options[name] = {**test_options.get(name, {}), **own}

    def settings_for(comparison_seed: int) -> registry.TestSettings:
        return registry.TestSettings(seed=comparison_seed, permutations=permutations, device=device,
                                     options=test_options)

    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    names = tuple(dict.fromkeys(labels.tolist()))  # first-appearance order
    counts = {s: int(np.sum(labels == s)) for s in names}
    if len(names) < 2:
        raise DataError(f"an audit needs at least 2 sites, found {len(names)} ({', '.join(names)})")
    small = [s for s in names if counts[s] < MIN_PER_SITE]
    if small:
        raise DataError(f"site '{small[0]}' has {counts[small[0]]} image(s); each site needs at least {MIN_PER_SITE}")
    step = on_step or (lambda text: None)

    low = x_full
    if reduced is not None:
        low = np.asarray(reduced, dtype=np.float64)
        if low.ndim != 2 or len(low) != len(x_full):
            raise ConfigError(f"reduced ({low.shape}) must have one row per embedding ({len(x_full)})")
    elif pca:
        low = fit_pca(x_full, pca, seed).transform(x_full)
    rows = {s: np.flatnonzero(labels == s) for s in names}
    classifier_dim = None
    if classifier_inputs is not None:
        x_full = np.asarray(classifier_inputs, dtype=np.float64)
        if x_full.ndim != 2 or len(x_full) != len(labels):
            raise ConfigError(f"classifier_inputs ({x_full.shape}) must have one row per embedding ({len(labels)})")
        classifier_dim = int(x_full.shape[1])

    pair_names = list(itertools.combinations(names, 2))
    raw = []
    for k, (a, b) in enumerate(pair_names):
        step(f"pair {k + 1}/{len(pair_names)}: {a} vs {b}")
        ia, ib = rows[a], rows[b]
        raw.append(_run_tests(low[ia], low[ib], x_full[ia], x_full[ib], measures, settings_for(seed + k)))
    pairs = tuple(
        Comparison(a, b, counts[a], counts[b], tests, adj, _is_shifted(adj, alpha))
        for (a, b), tests, adj in zip(pair_names, raw, _adjusted(raw, measures, correction))
    )

    loo: tuple[Comparison, ...] = ()
    if leave_one_out and len(names) > 2:
        raw_loo = []
        for k, s in enumerate(names):
            step(f"site {k + 1}/{len(names)}: {s} vs the rest")
            inside = labels == s
            raw_loo.append(_run_tests(low[inside], low[~inside], x_full[inside], x_full[~inside], measures,
                                      settings_for(seed + len(pair_names) + k)))
        loo = tuple(
            Comparison(s, "rest", counts[s], len(labels) - counts[s], tests, adj, _is_shifted(adj, alpha))
            for s, tests, adj in zip(names, raw_loo, _adjusted(raw_loo, measures, correction))
        )
    ranking = _rank(names, pairs, loo)
    permuting = {t.name: t.permutations(settings_for(seed)) for t in map(registry.get, registry.names()) if t.permutes}
    settings = {"pca": int(low.shape[1]) if (pca or reduced is not None) else None,
                "embedding_dim": int(np.asarray(embeddings).shape[1]),
                "classifier_inputs": f"first {classifier_dim} principal components" if classifier_dim else "full embedding",
                "permutations": permuting, "ot_projections": ot_projections,
                "seed": seed,
                "min_achievable_p": {name: 1.0 / (count + 1) for name, count in permuting.items()}}
    return ShiftMatrix(names, counts, pairs, loo, ranking, tuple(measures), correction, alpha, settings)


def _rank(names: Sequence[str], pairs: Sequence[Comparison], loo: Sequence[Comparison]) -> tuple[dict, ...]:
    """Sites from farthest to closest to the rest: leave-one-out PAD, then mean pairwise PAD (then MMD²)."""
    by_site_loo = {c.a: c for c in loo}
    rows = []
    for s in names:
        mine = [c for c in pairs if s in (c.a, c.b)]
        mean_pad = float(np.nanmean([c.pad for c in mine])) if mine else float("nan")
        mmd = [c.tests["mmd"].statistic for c in mine if "mmd" in c.tests]
        loo_c = by_site_loo.get(s)
        rows.append({
            "site": s,
            "loo_pad": loo_c.pad if loo_c else None,
            "loo_shifted": loo_c.shifted if loo_c else None,
            "mean_pair_pad": mean_pad,
            "mean_pair_mmd": float(np.mean(mmd)) if mmd else None,
            "shifted_pairs": sum(c.shifted for c in mine),
        })

    def key(row: dict) -> tuple:
        first = row["loo_pad"] if row["loo_pad"] is not None and np.isfinite(row["loo_pad"]) else row["mean_pair_pad"]
        return (-np.nan_to_num(first, nan=-np.inf), -np.nan_to_num(row["mean_pair_pad"], nan=-np.inf),
                -(row["mean_pair_mmd"] or 0.0))

    rows.sort(key=key)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return tuple(rows)
