"""Does the biology survive harmonization? The effect of the label (or of a named covariate) on every feature,
before and after each harmonizer, and how much of it is kept.

Per feature, by the kind of variable:

- two groups (``mel`` vs ``nv``): **Cohen's d** (positive minus negative group, pooled SD) and Welch's t-test;
- three or more groups: **eta²** (between-group share of the sum of squares) and the one-way ANOVA F-test;
- a numeric covariate (age): **Pearson r** and its t-test.

Beside the raw effect, the **site-adjusted** effect of the raw features (within-site comparison: a regression on
site + variable), which is the part of the effect a harmonizer should keep when the variable's prevalence differs
between sites (then the raw effect is partly the site's). Benjamini-Hochberg (or the audit's correction) over the
features. The summary for each harmonizer: the Spearman
correlation of the per-feature effects before vs after, the share of the features with a significant effect before
that keep it (same sign) after, the features that become significant only after, and the median ratio |after| /
|before| over the features significant before. Caution: when ComBat is told to preserve the same variable, its
effect is kept by construction (the report says so); the interesting case is a covariate ComBat was not given.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats as sps

from shiftkit.shift.corrections import adjust_p_values


def effects(x: np.ndarray, values: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(effect, p) per column of ``x``; ``kind`` is ``binary`` (values 0/1, d = 1 minus 0), ``groups`` or
    ``numeric``. A constant feature gets effect 0 and p = 1."""
    x = np.asarray(x, dtype=float)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # constant columns: scipy warns, we set them below
        if kind == "binary":
            a, b = x[values == 0], x[values == 1]
            pooled = np.sqrt(((len(a) - 1) * a.var(axis=0, ddof=1) + (len(b) - 1) * b.var(axis=0, ddof=1))
                             / (len(a) + len(b) - 2))
            effect = (b.mean(axis=0) - a.mean(axis=0)) / pooled
            p = sps.ttest_ind(b, a, axis=0, equal_var=False).pvalue
        elif kind == "groups":
            levels = np.unique(values)
            grand = x.mean(axis=0)
            between = sum((values == g).sum() * (x[values == g].mean(axis=0) - grand) ** 2 for g in levels)
            effect = between / ((x - grand) ** 2).sum(axis=0)
            p = sps.f_oneway(*(x[values == g] for g in levels), axis=0).pvalue
        elif kind == "numeric":
            result = sps.pearsonr(x, np.asarray(values, dtype=float)[:, None], axis=0)
            effect, p = np.asarray(result.statistic, dtype=float), np.asarray(result.pvalue, dtype=float)
        else:
            raise ValueError(f"unknown kind '{kind}'")
    effect, p = np.asarray(effect, dtype=float), np.asarray(p, dtype=float)
    bad = ~np.isfinite(effect) | ~np.isfinite(p)
    effect[bad], p[bad] = 0.0, 1.0
    return effect, p


MEASURES = {"binary": "Cohen's d (Welch t-test)", "groups": "eta² (one-way ANOVA)", "numeric": "Pearson r (t-test)"}


