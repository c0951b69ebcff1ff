"""The features-table audit's report: ``audit.json`` (the result's ``to_dict``), ``audit.html`` with before/after
plots (site effect per feature, site classifier, PCA by site, biological effect, leave-one-site-out AUC, ICC bands)
and the terminal summary. ``shiftkit.audit.report`` re-exports the three entry points."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shiftkit.audit.features_table import FeaturesAudit
from shiftkit.audit.fold_harmonize import TITLES
from shiftkit.report.html import Page
from shiftkit.report.plots import figure_png

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"none": "#cf222e", "combat": "#1f77b4", "covbat": "#2ca02c", "site_adjusted": "#8250df"}
AFTER = {"combat": "after ComBat", "covbat": "after CovBat", "site_adjusted": "within sites (raw features)"}
NAMES = {**TITLES, "site_adjusted": "raw, site-adjusted"}


def _methods(audit: FeaturesAudit) -> list[str]:
    return ["none"] + [m for m, s in (("combat", audit.after), ("covbat", audit.after_covbat)) if s is not None]


def _effects(audit: FeaturesAudit, method: str):  # noqa: ANN202
    return {"none": audit.before, "combat": audit.after, "covbat": audit.after_covbat}[method]


def _fmt(value, digits: int = 3) -> str:  # noqa: ANN001
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(entry: dict | None, key: str) -> str:
    """'0.512 [0.48, 0.55]' from a scores dict."""
    if not entry or entry.get(key) is None:
        return "—"
    ci = entry.get(f"{key}_ci")
    return _fmt(entry[key]) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


# ----------------------------------------------------------------------------------------------------------- plots


def effect_sizes_png(audit: FeaturesAudit, top: int = 40) -> bytes:
    """epsilon² per feature before and after ComBat (and CovBat), the most site-affected features first."""
    before = audit.before.features
    order = np.argsort([-f["epsilon2"] for f in before], kind="stable")[:top]
    methods = _methods(audit)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(order) * len(methods) / 2 + 2), 4))
    x = np.arange(len(order))
    for k, method in enumerate(methods):
        rows = _effects(audit, method).features
        ax.bar(x + (k - (len(methods) - 1) / 2) * width, [rows[i]["epsilon2"] for i in order], width,
               label="before" if method == "none" else AFTER[method], color=COLOURS[method])
    ax.axhline(audit.before.dominance, color="grey", ls="--", lw=1, label=f"dominance ({audit.before.dominance})")
    ax.set_xticks(x, [before[i]["feature"] for i in order], rotation=90, fontsize=6)
    ax.set_ylabel("epsilon² (site effect)")
    ax.legend(fontsize=8)
    return figure_png(fig)


def site_classifier_png(check: dict) -> bytes:
    """Balanced accuracy of the linear and quadratic site classifiers per harmonizer (in-fold, with intervals;
    hollow markers: the all-rows shortcut), chance dashed."""
    methods = [m for m, e in check["methods"].items() if "in_fold" in e]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, kind in zip(axes, ("linear", "quadratic")):
        for k, method in enumerate(methods):
            entry = check["methods"][method]
            score = entry["in_fold"][kind]
            ci = score.get("balanced_accuracy_ci")
            err = None if not ci else [[score["balanced_accuracy"] - ci[0]], [ci[1] - score["balanced_accuracy"]]]
            ax.bar(k, score["balanced_accuracy"], 0.6, yerr=err, capsize=4, color=COLOURS[method])
            shortcut = entry.get("all_rows", {}).get(kind)
            if shortcut:
                ax.scatter(k, shortcut["balanced_accuracy"], marker="o", facecolors="none", edgecolors="black",
                           zorder=3, label="all-rows fit" if k == 1 else None)
        ax.axhline(check["chance"]["balanced_accuracy"], color="grey", ls="--", lw=1, label="chance")
        ax.set_xticks(range(len(methods)), [TITLES[m] for m in methods], fontsize=8)
        ax.set_title(f"{kind} site classifier (in-fold)", fontsize=9)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("balanced accuracy")
    axes[1].legend(fontsize=7)
    return figure_png(fig)


def projection_png(audit: FeaturesAudit) -> bytes:
    """Pooled PCA of the standardized features by site: before, after ComBat, after CovBat (all-rows fits)."""
    from shiftkit.audit.report import site_scatter_png  # lazy: report imports this module

    panels = [("before" if m == "none" else AFTER[m], audit.projections[m]) for m in _methods(audit)
              if m in audit.projections]
    return site_scatter_png(panels, np.asarray(audit.table.sites), audit.settings.get("seed", 0))


def biology_png(biology: dict) -> bytes:
    """Each feature's effect after the harmonizer against before (identity line dashed)."""
    methods = [m for m in biology["summary"] if m != "none"]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 4), squeeze=False)
    before = np.array([row["none"]["effect"] for row in biology["features"]])
    for ax, method in zip(axes[0], methods):
        after = np.array([row[method]["effect"] for row in biology["features"]])
        significant = np.array([row["none"]["significant"] for row in biology["features"]])
        ax.scatter(before[~significant], after[~significant], s=8, color="grey", label="not significant before")
        ax.scatter(before[significant], after[significant], s=8, color=COLOURS[method], label="significant before")
        lo, hi = float(min(before.min(), after.min())), float(max(before.max(), after.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"{biology['measure']} before (raw)")
        ax.set_ylabel(AFTER[method])
        ax.set_title(f"effect of {biology['variable']}: {AFTER[method]}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


def downstream_png(downstream: dict) -> bytes:
    """Leave-one-site-out AUC per held-out site and pooled, per harmonizer (in-fold fits)."""
    methods = [m for m, e in downstream["methods"].items() if "in_fold" in e]
    sites = list(next(iter(downstream["methods"][m]["in_fold"]["sites"] for m in methods)))
    groups = sites + ["pooled"]
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) + 2), 3.8))
    for k, method in enumerate(methods):
        entry = downstream["methods"][method]["in_fold"]
        values = [entry["sites"][s].get("auc") for s in sites] + [entry["pooled_auc"]]
        x = np.arange(len(groups)) + (k - (len(methods) - 1) / 2) * width
        ax.bar(x, [np.nan if v is None else v for v in values], width, color=COLOURS[method], label=TITLES[method])
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUC (held-out site)")
    ax.set_title(f"{downstream['task']['positive']} vs {', '.join(downstream['task']['negative'])}: "
                 "leave-one-site-out", fontsize=9)
    ax.legend(fontsize=8)
    return figure_png(fig)


