"""``shiftkit harmonize INPUT --method M --reference SOURCE --out DIR``: parse the options, call
:func:`shiftkit.harmonize.command.run_harmonize`, print (the HTML report is :mod:`shiftkit.report.harmonize`).

``--method`` takes any registered harmonizer (:mod:`shiftkit.harmonize.base`); the per-method options below reach
its constructor by name, so a harmonizer without new options needs no change here. ``--method auto`` (or a comma
list, a colour sub-method written ``colour:KIND``) chooses one on held-out images
(:mod:`shiftkit.harmonize.selection`); each option then goes to the candidates that take it."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Optional

import typer

from shiftkit.cli.common import console, err_console, output_folder, parse_window, user_errors
from shiftkit.cli.progress import StageProgress, make_progress
from shiftkit.data.readers import ReadOptions
from shiftkit.errors import ConfigError
from shiftkit.harmonize.base import Harmonizer, harmonizer_class, kinds_of, methods, registered
from shiftkit.harmonize.command import HarmonizeRequest, run_harmonize
from shiftkit.harmonize.measure import MeasureSettings
from shiftkit.harmonize.selection import AUTO, is_selection
from shiftkit.report.harmonize import print_selection, print_shift, write_html

NUMBER_LISTS = {"spacing": None, "cutoff": 2, "clip": 2, "scale": 2}  # option -> how many numbers (None: any)


def _or(names: tuple[str, ...]) -> str:
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else list(names))


METHOD_HELP = (f"{_or(methods())}; or {AUTO} (every method that suits the images) or a comma list such as "
               "histmatch,labmatch,colour:shades_of_gray: each is fitted on half the reference and the one that "
               "most reduces the shift on the held-out half is kept (none written when none reduces it).")
COLOUR_KINDS = kinds_of("colour")
COLOUR_HELP = f"colour: {_or((f'{COLOUR_KINDS[0]} (default)', *COLOUR_KINDS[1:]))}."


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


def _takes_text(cls: type[Harmonizer] | None, name: str) -> bool:
    """Whether the chosen harmonizer (any registered one when none is chosen) takes option ``name`` as text, as
    z-score's ``--scale unit``, rather than as numbers, as Nyúl's ``--scale 0,100``: its default is a string."""
    for candidate in [cls] if cls is not None else registered().values():
        parameter = inspect.signature(candidate.__init__).parameters.get(name)
        if parameter is not None and isinstance(parameter.default, str):
            return True
    return False


def _candidate_options(given: dict[str, Any]) -> dict[str, Any]:
    """``--method auto`` / a list: the options as given, number lists parsed where they parse (``--scale 0,100``
    for Nyúl) and kept as text where they do not (``--scale unit`` for z-score); each candidate takes the ones its
    constructor names, and the seed when it uses one (:func:`shiftkit.harmonize.selection.resolve_candidates`)."""
    options = {}
    for name, value in given.items():
        if value is None:
            continue
        if name in NUMBER_LISTS:
            try:
                value = _numbers(value, f"--{name}", NUMBER_LISTS[name])
            except ConfigError:
                if not _takes_text(None, name):
                    raise
        options[name] = value
    return options


def _options(method: Optional[str], given: dict[str, Any], seed: int) -> dict[str, Any]:
    """Only the options the user set (a saved harmonizer refuses any), in the constructor's terms: number lists
    parsed, and ``--seed`` for a harmonizer that samples pixels with it (:meth:`Harmonizer.uses_seed`)."""
    given = {k: v for k, v in given.items() if v is not None}
    try:
        cls = harmonizer_class(method, given) if method is not None else None
    except ConfigError:  # an unknown method is refused by run_harmonize, after the missing --reference
        cls = None
    options = {name: value if name not in NUMBER_LISTS or _takes_text(cls, name)
               else _numbers(value, f"--{name}", NUMBER_LISTS[name]) for name, value in given.items()}
    if cls is not None and cls.uses_seed(options):
        options["seed"] = seed
    return options


@user_errors
def harmonize(
    input: Path = typer.Argument(..., help="Images to harmonize: class folders, a flat folder or a CSV manifest."),
    out: Path = typer.Option(..., "--out", help="Output folder: images (same layout), manifest.csv, harmonizer.json, harmonize.json."),
    method: Optional[str] = typer.Option(None, help=METHOD_HELP),
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
    foreground: Optional[str] = typer.Option(None, help="histmatch/nyul/zscore/labmatch, colour shades_of_gray: none (default) or otsu."),
    colour_method: Optional[str] = typer.Option(None, help=COLOUR_HELP),
    lab_channels: Optional[str] = typer.Option(None, help="labmatch: l (default: CIELAB lightness only, colours kept) or lab (L, a and b)."),
    p: Optional[str] = typer.Option(None, "--p", help="colour shades_of_gray: Minkowski p (default 6; 1 = gray-world, inf = max-RGB)."),
    illuminant: Optional[str] = typer.Option(None, help="colour shades_of_gray: reference (default: the reference's mean illuminant) or neutral (gray)."),
    force: bool = typer.Option(False, "--force", help="auto / a list: write the best-ranked harmonizer even when none reduces the held-out shift."),
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
    given = {"spacing": spacing, "interpolator": interpolator, "match_points": match_points,
             "histogram_levels": histogram_levels, "reference": match_reference, "cutoff": cutoff, "clip": clip,
             "foreground": foreground, "colour_method": colour_method, "scale": scale, "channels": lab_channels,
             "p": p, "target": illuminant}  # constructor names
    selecting = harmonizer is None and is_selection(method)
    options = _candidate_options(given) if selecting else _options(method if harmonizer is None else None, given,
                                                                   seed)
    out = output_folder(out)
    request = HarmonizeRequest(
        input=input, out=out, method=method, reference=reference, harmonizer=harmonizer,
        options=options, measure=measure, force=force,
        settings=MeasureSettings(arch=arch, weights=weights, image_size=image_size, max_images=max_images,
                                 permutations=permutations, pca=pca, seed=seed, device=device,
                                 batch_size=batch_size, cache_dir=cache_dir,
                                 read_options=read_options),
    )
    inline: dict[str, Any] = {}
    with make_progress(err_console) as progress:
        report = run_harmonize(request, on_stage=StageProgress(progress).stage, inline=inline)
        html = write_html(report, out, seed, inline)
    if report.get("selection"):  # its table holds the held-out shift before and after
        print_selection(report, console)
    else:
        print_shift(report, console)
    if report["manifest"] is None:  # --method auto chose nothing: the comparison only
        console.print(f"wrote {out / 'harmonize.json'} and {html}", markup=False)
        return
    console.print(f"wrote {report['n_images']} images, {out / 'manifest.csv'}, {report['harmonizer']}, "
                  f"{out / 'harmonize.json'} and {html}", markup=False)
