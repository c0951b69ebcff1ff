"""``shiftkit radiomics``: PyRadiomics (and deep) features from images and masks, and approximate lesion masks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from shiftkit.cli.common import check_number, console, err_console, output_folder, parse_window, user_errors
from shiftkit.cli.progress import StageProgress, make_progress
from shiftkit.errors import ConfigError, DataError
from shiftkit.overwrite import refuse_overwriting_inputs

radiomics_app = typer.Typer(
    name="radiomics",
    help="Radiomics from images and masks: PyRadiomics and deep ROI features per case, and approximate lesion masks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
MAX_LISTED_FAILURES = 50


def _spacing(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(f"--spacing '{text}' must be numbers X,Y or X,Y,Z (mm, e.g. 1,1,1)") from None
    if len(values) not in (2, 3) or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ConfigError(f"--spacing '{text}' must be two or three positive numbers, X,Y or X,Y,Z")
    return values


def _warn(message: str) -> None:
    err_console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


@radiomics_app.command("extract")
@user_errors
def extract(
    manifest: Path = typer.Argument(..., help="CSV with path,mask,site (+ optional label, patient, case_id, mask_label; other columns are covariates)."),
    out: Path = typer.Option(..., "--out", help="Features CSV; OUT.failures.csv and OUT.json (summary) go beside it."),
    params: Optional[Path] = typer.Option(None, "--params", help="PyRadiomics parameter file (YAML/JSON); default: shiftkit/radiomics/params.yaml (original image, 7 classes)."),
    filters: Optional[str] = typer.Option(None, "--filters", help="Add filtered images: log (sigma 1,3 mm), wavelet, square, squareroot, logarithm, exponential, gradient, lbp2d, lbp3d."),
    bin_width: Optional[float] = typer.Option(None, "--bin-width", help="Grey-level bin width (default 25, or 5 when every image is an 8-bit PNG/JPEG)."),
    spacing: Optional[str] = typer.Option(None, "--spacing", help="Resample image and mask to this spacing X,Y[,Z] first (mm)."),
    interpolator: str = typer.Option("linear", help="Image interpolation for --spacing: linear or bspline (masks: nearest neighbour)."),
    mask_label: Optional[int] = typer.Option(None, "--mask-label", help="Label value of the region in every mask (a mask_label column overrides it; default: 1 if present, else the mask's only non-zero value)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Parallel processes (default: the CPU cores, at most 8)."),
    diagnostics: bool = typer.Option(False, "--diagnostics", help="Also write PyRadiomics' diagnostics_* values to OUT.diagnostics.csv."),
    deep: Optional[str] = typer.Option(None, "--deep", help="Add deep ROI features: the penultimate embedding of this backbone (ImageNet weights), as deep_0..deep_{d-1}."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Add deep ROI features from a shiftkit finetune output (folder or .pt) instead."),
    weights: str = typer.Option("imagenet", help="With --deep: imagenet, a state-dict path, or none."),
    deep_image_size: Optional[int] = typer.Option(None, "--deep-image-size", help="With --deep: the network's input size (default 224)."),
    deep_margin: float = typer.Option(0.1, "--deep-margin", help="Crop margin around the mask's box, as a fraction of its size on each side."),
    deep_pca: Optional[int] = typer.Option(None, "--deep-pca", help="Keep the first N principal components of the embeddings."),
    window: Optional[str] = typer.Option(None, help="Deep features of 16-bit/medical images: intensity window LOW,HIGH (default: the slice's 0.5-99.5th percentiles)."),
    batch_size: int = typer.Option(32, help="Deep features: batch size."),
    device: str = typer.Option("auto", help="Deep features: auto, cpu or cuda."),
) -> None:
    """PyRadiomics features (and optionally deep ROI features) of every case, one row each, ready for
    `shiftkit audit --features-table`. A case that fails is listed and the others are kept; exit code 2 only when
    no case could be extracted."""
    from shiftkit.radiomics.deep import DeepOptions
    from shiftkit.radiomics.outputs import output_paths, write_extraction
    from shiftkit.radiomics.params import parse_filters, require_pyradiomics
    from shiftkit.radiomics.run import ExtractRequest, default_workers, run_extraction

    require_pyradiomics()
    check_number(bin_width, "--bin-width", above=0)
    check_number(deep_margin, "--deep-margin", minimum=0, maximum=5)
    if (deep is None and checkpoint is None) and any(v is not None for v in (deep_pca, deep_image_size)):
        raise ConfigError("--deep-pca and --deep-image-size need --deep ARCH or --checkpoint DIR")
    if deep is not None and checkpoint is not None:
        raise ConfigError("give --deep ARCH or --checkpoint DIR, not both")
    deep_options = None
    if deep is not None or checkpoint is not None:
        deep_options = DeepOptions(arch=deep, checkpoint=checkpoint, weights=weights, image_size=deep_image_size,
                                   margin=deep_margin, pca=deep_pca, batch_size=batch_size, device=device,
                                   window=parse_window(window))
    paths = output_paths(out)
    refuse_overwriting_inputs(out, list(paths.values()), {"manifest": manifest, "parameter file": params})
    output_folder(out, file=True)
    request = ExtractRequest(manifest=manifest, params=params, filters=parse_filters(filters), bin_width=bin_width,
                             spacing=_spacing(spacing), interpolator=interpolator, mask_label=mask_label,
                             workers=default_workers() if workers is None else workers, diagnostics=diagnostics,
                             deep=deep_options)
    with make_progress(err_console) as progress:
        extraction = run_extraction(request, on_stage=StageProgress(progress).stage)
    written = write_extraction(extraction, out)
    failed = extraction.failures()
    if not extraction.extracted:
        first = failed[0]
        raise DataError(f"none of the {len(failed)} cases could be extracted (first: {first['case_id']}: "
                        f"{first['reason']}); all are listed in {paths['failures']}")
    if failed:
        _warn(f"{len(failed)} of {len(extraction.results)} case(s) failed and were left out; listed in "
              f"{paths['failures']}")
        for record in failed[:MAX_LISTED_FAILURES]:
            err_console.print(f"  {escape(record['case_id'])}: {escape(record['reason'])}", highlight=False,
                              soft_wrap=True)
        if len(failed) > MAX_LISTED_FAILURES:
            err_console.print(f"  ... and {len(failed) - MAX_LISTED_FAILURES} more", highlight=False)
    if extraction.table.dropped:
        _warn(f"{len(extraction.table.dropped)} feature(s) left out (NaN, infinite, or not computed for every case); "
              f"listed in {paths['summary']} (dropped_features)")
    table = extraction.table
    n_deep = sum(1 for c in table.feature_columns if c.startswith("deep_")) if deep_options else 0
    seconds = extraction.seconds
    console.print(f"extracted {len(extraction.extracted)} of {len(extraction.results)} cases: "
                  f"{len(table.feature_columns) - n_deep} PyRadiomics features"
                  + (f" + {n_deep} deep features" if n_deep else "")
                  + f" in {seconds['total']:.1f} s ({extraction.workers} process{'es' if extraction.workers > 1 else ''})",
                  highlight=False, markup=False)
    console.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False, markup=False)


@radiomics_app.command("masks")
@user_errors
def masks(
    manifest: Path = typer.Argument(..., help="Image manifest CSV: path and site columns (HAM10000's metadata.csv works)."),
    out: Path = typer.Option(..., "--out", help="Output folder: masks/*.png, manifest.csv (path,mask,site,label) and masks.json."),
    site_column: str = typer.Option("site", help="Column naming each image's site."),
    label_column: str = typer.Option("label", help="Column with the outcome, copied as 'label' when present."),
    keep: Optional[str] = typer.Option(None, help="More columns to copy into the new manifest (comma-separated, e.g. age,sex): they become covariates."),
    sigma: float = typer.Option(2.0, help="Gaussian smoothing before Otsu's threshold, in pixels."),
) -> None:
    """APPROXIMATE automatic lesion masks for 2-D dermoscopy (dark lesion on lighter skin): Otsu on the smoothed
    luminance, the central connected component, holes filled. Writes a manifest ready for `radiomics extract`."""
    from shiftkit.io import write_files
    from shiftkit.radiomics.segment import make_masks

    check_number(sigma, "--sigma", above=0, maximum=50)
    kept = [c.strip() for c in (keep or "").split(",") if c.strip()]
    refuse_overwriting_inputs(out, [out / "manifest.csv", out / "masks.json"], {"manifest": manifest})
    out = output_folder(out)
    with make_progress(err_console) as progress:
        result, files = make_masks(manifest, out, site_column=site_column, label_column=label_column, keep=kept,
                                   sigma=sigma, on_stage=StageProgress(progress).stage)
    write_files({path: (lambda tmp, c=content: tmp.write_bytes(c) if isinstance(c, bytes) else tmp.write_text(c))
                 for path, content in files.items()})
    if not result.records:
        first = result.failures[0]
        raise DataError(f"no mask could be made for any of the {len(result.failures)} images (first: {first['path']}: "
                        f"{first['reason']}); listed in {out / 'masks.json'}")
    if result.failures:
        _warn(f"{len(result.failures)} image(s) got no mask; listed in {out / 'masks.json'} (failures)")
    for record in result.failures[:MAX_LISTED_FAILURES]:
        err_console.print(f"  {escape(record['path'])}: {escape(record['reason'])}", highlight=False, soft_wrap=True)
    if result.warnings:
        _warn(f"{len(result.warnings)} mask(s) look wrong (covering most of the image, or a tiny spot); listed in "
              f"{out / 'masks.json'} (masks[].warning)")
    summary = result.summary()
    console.print(f"wrote {summary['n_masks']} approximate lesion masks (median {summary['median_fraction']:.0%} of "
                  f"the image) and {result.manifest}", highlight=False, markup=False)
