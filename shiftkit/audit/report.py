"""The audit report: ``audit.json`` (machines), ``audit.html`` with heatmaps and plots (people), a rich summary
(terminal). One writer for image audits and one for feature-table audits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shiftkit.audit.images import ImageAudit
from shiftkit.audit.matrix import ShiftMatrix
from shiftkit.io import json_text, write_files
from shiftkit.report.html import Page
from shiftkit.report.plots import figure_png
from shiftkit.shift import registry

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MAX_SCATTER = 4000


def heatmap_key(measure: str) -> str:
    """The figure (and audit.html image) name of a measure's heatmap: the measure, or the details value it shows
    when that is not the statistic (the domain classifier's heatmap is ``pad``)."""
    value = registry.shown(measure).heatmap[0]
    return measure if value == "statistic" else value


# ------------------------------------------------------------------------------------------------------- plots


def heatmap_png(panels: list[tuple[str, np.ndarray, np.ndarray | None]], sites: list[str]) -> bytes:
    """One heatmap per panel (title, S x S values, S x S adjusted p-values or None), side by side with one colour
    scale; cells annotated with the value, a star where the adjusted p-value is below 0.05."""
    finite = [v for _, grid, _ in panels for v in grid[np.isfinite(grid)].ravel()]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if vmin == vmax:
        vmax = vmin + 1e-9
    size = max(3.2, 0.55 * len(sites) + 1.8)
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels) + 0.8, size), squeeze=False)
    image = None
    for ax, (title, grid, p_adj) in zip(axes[0], panels):
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(sites)), sites, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(sites)), sites if ax is axes[0][0] else [], fontsize=8)  # same sites on every panel
        ax.set_title(title, fontsize=9)
        if len(sites) <= 15:
            for i in range(len(sites)):
                for j in range(len(sites)):
                    if np.isfinite(grid[i, j]):
                        star = "*" if p_adj is not None and np.isfinite(p_adj[i, j]) and p_adj[i, j] < 0.05 else ""
                        bright = (grid[i, j] - vmin) / (vmax - vmin) > 0.6
                        ax.text(j, i, f"{grid[i, j]:.3g}{star}", ha="center", va="center", fontsize=7,
                                color="black" if bright else "white")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    return figure_png(fig)


def site_scatter_png(panels: list[tuple[str, np.ndarray]], sites: np.ndarray, seed: int = 0) -> bytes:
    """2-D PCA of the pooled embeddings coloured by site (a seeded subset of at most MAX_SCATTER points)."""
    rng = np.random.default_rng(seed)
    idx = np.arange(len(sites))
    if len(idx) > MAX_SCATTER:
        idx = np.sort(rng.choice(idx, MAX_SCATTER, replace=False))
    names = list(dict.fromkeys(sites.tolist()))
    colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), squeeze=False)
    for ax, (title, xy) in zip(axes[0], panels):
        for k, name in enumerate(names):
            mine = idx[sites[idx] == name]
            ax.scatter(xy[mine, 0], xy[mine, 1], s=5, alpha=0.5, color=colours(k % colours.N),
                       label=f"{name} (n={int(np.sum(sites == name))})")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title(title, fontsize=9)
    axes[0][0].legend(fontsize=7, markerscale=2)
    return figure_png(fig)


def priors_png(labels: dict) -> bytes:
    """Per site, the actual class prior (solid) and the prior estimated without the site's labels (hatched)."""
    classes = labels["classes"]
    sites = list(labels["sites"])
    x = np.arange(len(classes))
    width = 0.8 / max(len(sites), 1)
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(classes) + 2), 4))
    for k, s in enumerate(sites):
        row = labels["sites"][s]
        offset = (k - (len(sites) - 1) / 2) * width
        if "prior" in row:
            ax.bar(x + offset, [row["prior"][c] for c in classes], width * 0.9, color=colours(k % 10), label=s)
        est = row.get("estimated", {})
        if "prior" in est:
            ax.scatter(x + offset, [est["prior"][c] for c in classes], marker="_", s=120, color="black", zorder=3)
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("class prior")
    ax.set_title("Actual priors per site (bars); estimated from the other sites' classifier (black ticks)", fontsize=9)
    ax.legend(fontsize=8)
    return figure_png(fig)


# -------------------------------------------------------------------------------------------------- image audit