def icc_png(retest: dict) -> bytes:
    """Features per Koo & Li band of ICC(3,1), per harmonizer."""
    from shiftkit.audit.repeatability import BAND_NAMES

    methods = list(retest["summary"])
    colours = {"poor": "#cf222e", "moderate": "#d4a72c", "good": "#7fbf7f", "excellent": "#1a7f37"}
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    bottom = np.zeros(len(methods))
    for name in BAND_NAMES:
        counts = np.array([retest["summary"][m]["icc"]["bands"][name] for m in methods], dtype=float)
        ax.bar(range(len(methods)), counts, 0.6, bottom=bottom, color=colours[name], label=name)
        bottom += counts
    ax.set_xticks(range(len(methods)), [TITLES[m] for m in methods], fontsize=8)
    ax.set_ylabel("features")
    ax.set_title("test-retest ICC(3,1) bands (Koo & Li 2016)", fontsize=9)
    ax.legend(fontsize=7)
    return figure_png(fig)


def features_figures(audit: FeaturesAudit) -> dict[str, bytes]:
    figures = {"effect_sizes": effect_sizes_png(audit)}
    checks = audit.checks
    if checks.get("site_classifier") and any("in_fold" in e for e in checks["site_classifier"]["methods"].values()):
        figures["site_classifier"] = site_classifier_png(checks["site_classifier"])
    if audit.projections:
        figures["projection"] = projection_png(audit)
    if checks.get("biology") and len(checks["biology"]["summary"]) > 1:
        figures["biology"] = biology_png(checks["biology"])
    downstream = checks.get("downstream")
    if downstream and any("in_fold" in e for e in downstream["methods"].values()):
        figures["downstream"] = downstream_png(downstream)
    if checks.get("test_retest") and "summary" in checks["test_retest"]:
        figures["icc"] = icc_png(checks["test_retest"])
    return figures


# ------------------------------------------------------------------------------------------------ summary rows


