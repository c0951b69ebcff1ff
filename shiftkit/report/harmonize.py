"""The harmonize report: ``report.html`` (with ``--method auto``: the comparison of the candidates on held-out
images and before/after thumbnails; the shift to the reference before and after, intensity histograms of stored
values, a few images before and after) and the rich tables; ``harmonize.json`` itself is written by
:func:`shiftkit.harmonize.command.run_harmonize`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from shiftkit.data.table import load_table
from shiftkit.harmonize.raw import read_raw
from shiftkit.io import write_text
from shiftkit.report.html import Page


def _pixel_sample(table, seed: int, images: int = 32, per_image: int = 2000) -> np.ndarray | None:
    """Raw intensities (n x channels) from a seeded subset of images, for the histogram plot."""
    if table is None or len(table) == 0:
        return None
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(table), min(images, len(table)), replace=False))
    samples, channels = [], None
    for index in chosen:
        array = read_raw(table.records[index]).array
        array = array.reshape(-1, array.shape[-1])
        array = array[np.isfinite(array).all(axis=1)]  # NaN/inf pixels stay out of the histograms, as of the fit
        if not len(array) or (channels is not None and array.shape[1] != channels):
            continue
        channels = array.shape[1]
        samples.append(array[rng.choice(len(array), min(per_image, len(array)), replace=False)])
    return np.concatenate(samples)


def _histograms(samples: dict[str, np.ndarray | None]) -> bytes:
    from shiftkit.report.plots import figure_png, plt

    present = {k: v for k, v in samples.items() if v is not None}
    channels = min(v.shape[1] for v in present.values())
    names = {1: ["intensity"], 3: ["red", "green", "blue"]}.get(channels, [f"channel {c}" for c in range(channels)])
    fig, axes = plt.subplots(1, channels, figsize=(4.2 * channels, 3.2), squeeze=False)
    colours = {"reference": "#1f77b4", "input before": "#d62728", "input after": "#2ca02c"}
    for c, ax in enumerate(axes[0]):
        pooled = np.concatenate([v[:, c] for v in present.values()])
        bins = np.linspace(*np.percentile(pooled, [0.1, 99.9]), 64)
        for name, values in present.items():
            ax.hist(values[:, c], bins=bins, density=True, histtype="step", linewidth=1.5, label=name,
                    color=colours[name])
        ax.set_title(names[c])
        ax.set_xlabel("stored intensity")
    axes[0][0].legend(fontsize=8)
    return figure_png(fig)


def _examples(before, after, count: int = 4) -> bytes:
    from shiftkit.data.readers import read_image
    from shiftkit.report.plots import figure_png, plt

    count = min(count, len(before))
    fig, axes = plt.subplots(2, count, figsize=(2.4 * count, 5), squeeze=False)
    for i in range(count):
        for row, (table, name) in enumerate(((before, "before"), (after, "after"))):
            image = read_image(table.records[i].path)
            axes[row][i].imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
            axes[row][i].set_title(f"{name}: {table.records[i].path.name}", fontsize=7)
            axes[row][i].axis("off")
    return figure_png(fig)


def _interval(values: list | None) -> str:
    return "-" if not values else f"{values[0]:.3f}–{values[1]:.3f}"


def selection_rows(selection: dict) -> list[list]:
    """One row per candidate, in rank order: the comparison table of report.html and the terminal."""
    rows = []
    for c in selection["candidates"]:
        status = ("chosen" if c["name"] == selection.get("chosen") else "failed: " + c["error"] if c["error"]
                  else "disqualified: " + c["disqualified"] if c["disqualified"]
                  else "reduces" if c["reduces"] else "does not reduce")
        rows.append([c["rank"], c["name"], c["auc_after"], _interval(c["auc_after_ci"]), c["mmd_after"],
                     c["mmd_after_p"], c["content_correlation"], status])
    return rows


SELECTION_HEADER = ["rank", "candidate", "domain AUC after", "95% interval", "MMD² after", "MMD p", "content r",
                    "verdict"]


def _selection_html(page: Page, selection: dict, examples: list) -> None:
    before = selection["before"]
    page.heading("Choice of harmonizer (held-out images)")
    page.paragraph(selection["verdict"], "verdict-none" if selection.get("written") else "verdict-mild")
    split = selection["split"]
    page.paragraph(f"before: domain AUC {before['auc']:.3f} ({_interval(before['auc_ci'])}), MMD² "
                   f"{before['mmd']:.4g} (p {before['mmd_p']:.3g}); each candidate fitted on "
                   f"{split['reference']['fit']} reference images and measured on {split['input']['held_out']} "
                   f"held-out input images against {split['reference']['held_out']} held-out reference images")
    page.table(SELECTION_HEADER, selection_rows(selection))
    page.paragraph(f"Rule: {selection['rule']}.", "note")
    if selection.get("skipped"):
        page.table(["not tried", "why"], [[s["name"], s["reason"]] for s in selection["skipped"]])
    if examples:
        top = selection["candidates"][0]["name"] if selection["candidates"] else ""
        page.heading(f"Held-out input images before | after ({top}, one intensity scale per pair)")
        for name, png in examples:
            page.image(png, f"{name} before and after {top}")


def write_html(report: dict, out: Path, seed: int, inline: dict | None = None) -> Path:
    """``DIR/report.html``: the candidates' comparison (``--method auto``), the shift before/after, intensity
    histograms and a few images before/after. ``inline``: what only the page shows (``selection_examples``)."""
    selection = report.get("selection")
    written = report.get("manifest") is not None
    page = Page(f"Harmonization ({report['kind'] or 'auto: nothing written'}): {report['input']}")
    if written:
        page.paragraph(f"reference: {report['reference'] or '(none)'}; harmonizer: {report['harmonizer']}; "
                       f"{report['n_images']} images written to {report['manifest']}")
    if selection:
        _selection_html(page, selection, (inline or {}).get("selection_examples") or [])
    if not written:
        write_text(out / "report.html", page.render())
        return out / "report.html"
    shift = report.get("shift")
    if shift:
        page.heading("Shift to the reference")
        rows = [[name, shift[name]["mmd"]["statistic"], shift[name]["mmd"]["p_value"],
                 shift[name]["domain_classifier"]["statistic"], shift[name]["domain_classifier"]["p_value"]]
                for name in ("before", "after")]
        page.table(["", "MMD²", "MMD p-value", "domain AUC", "domain p-value"], rows)
        page.paragraph(shift["settings"]["note"], "note")
    else:
        page.paragraph(f"shift not measured: {report.get('shift_not_measured')}", "note")
    before = load_table(report["input"])
    after = load_table(report["manifest"])
    reference = load_table(report["reference"]) if report["reference"] else None
    try:
        samples = {"reference": _pixel_sample(reference, seed), "input before": _pixel_sample(before, seed),
                   "input after": _pixel_sample(after, seed)}
        page.heading("Intensity histograms (stored values, 32 images each)")
        page.image(_histograms(samples), "intensity histograms")
    except ValueError:  # channel counts differ between domains: nothing to overlay
        pass
    page.heading("Examples (as the network reads them)")
    page.image(_examples(before, after), "examples before and after")
    write_text(out / "report.html", page.render())
    return out / "report.html"


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def print_shift(report: dict, console: Console) -> None:
    """The before/after shift table (or why it was not measured) on ``console``."""
    shift = report.get("shift")
    if not shift:
        console.print(f"shift not measured: {report.get('shift_not_measured')}", markup=False)
        return
    table = Table(title=f"shift to the reference, {report['method']} ({report['kind']})")
    for column in ("", "MMD²", "MMD p-value", "domain AUC", "domain p-value"):
        table.add_column(column, justify="right")
    for name in ("before", "after"):
        mmd, classifier = shift[name]["mmd"], shift[name]["domain_classifier"]
        table.add_row(name, _fmt(mmd["statistic"]), _fmt(mmd["p_value"], 3), _fmt(classifier["statistic"], 3),
                      _fmt(classifier["p_value"], 3))
    console.print(table)


def print_selection(report: dict, console: Console) -> None:
    """The candidates' comparison and the verdict line (``--method auto``) on ``console``."""
    selection = report["selection"]
    before = selection["before"]
    table = Table(title=f"held-out shift after each candidate (before: domain AUC {before['auc']:.3f} "
                        f"({_interval(before['auc_ci'])}), MMD² {before['mmd']:.4g}); r: content correlation")
    for column in ("#", "candidate", "AUC", "95% CI", "MMD²", "p", "r", "verdict"):
        table.add_column(column, justify="left" if column in ("candidate", "verdict") else "right",
                         no_wrap=column in ("candidate", "95% CI"))
    for row in selection_rows(selection):
        cells = [v if isinstance(v, str) else str(v) if isinstance(v, int) else _fmt(v, 3) for v in row]
        cells[6] = "-" if row[6] is None else f"{row[6]:.2f}"  # the content correlation
        table.add_row(*cells)
    console.print(table)
    skipped = selection.get("skipped") or []
    if skipped:
        console.print(f"not tried: {', '.join(s['name'] for s in skipped)} (reasons in harmonize.json)",
                      markup=False)
    console.print(selection["verdict"], markup=False)