def site_adjusted_effects(x: np.ndarray, values: np.ndarray, kind: str, sites: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(effect, p) of the variable **within sites**: least squares of each feature on [site one-hot | variable],
    tested against the site-only model (nested F-test). Effect: the coefficient over the residual SD (a
    site-adjusted d) for ``binary``, the partial correlation for ``numeric``, partial eta² for ``groups``.

    This is the biology a harmonizer should keep: when the variable's prevalence differs between sites, the raw
    effect mixes it with the site effect, and ComBat is right to remove that part."""
    x = np.asarray(x, dtype=float)
    site_design = (np.asarray(sites)[:, None] == np.unique(sites)[None, :]).astype(float)
    if kind == "groups":
        levels = np.unique(values)
        variable = (np.asarray(values)[:, None] == levels[None, 1:]).astype(float)
    else:
        variable = np.asarray(values, dtype=float)[:, None]
    full = np.hstack([site_design, variable])
    rank_full, rank_site = np.linalg.matrix_rank(full), np.linalg.matrix_rank(site_design)
    df_effect, df_resid = rank_full - rank_site, len(x) - rank_full
    if df_effect < 1 or df_resid < 1:  # the variable is constant within every site: no within-site effect
        return np.zeros(x.shape[1]), np.ones(x.shape[1])
    coef, *_ = np.linalg.lstsq(full, x, rcond=None)
    ss_full = ((x - full @ coef) ** 2).sum(axis=0)
    ss_site = ((x - site_design @ np.linalg.lstsq(site_design, x, rcond=None)[0]) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        extra = np.clip(ss_site - ss_full, 0, None)
        f = (extra / df_effect) / (ss_full / df_resid)
        p = sps.f.sf(f, df_effect, df_resid)
        partial = extra / (extra + ss_full)
        if kind == "binary":
            effect = coef[-1] / np.sqrt(ss_full / df_resid)
        elif kind == "numeric":
            effect = np.sign(coef[-1]) * np.sqrt(partial)
        else:
            effect = partial
    effect, p = np.asarray(effect, dtype=float), np.asarray(p, dtype=float)
    bad = ~np.isfinite(effect) | ~np.isfinite(p)
    effect[bad], p[bad] = 0.0, 1.0
    return effect, p


def _compare(effect: np.ndarray, significant: np.ndarray, base_effect: np.ndarray, base_significant: np.ndarray,
             kind: str) -> dict:
    """What a harmonized effect keeps of a reference effect (the raw one, or the site-adjusted one)."""
    same_sign = np.sign(effect) == np.sign(base_effect) if kind != "groups" else np.ones_like(significant)
    kept = significant & base_significant & same_sign
    rho = sps.spearmanr(base_effect, effect).statistic if np.ptp(base_effect) and np.ptp(effect) else None
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(effect[base_significant]) / np.abs(base_effect[base_significant])
    return {"spearman": None if rho is None or not np.isfinite(rho) else float(rho), "kept": int(kept.sum()),
            "share_kept": float(kept.sum() / base_significant.sum()) if base_significant.any() else None,
            "gained": int((significant & ~base_significant).sum()),
            "median_ratio": float(np.median(ratio[np.isfinite(ratio)])) if np.isfinite(ratio).any() else None}


def preservation(matrices: dict[str, np.ndarray], names: list[str], values: np.ndarray, *, kind: str,
                 variable: str, sites: np.ndarray | None = None, alpha: float = 0.05, correction: str = "bh",
                 description: str = "", preserved_by_harmonizer: bool = False) -> dict:
    """Per-feature effects of ``values`` for each matrix (``none`` first) and the summary of what each
    harmonizer keeps (module docstring). With ``sites``, the raw features' **site-adjusted** effect
    (:func:`site_adjusted_effects`) is computed too (``site_adjusted``) and each harmonizer is also compared with it
    (``versus_site_adjusted``), with the variable's association with the site (Cramér's V) beside it."""
    from shiftkit.harmonize.combat.leakage import correlation_ratio, cramers_v

    computed = {}
    for method, x in matrices.items():
        effect, p = effects(x, values, kind)
        computed[method] = (effect, p, adjust_p_values(p, correction))
    references = {"none": computed["none"]}
    association = None
    if sites is not None:
        effect, p = site_adjusted_effects(matrices["none"], values, kind, sites)
        references["site_adjusted"] = (effect, p, adjust_p_values(p, correction))
        association = (correlation_ratio(np.asarray(values, dtype=float), sites) if kind == "numeric"
                       else cramers_v(values, sites))
    summary = {}
    for method, (effect, _, adjusted) in {**computed, **({"site_adjusted": references["site_adjusted"]}
                                                        if "site_adjusted" in references else {})}.items():
        significant = adjusted < alpha
        entry = {"n_significant": int(significant.sum()), "share_significant": float(significant.mean())}
        if method != "none":
            base_effect, _, base_adjusted = references["none"]
            versus = _compare(effect, significant, base_effect, base_adjusted < alpha, kind)
            entry.update({"spearman_with_before": versus["spearman"], "kept": versus["kept"],
                          "share_kept": versus["share_kept"], "gained": versus["gained"],
                          "median_ratio": versus["median_ratio"]})
            if "site_adjusted" in references and method != "site_adjusted":
                ref_effect, _, ref_adjusted = references["site_adjusted"]
                entry["versus_site_adjusted"] = _compare(effect, significant, ref_effect, ref_adjusted < alpha, kind)
        summary[method] = entry
    computed.update({k: v for k, v in references.items() if k == "site_adjusted"})
    rows = []
    for j, name in enumerate(names):
        row = {"feature": name}
        for method, (effect, p, adjusted) in computed.items():
            row[method] = {"effect": float(effect[j]), "p_value": float(p[j]), "p_adjusted": float(adjusted[j]),
                           "significant": bool(adjusted[j] < alpha)}
        rows.append(row)
    return {"variable": variable, "kind": kind, "measure": MEASURES[kind], "description": description,
            "n": int(len(values)), "alpha": alpha, "correction": correction,
            "association_with_site": association,
            "association_measure": "eta" if kind == "numeric" else "Cramér's V",
            "site_adjusted_measure": {"binary": "site-adjusted d (coefficient / residual SD; nested F-test)",
                                      "numeric": "partial r given site (nested F-test)",
                                      "groups": "partial eta² given site (nested F-test)"}[kind],
            "preserved_by_harmonizer": preserved_by_harmonizer, "summary": summary, "features": rows}