def summary_rows(audit: FeaturesAudit) -> tuple[list[str], list[list[str]]]:
    """(column titles, rows) of the before/after comparison shared by the HTML page and the terminal."""
    methods = _methods(audit)
    n = len(audit.table.names)
    header = [""] + ["before" if m == "none" else AFTER[m] for m in methods]
    correction = audit.settings["correction"]
    rows = [[f"site-affected features ({correction} p < {audit.settings['alpha']})"]
            + [f"{len(_effects(audit, m).affected)} / {n} ({len(_effects(audit, m).affected) / n:.0%})"
               for m in methods],
            [f"site-dominated (also ε² ≥ {audit.before.dominance})"]
            + [str(len(_effects(audit, m).dominated)) for m in methods],
            ["median ε² (site effect size)"]
            + [_fmt(float(np.median([f["epsilon2"] for f in _effects(audit, m).features]))) for m in methods]]
    check = audit.checks.get("site_classifier")
    if check:
        chance = check["chance"]["balanced_accuracy"]
        for kind in ("linear", "quadratic"):
            cells, auc_cells = [], []
            for m in methods:
                entry = check["methods"].get(m, {})
                score = entry.get("in_fold", {}).get(kind)
                cells.append(_ci(score, "balanced_accuracy") if score else entry.get("not_measured", "—"))
                auc_cells.append(_ci(score, "auc") if score else "—")
            rows.append([f"site classifier bal. accuracy, {kind} (chance {chance:.2f})"] + cells)
            rows.append([f"site classifier AUC, {kind} (chance 0.5)"] + auc_cells)
        shortcut = []
        for m in methods:
            entry = check["methods"].get(m, {}).get("all_rows", {}).get("linear")
            shortcut.append(_fmt(entry["balanced_accuracy"]) if entry else "—")
        rows.append(["… linear, harmonizer fitted on all rows (leaky)"] + shortcut)
    else:  # checks off: the classifier of the per-feature analysis
        rows.append(["site classifier balanced accuracy"]
                    + [_fmt(_effects(audit, m).classifier.get("balanced_accuracy")) for m in methods])
        rows.append(["chance"] + [_fmt(audit.before.classifier.get("chance")) for _ in methods])
    biology = audit.checks.get("biology")
    if biology:
        summary = biology["summary"]
        rows.append([f"features with a significant {biology['variable']} effect ({biology['measure']})"]
                    + [str(summary[m]["n_significant"]) if m in summary else "—" for m in methods])
        within = summary.get("site_adjusted")
        if within:
            rows.append([f"… within-site effect kept (of {within['n_significant']} features with one)"]
                        + ["—" if m == "none" or m not in summary else
                           _fmt(summary[m]["versus_site_adjusted"]["share_kept"], 2) for m in methods])
        rows.append(["… raw effect kept / Spearman with raw effect"]
                    + ["—" if m == "none" or m not in summary else
                       f"{_fmt(summary[m].get('share_kept'), 2)} / {_fmt(summary[m].get('spearman_with_before'), 2)}"
                       for m in methods])
    downstream = audit.checks.get("downstream")
    if downstream:
        cells, means = [], []
        for m in methods:
            entry = downstream["methods"].get(m, {})
            cells.append(_ci(entry["in_fold"], "pooled_auc") if "in_fold" in entry else entry.get("refused", "—"))
            means.append(_fmt(entry["in_fold"]["mean_site_auc"]) if "in_fold" in entry else "—")
        task = downstream["task"]
        rows.append([f"LOSO AUC pooled, {task['positive']} vs {', '.join(task['negative'])}"] + cells)
        rows.append(["LOSO AUC, mean of the held-out sites"] + means)
    retest = audit.checks.get("test_retest")
    if retest and "summary" in retest:
        rows.append([f"ICC(3,1) median ({retest['n_patients']} patients x {retest['repeats']})"]
                    + [_fmt(retest["summary"][m]["icc"]["median"]) if m in retest["summary"] else "—"
                       for m in methods])
        rows.append(["features with ICC good or excellent (≥ 0.75)"]
                    + [str(retest["summary"][m]["icc"]["bands"]["good"]
                           + retest["summary"][m]["icc"]["bands"]["excellent"]) if m in retest["summary"] else "—"
                       for m in methods])
    return header, rows