def pair_depth_png(fingerprint: dict) -> bytes:
    """Where the shift lands for each site pair: MMD² per block, scaled to the pair's largest (rows: pairs,
    columns: blocks from input to output), significant blocks marked."""
    pairs, blocks = fingerprint["pairs"], fingerprint["blocks"]
    grid = np.array([[row["mmd"] for row in pair["profile"]] for pair in pairs], dtype=float)
    top = np.clip(grid, 0, None).max(axis=1, keepdims=True)
    scaled = np.divide(np.clip(grid, 0, None), top, out=np.zeros_like(grid), where=top > 0)
    fig, ax = plt.subplots(figsize=(1.1 * len(blocks) + 3, 0.35 * len(pairs) + 1.6))
    image = ax.imshow(scaled, cmap="Reds", vmin=0, vmax=1, aspect="auto")
    for i, pair in enumerate(pairs):
        for j, row in enumerate(pair["profile"]):
            if row["shifted"]:
                ax.text(j, i, "*", ha="center", va="center", color="black" if scaled[i, j] < 0.6 else "white")
    ax.set_xticks(range(len(blocks)), blocks, rotation=30, ha="right")
    ax.set_yticks(range(len(pairs)), [f"{p['a']} vs {p['b']}" for p in pairs])
    ax.set_title("Shift by depth per pair (MMD² / the pair's largest; *: significant)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    return figure_png(fig)  # no tight_layout: it would draw the site names as mathtext before figure_png can stop it


def fingerprint_rows(fingerprint: dict) -> list[list]:
    """One row per pair: the peak block, each block's MMD², and what changed in the images."""
    rows = []
    for pair in fingerprint["pairs"]:
        peak = pair["peak"]
        where = f"{peak['index'] + 1} of {peak['of']} ({peak['block']})" if peak["shifted"] else "none"
        changed = ", ".join(f"{r['property'].replace('_', ' ')} (d = {r['cohens_d']:.2g})"
                            if r.get("cohens_d") is not None else r["property"] for r in pair["properties"])
        rows.append([f"{pair['a']} vs {pair['b']}", where]
                    + [f"{row['mmd']:.3g}{'*' if row['shifted'] else ''}" for row in pair["profile"]]
                    + [changed or "none significant"])
    return rows


def pair_header(matrix: ShiftMatrix) -> list[str]:
    """The pair table's columns: each measure's own (its registry entry's ``columns``), then its adjusted p, named
    after the measure (three bare "p adj" columns side by side could be read against the wrong test)."""
    columns = [header for m in matrix.measures
               for header in [h for h, _ in registry.shown(m).columns] + [f"{registry.shown(m).short}: p adj"]]
    return ["pair", "n a", "n b", *columns, "shifted"]


def _pair_rows(matrix: ShiftMatrix) -> list[list]:
    rows = []
    for c in matrix.pairs:
        values = [c.value(m, key) for m in matrix.measures
                  for key in [k for _, k in registry.shown(m).columns] + ["p_adjusted"]]
        rows.append([f"{c.a} vs {c.b}", c.n_a, c.n_b, *values, "yes" if c.shifted else "no"])
    return rows


def _inputs_note(matrix: ShiftMatrix) -> str:
    """Which array each measure read, e.g. "MMD² and sliced Wasserstein use ...; the domain classifier uses ..."."""
    by_input: dict[str, list[str]] = {}
    for m in matrix.measures:
        by_input.setdefault(registry.shown(m).input, []).append(registry.shown(m).short)
    pca = matrix.settings.get("pca")
    said = {"reduced": f"the first {pca} principal components of all sites' embeddings pooled" if pca
            else "the embeddings as they are",
            "full": "the full embedding", "outputs": "them too (an audit has no classifier outputs)"}
    parts = []
    for kind, shorts in by_input.items():
        who = " and ".join(shorts) if len(shorts) < 3 else ", ".join(shorts[:-1]) + " and " + shorts[-1]
        article = "the " if kind == "full" else ""
        parts.append(f"{article}{who} use{'s' if len(shorts) == 1 else ''} {said[kind]}")
    return "; ".join(parts) + "."


def outlier_sentence(matrix: ShiftMatrix) -> str:
    top = matrix.ranking[0]
    basis = (f"leave-one-site-out PAD {top['loo_pad']:.3f}" if top["loo_pad"] is not None
             else f"mean pairwise PAD {top['mean_pair_pad']:.3f}")
    return (f"Farthest from the rest: {top['site']} ({basis}; shifted in {top['shifted_pairs']} of "
            f"{len(matrix.sites) - 1} pairs).")


def image_html(audit: ImageAudit, figures: dict[str, bytes]) -> str:
    m = audit.matrix
    page = Page(f"Multi-center audit: {audit.data.table.source}")
    page.heading("Summary")
    page.paragraph(f"{len(m.sites)} sites, {sum(m.counts.values())} images: "
                   + ", ".join(f"{s} ({m.counts[s]})" for s in m.sites) + ".")
    page.paragraph(outlier_sentence(m))
    shifted = m.shifted_pairs()
    page.paragraph(f"Pairs with covariate shift: {', '.join(f'{a}–{b}' for a, b in shifted) or 'none'} "
                   f"({len(shifted)} of {len(m.pairs)}).")
    page.paragraph(f"Multiple comparisons: {m.correction} over the {len(m.pairs)} pairs for each measure; a pair is "
                   f"shifted when any measure's adjusted p-value is below {m.alpha} / {len(m.measures)}. "
                   + _inputs_note(m), "note")
    page.heading("Sites ranked by distance from the rest")
    page.table(["rank", "site", "leave-one-out PAD", "shifted vs rest", "mean pairwise PAD", "mean pairwise MMD²",
                "shifted pairs"],
               [[r["rank"], r["site"], r["loo_pad"], r["loo_shifted"], r["mean_pair_pad"], r["mean_pair_mmd"],
                 r["shifted_pairs"]] for r in m.ranking])
    page.heading("Pairwise covariate shift")
    page.table(pair_header(m), _pair_rows(m))
    for key in map(heatmap_key, m.measures):
        page.image(figures[f"heatmap_{key}"], f"heatmap {key}")
    page.image(figures["scatter"], "embeddings by site")
    if audit.fingerprint is not None:
        f = audit.fingerprint
        page.heading("Where the shift lands, per pair")
        page.paragraph("Per block of the network (input to output), the MMD² between the two sites' block "
                       "descriptors (channel means and standard deviations, from the same forward pass), "
                       f"{f['correction']}-corrected across blocks within the pair; *: significant. Input-level "
                       "changes (contrast, blur, noise, colour) peak in the first blocks. Image properties: "
                       "Mann-Whitney U, BH-corrected, ranked by effect size; d is Cohen's d (second site minus "
                       "first). diagnose --fingerprint gives the full view for one pair.", "note")
        page.table(["pair", "peak block"] + f["blocks"] + ["images differ most in"], fingerprint_rows(f))
        page.image(figures["pair_depth"], "shift by depth per pair")
    if m.leave_one_out:
        page.heading("Each site against all others pooled")
        page.table(pair_header(m), _pair_rows(ShiftMatrix(m.sites, m.counts, m.leave_one_out, (), (), m.measures,
                                                          m.correction, m.alpha)))
    page.heading("Label shift, P(Y)")
    labels = audit.labels
    if labels is None:
        page.paragraph("Not measured: no --label-column.")
    elif "not_measured" in labels:
        page.paragraph(f"Not measured: {labels['not_measured']}.")
    else:
        page.table(["site"] + labels["classes"] + ["estimate error (TV)", "estimate vs rest p"],
                   [[s] + [f"{row.get('prior', {}).get(c, float('nan')):.3f} / "
                           f"{row.get('estimated', {}).get('prior', {}).get(c, float('nan')):.3f}"
                           for c in labels["classes"]]
                    + [row.get("estimate_error_tv"), row.get("estimated", {}).get("p_value")]
                    for s, row in labels["sites"].items()])
        page.paragraph("Cells: actual prior / prior estimated without the site's labels (EM + BCTS with a classifier "
                       "fitted on the other sites' embeddings).", "note")
        page.table(["pair", "TV actual", "chi² p", "p adj", "TV estimated", "label shift"],
                   [[f"{p['a']} vs {p['b']}", p.get("tv_actual"), p.get("p_value"), p.get("p_adjusted"),
                     p.get("tv_estimated"), "yes" if p.get("shifted") else "no"] for p in labels["pairs"]])
        if "heatmap_labels" in figures:
            page.image(figures["heatmap_labels"], "label shift heatmaps")
        page.image(figures["priors"], "priors per site")
    page.heading("Acquisition metadata")
    columns = audit.metadata["columns"]
    if columns:
        rows = []
        for c in columns:
            if c["kind"] == "identifier":
                rows.append([c["column"], "identifier (skipped)", None, None, None])
                continue
            summary = "; ".join(
                f"{s}: {v['median']:.3g}" if c["kind"] == "numeric" and "median" in v else
                f"{s}: " + ", ".join(f"{k} {share:.0%}" for k, share in list(v.get("share", {}).items())[:3])
                for s, v in c["sites"].items())
            rows.append([c["column"], c["kind"], c["test"], c["p_value"], summary])
        page.table(["column", "kind", "test across sites", "p-value", "per site (median or top values)"], rows)
    headers = audit.metadata["headers"]
    page.table(["pair", "header fields that differ"],
               [[f"{p['a']} vs {p['b']}", ", ".join(p["differing_fields"]) or "none"] for p in headers["pairs"]])
    fields = sorted({f for v in headers["sites"].values() for f in v if f != "images_read"})
    page.table(["site"] + fields, [[s] + [_short(v.get(f)) for f in fields] for s, v in headers["sites"].items()])
    if audit.harmonized is not None:
        h = audit.harmonized
        page.heading(f"After harmonization ({h.method}, toward {h.reference})")
        before, after = m.shifted_pairs(), h.matrix.shifted_pairs()
        page.paragraph(f"Shifted pairs: {len(before)} before, {len(after)} after. " + outlier_sentence(h.matrix))
        page.table(pair_header(h.matrix), _pair_rows(h.matrix))
        page.image(figures["scatter_harmonized"], "embeddings after harmonization")
        if h.selection is not None:  # --harmonize auto: the harmonizer chosen per site
            from shiftkit.audit.harmonize_auto import selection_rows

            page.table(["site", "chosen harmonizer", "held-out AUC before → after", "verdict"],
                       selection_rows(h.selection))
            page.paragraph("Each site's harmonizer was chosen on held-out images against "
                           f"{h.selection_settings['reference']} ({h.selection_settings['spec']}; "
                           f"{h.selection_settings['rule']}). The chosen one was fitted on the whole reference and "
                           "applied to every image of the site, when the site's held-out shift was measurable (its "
                           "AUC interval above chance); a site with none applied kept its original images. "
                           "The held-out AUC is the domain classifier's, site against reference, on images no "
                           "harmonizer was fitted on; the matrix above is measured on every image.", "note")
    page.heading("Settings")
    settings = {**m.settings, **audit.settings}
    page.table(["setting", "value"], [[k, str(v)] for k, v in settings.items()])
    return page.render()


def _short(value: Any) -> str:
    if value is None:
        return "—"
    if "median" in value:
        return f"{value['median']:.4g}" if value["min"] == value["max"] else f"{value['min']:.4g}–{value['max']:.4g}"
    return ", ".join(f"{k} ({n})" for k, n in value.get("values", {}).items())


def image_figures(audit: ImageAudit) -> dict[str, bytes]:
    m, h = audit.matrix, audit.harmonized
    sites = list(m.sites)
    figures = {}
    for measure in m.measures:
        value, title = registry.shown(measure).heatmap
        key = heatmap_key(measure)
        panels = [(f"{title}" + (" — before" if h else ""), m.grid(measure, value), m.grid(measure, "p_adjusted"))]
        if h is not None:
            panels.append((f"{title} — after {h.method}", h.matrix.grid(measure, value),
                           h.matrix.grid(measure, "p_adjusted")))
        figures[f"heatmap_{key}"] = heatmap_png(panels, sites)
    scatter = [("pooled PCA of the embeddings" + (" (before)" if h else ""), audit.coordinates)]
    figures["scatter"] = site_scatter_png(scatter, audit.data.sites, m.settings.get("seed", 0))
    if audit.fingerprint is not None and audit.fingerprint["pairs"]:
        figures["pair_depth"] = pair_depth_png(audit.fingerprint)
    if h is not None:
        figures["scatter_harmonized"] = site_scatter_png([(f"after {h.method}", h.coordinates)], audit.data.sites)
    labels = audit.labels
    if labels and "sites" in labels:
        index = {s: i for i, s in enumerate(sites)}
        panels = []
        for key, title in (("tv_actual", "TV between actual priors"), ("tv_estimated", "TV between estimated priors")):
            grid = np.full((len(sites), len(sites)), np.nan)
            p_grid = np.full_like(grid, np.nan) if key == "tv_actual" else None
            for pair in labels["pairs"]:
                if key in pair:
                    i, j = index[pair["a"]], index[pair["b"]]
                    grid[i, j] = grid[j, i] = pair[key]
                    if p_grid is not None:
                        p_grid[i, j] = p_grid[j, i] = pair["p_adjusted"]
            if np.isfinite(grid).any():
                panels.append((title, grid, p_grid))
        if panels:
            figures["heatmap_labels"] = heatmap_png(panels, sites)
        figures["priors"] = priors_png(labels)
    return figures


def write_audit_files(content: dict, html: str, out: Path) -> None:
    """audit.json and audit.html as one set: never a JSON without its page."""
    data = json_text(content)
    write_files({out / "audit.json": lambda tmp: tmp.write_text(data),
                 out / "audit.html": lambda tmp: tmp.write_text(html)})


def write_image_report(audit: ImageAudit, out: Path) -> None:
    write_audit_files(audit.to_dict(), image_html(audit, image_figures(audit)), out)


def print_image_summary(audit: ImageAudit, console: Console) -> None:
    m = audit.matrix
    for title, matrix in (("Pairwise covariate shift", m),) + (
            ((f"After harmonization ({audit.harmonized.method})", audit.harmonized.matrix),) if audit.harmonized
            else ()):
        table = Table(title=f"{title} ({matrix.correction}-adjusted p over {len(matrix.pairs)} pairs)",
                      box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
        table.add_column("pair", overflow="fold")
        entries = [registry.shown(name) for name in matrix.measures]  # each: its first column, then its p adj
        for entry in entries:
            for column in (entry.columns[0][0], "p adj"):
                table.add_column(column, justify="right", no_wrap=True, min_width=6)
        table.add_column("shifted")
        for c in matrix.pairs:
            cells = [text for e in entries for text in (f"{c.value(e.name, e.columns[0][1]):{e.number_format}}",
                                                        f"{c.p_adjusted[e.name]:.1g}")]
            table.add_row(escape(f"{c.a}\n{c.b}"), *cells, "[bold red]yes[/]" if c.shifted else "[green]no[/]")
        console.print(table)
    ranking = Table(title="Sites by distance from the rest")
    for column in ("rank", "site", "n", "leave-one-out PAD", "mean pairwise PAD", "shifted pairs"):
        ranking.add_column(column)
    for r in m.ranking:
        ranking.add_row(str(r["rank"]), escape(r["site"]), str(m.counts[r["site"]]),
                        "—" if r["loo_pad"] is None else f"{r['loo_pad']:.3f}", f"{r['mean_pair_pad']:.3f}",
                        str(r["shifted_pairs"]))
    console.print(ranking)
    console.print(outlier_sentence(m), markup=False)  # site names are user text: never rich markup
    if audit.harmonized is not None and audit.harmonized.selection is not None:  # --harmonize auto: per site
        from shiftkit.audit.harmonize_auto import selection_line

        for site, summary in audit.harmonized.selection.items():
            console.print(selection_line(site, summary), markup=False)
    if audit.fingerprint is not None:
        for pair in audit.fingerprint["pairs"]:
            console.print(f"{pair['a']} vs {pair['b']}: shift {pair['summary']}", markup=False)
    labels = audit.labels
    if labels and "pairs" in labels:
        worst = max(labels["pairs"], key=lambda p: p.get("tv_actual", p.get("tv_estimated", 0)) or 0)
        tv = worst.get("tv_actual", worst.get("tv_estimated"))
        console.print(f"Largest label shift: {worst['a']} vs {worst['b']}, total variation {tv:.3f}.", markup=False)
    seconds = audit.settings["seconds"]
    console.print(f"embedding {seconds['embed']:.1f} s, matrix {seconds['matrix']:.1f} s, total {seconds['total']:.1f} s")


# ------------------------------------------------------------------------------------------------ feature audit
# The features-table report lives in shiftkit.audit.features_report (its own plots and sections); the names stay
# importable from here.
from shiftkit.audit.features_report import (  # noqa: E402, F401
    effect_sizes_png,
    features_html,
    print_features_summary,
    write_features_report,
)
FEATURES_REPORT = (effect_sizes_png, features_html, print_features_summary, write_features_report)  # re-exported
