"""``shiftkit harmonize INPUT --method M --reference SOURCE --out DIR``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer
from rich.table import Table

from shiftkit.cli.common import console, err_console, output_folder, parse_window, user_errors
from shiftkit.cli.progress import StageProgress, make_progress
from shiftkit.data.readers import ReadOptions
from shiftkit.errors import ConfigError
from shiftkit.harmonize.apply import HarmonizeRequest, MeasureSettings, run_harmonize


def _numbers(text: str | None, option: str, count: int | None = None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{option} '{text}' must be comma-separated numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{option} '{text}' must be finite numbers")
    if not values or (count is not None and len(values) != count):
        raise ConfigError(f"{option} '{text}' must be {count or 'some'} comma-separated numbers")
    return values


def _options(method: Optional[str], spacing, interpolator, match_points, histogram_levels, match_reference, cutoff,
             scale, clip, foreground, colour_method, seed) -> dict[str, Any]:
    """Only the options the user set (a saved harmonizer refuses any), in the constructor's terms."""
    options: dict[str, Any] = {
        "spacing": _numbers(spacing, "--spacing"), "interpolator": interpolator, "match_points": match_points,
        "histogram_levels": histogram_levels, "reference": match_reference,
        "cutoff": _numbers(cutoff, "--cutoff", 2), "clip": _numbers(clip, "--clip", 2),
        "foreground": foreground, "colour_method": colour_method,
    }
    if scale is not None:
        options["scale"] = scale if method in ("zscore", None) else _numbers(scale, "--scale", 2)
    if (method == "histmatch" and match_reference == "pooled") or (method == "colour" and colour_method == "macenko"):
        options["seed"] = seed  # pixel sampling for the pooled source quantiles / stain vectors
    return {k: v for k, v in options.items() if v is not None}


def _pixel_sample(table, seed: int, images: int = 32, per_image: int = 2000) -> np.ndarray | None:
    """Raw intensities (n x channels) from a seeded subset of images, for the histogram plot."""
    from shiftkit.harmonize.apply import read_raw

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


def write_html(report: dict, out: Path, seed: int) -> Path:
    """``DIR/report.html``: the shift before/after, intensity histograms and a few images before/after."""
    from shiftkit.data.table import load_table
    from shiftkit.io import write_text
    from shiftkit.report.html import Page

    page = Page(f"Harmonization ({report['kind']}): {report['input']}")
    page.paragraph(f"reference: {report['reference'] or '(none)'}; harmonizer: {report['harmonizer']}; "
                   f"{report['n_images']} images written to {report['manifest']}")
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


def print_shift(report: dict) -> None:
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


@user_errors
def harmonize(
    input: Path = typer.Argument(..., help="Images to harmonize: class folders, a flat folder or a CSV manifest."),
    out: Path = typer.Option(..., "--out", help="Output folder: images (same layout), manifest.csv, harmonizer.json, harmonize.json."),
    method: Optional[str] = typer.Option(None, help="resample, histmatch, nyul, zscore or colour."),
    reference: Optional[Path] = typer.Option(None, help="Source domain to fit on and to measure the shift against."),
    harmonizer: Optional[Path] = typer.Option(None, help="A saved harmonizer.json to apply instead of fitting."),
    spacing: Optional[str] = typer.Option(None, help="resample: target spacing x,y[,z] (default: the reference's median)."),
    interpolator: Optional[str] = typer.Option(None, help="resample: linear (default) or bspline."),
    match_points: Optional[int] = typer.Option(None, help="histmatch: quantiles matched (default 100)."),
    histogram_levels: Optional[int] = typer.Option(None, help="histmatch: histogram bins (default 1024)."),
    match_reference: Optional[str] = typer.Option(None, help="histmatch: average (default: the mean of the reference images' quantile functions) or pooled (all reference pixels)."),
    cutoff: Optional[str] = typer.Option(None, help="nyul: cutoff percentiles LOW,HIGH (default 1,99)."),
    scale: Optional[str] = typer.Option(None, help="zscore: source (default) or unit; nyul: standard scale LOW,HIGH (default: the reference's)."),
    clip: Optional[str] = typer.Option(None, help="zscore: clip each image to its percentiles LOW,HIGH first."),
    foreground: Optional[str] = typer.Option(None, help="histmatch/nyul/zscore: none (default) or otsu."),
    colour_method: Optional[str] = typer.Option(None, help="colour: reinhard (default) or macenko."),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="Measure the shift before and after."),
    arch: str = typer.Option("efficientnet_lite0", help="Backbone that embeds the images for the shift tests."),
    weights: str = typer.Option("imagenet", help="imagenet, a state-dict path, or none."),
    image_size: Optional[int] = typer.Option(None, help="Crop size for embedding (default 224)."),
    max_images: Optional[int] = typer.Option(None, help="Measure on at most N images per domain (all are harmonized)."),
    permutations: int = typer.Option(1000, help="Permutations for the MMD p-value."),
    pca: int = typer.Option(32, help="PCA components for MMD; 0 = none."),
    cache_dir: Optional[Path] = typer.Option(None, help="Disk cache of embeddings."),
    seed: int = typer.Option(0, help="Seed for pixel sampling, subsampling and permutations."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (embedding)."),
    batch_size: int = typer.Option(128, help="Batch size for embedding."),
    window: Optional[str] = typer.Option(None, help="Intensity window LOW,HIGH for the embedding of 16-bit/medical images."),
    slice_index: Optional[int] = typer.Option(None, "--slice", help="Axial slice embedded for 3-D volumes."),
) -> None:
    """Harmonize INPUT toward REFERENCE (resampling, intensity, colour) and measure the shift before and after."""
    read_options = ReadOptions(window=parse_window(window), slice_index=slice_index)
    options = _options(method if harmonizer is None else None, spacing, interpolator, match_points, histogram_levels,
                       match_reference, cutoff, scale, clip, foreground, colour_method, seed)
    out = output_folder(out)
    request = HarmonizeRequest(
        input=input, out=out, method=method, reference=reference, harmonizer=harmonizer,
        options=options, measure=measure,
        settings=MeasureSettings(arch=arch, weights=weights, image_size=image_size, max_images=max_images,
                                 permutations=permutations, pca=pca, seed=seed, device=device,
                                 batch_size=batch_size, cache_dir=cache_dir,
                                 read_options=read_options),
    )
    with make_progress(err_console) as progress:
        report = run_harmonize(request, on_stage=StageProgress(progress).stage)
        html = write_html(report, out, seed)
    print_shift(report)
    console.print(f"wrote {report['n_images']} images, {out / 'manifest.csv'}, {report['harmonizer']}, "
                  f"{out / 'harmonize.json'} and {html}", markup=False)