def leakage_lines(audit: FeaturesAudit) -> list[str]:
    """One line per leakage warning and per flagged all-rows shortcut."""
    lines = [f"warning: {message}" for message in audit.warnings]
    check = audit.checks.get("site_classifier") or {}
    for method, entry in check.get("methods", {}).items():
        for kind, flag in entry.get("leakage", {}).items():
            if flag.get("flagged"):
                lines.append(f"leakage check: {TITLES[method]} fitted on all rows makes the {kind} site classifier "
                             f"look {flag['difference']:.3f} weaker (balanced accuracy) than fitted in the training "
                             "folds: report the in-fold figure")
    downstream = audit.checks.get("downstream") or {}
    for method, flag in downstream.get("leakage", {}).items():
        if flag.get("flagged"):
            word = "optimistic" if flag["optimistic"] else "pessimistic"
            lines.append(f"leakage check: {TITLES[method]} fitted on all rows (held-out sites included) gives a "
                         "leave-one-site-out AUC "
                         f"{flag['difference']:+.3f} from the in-fold fit ({word}; the all-rows harmonizer saw the "
                         "held-out site" + (" and, as a covariate, its labels" if audit.settings.get("label_column")
                                            and audit.settings.get("preserve_label") else "") + ")")
    return lines


# ----------------------------------------------------------------------------------------------------------- HTML


def features_html(audit: FeaturesAudit, figures: dict[str, bytes] | bytes) -> str:
    if isinstance(figures, bytes):  # the earlier signature: the effect-size figure only
        figures = {"effect_sizes": figures}
    page = Page(f"Site effects in {audit.table.path}")
    before, after = audit.before, audit.after
    page.heading("Summary")
    names, counts = np.unique(audit.table.sites, return_counts=True)
    page.paragraph(f"{len(audit.table.sites)} rows from {len(names)} sites ("
                   + ", ".join(f"{s}: {c}" for s, c in zip(names, counts)) + f"), {len(audit.table.names)} features; "
                   f"{len(audit.table.ignored)} diagnostics/text columns ignored.")
    for site, count in audit.table.dropped_sites.items():
        page.paragraph(f"site '{site}' left out: {count} row(s), fewer than the minimum per site.", "note")
    header, rows = summary_rows(audit)
    page.table(header, rows)
    if after is None:
        page.paragraph("ComBat: not requested (--no-combat).", "note")
    else:
        page.paragraph(f"ComBat preserved the covariates: {', '.join(audit.combat['preserved_covariates']) or 'none'}"
                       + (f". CovBat: ComBat, then ComBat on the first {audit.covbat['n_components']} principal "
                          f"components of the residuals ({audit.covbat['explained']:.0%} of their variance)."
                          if audit.covbat else "."), "note")
    lines = leakage_lines(audit)
    if lines:
        page.heading("Leakage")
        for line in lines:
            page.paragraph(line)
    page.heading("Site effect per feature")
    page.paragraph("Kruskal-Wallis across sites per feature, Benjamini-Hochberg over features; epsilon² = H/(n-1). "
                   "The harmonizers here are fitted on all rows: this describes the table, it does not estimate "
                   "what a model would see.", "note")
    page.image(figures["effect_sizes"], "effect sizes")
    if "projection" in figures:
        page.image(figures["projection"], "PCA by site before and after")
    correction = audit.settings["correction"]
    header = (["feature", "H", "p", f"{correction}-adjusted p", "epsilon²", "dominated"]
              + (["adjusted p after", "epsilon² after"] if after else [])
              + (["adjusted p after CovBat", "epsilon² after CovBat"] if audit.after_covbat else []))
    order = np.argsort([f["p_value"] for f in before.features], kind="stable")
    table_rows = []
    for i in order:
        f = before.features[i]
        row = [f["feature"], f["H"], f["p_value"], f["p_adjusted"], f["epsilon2"], "yes" if f["dominated"] else ""]
        if after:
            row += [after.features[i]["p_adjusted"], after.features[i]["epsilon2"]]
        if audit.after_covbat:
            row += [audit.after_covbat.features[i]["p_adjusted"], audit.after_covbat.features[i]["epsilon2"]]
        table_rows.append(row)
    _site_classifier_section(page, audit, figures)
    _biology_section(page, audit, figures)
    _downstream_section(page, audit, figures)
    _retest_section(page, audit, figures)
    page.heading("Per feature")
    page.table(header, table_rows)
    notes = audit.checks.get("notes", [])
    if notes:
        page.heading("Not measured")
        for note in notes:
            page.paragraph(note, "note")
    page.heading("Settings")
    page.table(["setting", "value"], [[k, str(v)] for k, v in audit.settings.items()]
               + [[f"seconds: {k}", v] for k, v in audit.seconds.items()])
    return page.render()


def _site_classifier_section(page: Page, audit: FeaturesAudit, figures: dict) -> None:
    check = audit.checks.get("site_classifier")
    if not check:
        return
    page.heading("Site classifier")
    page.paragraph(f"Can the site be told from the features? {check['split']}; each harmonizer is fitted on the "
                   "training folds only and applied to the test fold. Linear: "
                   f"{check['classifiers']['linear']}. Quadratic: {check['classifiers']['quadratic']}. Chance: "
                   f"balanced accuracy {check['chance']['balanced_accuracy']:.3f} (1 / {len(check['sites'])} sites), "
                   "AUC 0.5 (one-vs-rest macro). Intervals: 95 % bootstrap of the out-of-fold predictions. "
                   "All-rows: the harmonizer fitted once on every row, the shortcut that lets test rows shape their "
                   "own correction.", "note")
    if "site_classifier" in figures:
        page.image(figures["site_classifier"], "site classifier")
    rows = []
    for method, entry in check["methods"].items():
        if "in_fold" not in entry:
            rows.append([NAMES[method], entry.get("not_measured"), None, None, None, None])
            continue
        for kind in ("linear", "quadratic"):
            score = entry["in_fold"][kind]
            shortcut = entry.get("all_rows", {}).get(kind)
            flag = entry.get("leakage", {}).get(kind, {})
            rows.append([TITLES[method], kind, _ci(score, "balanced_accuracy"), _ci(score, "auc"),
                         "yes" if score.get("above_chance") else "no",
                         _fmt(shortcut["balanced_accuracy"]) + (" (flagged)" if flag.get("flagged") else "")
                         if shortcut else "—"])
    page.table(["harmonizer", "classifier", "balanced accuracy [95% CI]", "AUC [95% CI]", "above chance",
                "all-rows fit"], rows)


def _biology_section(page: Page, audit: FeaturesAudit, figures: dict) -> None:
    biology = audit.checks.get("biology")
    if not biology:
        return
    page.heading(f"Biological effect: {biology['variable']}")
    page.paragraph(f"{biology['measure']} per feature ({biology['description']}, {biology['n']} rows), "
                   f"{biology['correction']}-adjusted over features, before and after each harmonizer (all-rows fits)."
                   + (" The harmonizers were told to preserve this variable, so its effect is kept by construction."
                      if biology["preserved_by_harmonizer"] else ""), "note")
    if "biology" in figures:
        page.image(figures["biology"], "biological effect before and after")
    if biology.get("association_with_site") is not None:
        page.paragraph(f"Association of {biology['variable']} with the site: {biology['association_measure']} = "
                       f"{biology['association_with_site']:.2f}. When it is large, the raw effect is partly the "
                       "site's, and the reference for what a harmonizer should keep is the within-site effect "
                       f"({biology['site_adjusted_measure']}).", "note")
    rows = []
    for method, entry in biology["summary"].items():
        within = entry.get("versus_site_adjusted", {})
        rows.append([NAMES[method], entry["n_significant"], entry.get("kept"), entry.get("share_kept"),
                     entry.get("gained"), entry.get("spearman_with_before"), entry.get("median_ratio"),
                     within.get("share_kept"), within.get("spearman")])
    page.table(["effect", "significant features", "raw effect kept (same sign)", "share kept", "new",
                "Spearman with raw", "median |after| / |raw|", "share of within-site effect kept",
                "Spearman with within-site"], rows)


def _downstream_section(page: Page, audit: FeaturesAudit, figures: dict) -> None:
    downstream = audit.checks.get("downstream")
    if not downstream:
        return
    task = downstream["task"]
    page.heading("Downstream model: leave-one-site-out")
    page.paragraph(f"{task['positive']} (positive, {task['n_positive']}) vs {', '.join(task['negative'])} "
                   f"({task['n'] - task['n_positive']}); {downstream['model']}; each held-out site predicted by a "
                   "model trained on the other sites, with every harmonizer fitted on those training sites only "
                   f"({downstream['covariates_in_harmonizer']}). Unseen-site policy '{downstream['policy']}': "
                   f"{downstream['policy_text']}.", "note")
    if "downstream" in figures:
        page.image(figures["downstream"], "leave-one-site-out AUC")
    sites = None
    rows = []
    for method, entry in downstream["methods"].items():
        if "in_fold" not in entry:
            rows.append([TITLES[method], entry.get("refused")])
            continue
        fold = entry["in_fold"]
        sites = sites or list(fold["sites"])
        shortcut = entry.get("all_rows")
        rows.append([TITLES[method], _ci(fold, "pooled_auc"), fold["mean_site_auc"]]
                    + [fold["sites"][s].get("auc", fold["sites"][s].get("note")) for s in sites]
                    + [_fmt(shortcut["pooled_auc"]) if shortcut else "—"])
    page.table(["harmonizer", "pooled AUC [95% CI]", "mean site AUC"] + [f"held out: {s}" for s in sites or []]
               + ["all-rows fit, pooled AUC"], rows)
    differences = [[name, d.get("difference"), "—" if not d.get("ci") else f"[{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]"]
                   for name, d in downstream["differences"].items()]
    if differences:
        page.table(["pooled AUC difference", "value", "95% CI (paired bootstrap)"], differences)


def _retest_section(page: Page, audit: FeaturesAudit, figures: dict) -> None:
    retest = audit.checks.get("test_retest")
    if not retest:
        return
    page.heading("Test-retest repeatability")
    if "not_measured" in retest:
        page.paragraph(f"Not measured: {retest['not_measured']}.", "note")
        return
    page.paragraph(f"{retest['n_patients']} patients with {retest['repeats']} scans each (column "
                   f"'{retest['patient_column']}'). {retest['method']}. Bands: {retest['bands']}.", "note")
    if "icc" in figures:
        page.image(figures["icc"], "ICC bands")
    methods = list(retest["summary"])
    order = sorted(range(len(retest["features"])), key=lambda j: retest["features"][j]["none"]["icc"] or 0)
    rows = []
    for j in order[:60]:
        row = retest["features"][j]
        rows.append([row["feature"]] + [f"{_fmt(row[m]['icc'])} ({row[m]['icc_band']}), CCC {_fmt(row[m]['ccc'])}"
                                        for m in methods])
    page.table(["feature (least repeatable first, 60 shown)"] + [TITLES[m] for m in methods], rows)


def write_features_report(audit: FeaturesAudit, out: Path) -> None:
    from shiftkit.audit.report import write_audit_files  # report.py re-exports this module's names

    write_audit_files(audit.to_dict(), features_html(audit, features_figures(audit)), out)


def print_features_summary(audit: FeaturesAudit, console: Console) -> None:
    header, rows = summary_rows(audit)
    table = Table(title=f"Site effects in {len(audit.table.names)} features ({len(np.unique(audit.table.sites))} "
                        f"sites, {len(audit.table.sites)} rows; in-fold harmonizers, 95% CI)", box=box.SIMPLE_HEAD,
                  padding=(0, 1), pad_edge=False)
    for k, title in enumerate(header):
        table.add_column(title, justify="left" if k == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # site and feature names are user text: never rich markup
    console.print(table)
    if audit.after is None:
        console.print("ComBat: not requested (--no-combat)")
    for site, count in audit.table.dropped_sites.items():
        console.print(f"note: site '{site}' left out: {count} row(s), fewer than the minimum per site", markup=False)
    for line in leakage_lines(audit):
        console.print(line, markup=False)
    downstream = audit.checks.get("downstream")
    if downstream:
        console.print(f"unseen-site policy '{downstream['policy']}': {downstream['policy_text']}", markup=False)
    for note in audit.checks.get("notes", []):
        console.print(f"not measured: {note}", markup=False)
    seconds = audit.seconds
    if seconds:
        console.print(f"audit {seconds.get('total', 0):.1f} s (site classifier, repeatability, biology and "
                      f"leave-one-site-out checks {seconds.get('checks', 0):.1f} s)")
