"""``shiftkit diagnose SOURCE TARGET``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from shiftkit.cli.common import (check_number, console, err_console, output_folder, parse_window, user_errors,
                                 warn_skipped)
from shiftkit.cli.progress import StageProgress, make_progress
from shiftkit.data.readers import ReadOptions
from shiftkit.overwrite import refuse_overwriting_inputs
from shiftkit.shift import registry
from shiftkit.shift.diagnose import DiagnoseRequest, run_diagnose
from shiftkit.shift.profile import ALPHA


@user_errors
def diagnose(
    source: Path = typer.Argument(..., help="Source domain: class folders, a flat folder or a CSV manifest."),
    target: Path = typer.Argument(..., help="Target domain: same kinds of input; labels optional."),
    out: Path = typer.Option(..., "--out", help="Output folder: report.json, report.html, plots/."),
    arch: str = typer.Option("efficientnet_lite0", help="Backbone that embeds the images (ImageNet weights)."),
    weights: str = typer.Option("imagenet", help="imagenet, a state-dict path, or none."),
    checkpoint: Optional[Path] = typer.Option(None, help="A `shiftkit finetune` output folder: its fine-tuned model embeds and classifies (pass as SOURCE images it did not train on)."),
    target_prevalence: Optional[str] = typer.Option(None, help="With --checkpoint: the class shares you know at the target, CLASS=VALUE,... (proportions or counts); the performance estimate is computed at them instead of an estimated prevalence."),
    target_labels: Optional[Path] = typer.Option(None, help="CSV (path,label) labelling some target images: enables the concept-shift test."),
    tests: Optional[str] = typer.Option(None, help=f"Covariate tests to run, comma-separated (default {','.join(registry.default_tests('diagnose'))}; registered: {', '.join(registry.names())})."),
    permutations: int = typer.Option(1000, help="Permutations for MMD and OT p-values."),
    bootstrap: int = typer.Option(200, help="Bootstrap resamples for prior intervals and the label-shift test."),
    label_method: str = typer.Option("em_bcts", help="Primary label-shift estimator: em_bcts, bbse or rlls."),
    max_images: Optional[int] = typer.Option(None, help="Use at most N images per domain (seeded random subset)."),
    pca: int = typer.Option(32, help="PCA components (fitted on both domains pooled) for MMD, OT and BBSD without labels; 0 = none."),
    significance: float = typer.Option(ALPHA, "--significance", help="Significance level of the shift verdicts (Bonferroni over the covariate tests) and of the label-shift intervals."),
    seed: int = typer.Option(0, help="Seed for subsampling, permutations, bootstrap and cross-validation."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    image_size: Optional[int] = typer.Option(None, help="Crop size for embedding (default 224)."),
    batch_size: int = typer.Option(128, help="Batch size for embedding."),
    cache_dir: Optional[Path] = typer.Option(None, help="Disk cache of embeddings (keyed by image content, model, preprocessing)."),
    window: Optional[str] = typer.Option(None, help="Intensity window LOW,HIGH for 16-bit/medical images."),
    slice_index: Optional[int] = typer.Option(None, "--slice", help="Axial slice of 3-D volumes (default: middle)."),
    on_bad_image: str = typer.Option("fail", help="fail: an unreadable image stops the run; skip: leave it out and list it in report.json (skipped_images)."),
    domain: Optional[str] = typer.Option(None, help="Imaging domain (X-ray, MRI, Histology, Dermoscopy, Endoscopy, ...): weighs the published evidence behind the strategy recommendation."),
    fingerprint: bool = typer.Option(False, "--fingerprint/--no-fingerprint", help="Where the shift lands (per-block shift, distance from pre-training, gradient signal) and what changed in the images (brightness, contrast, sharpness, noise, colour, size), from the same pass."),
    try_harmonizers: bool = typer.Option(False, "--try-harmonizers", help="Under covariate shift: fit every applicable harmonizer on part of the source and say which lowers the shift on held-out images (what harmonize --method auto would write)."),
    thumbnails: bool = typer.Option(True, "--thumbnails/--no-thumbnails", help="Show the images the domain classifier finds most and least typical of their domain in report.html (pixels only; DICOM pixel data can hold burned-in text)."),
    anonymize_paths: bool = typer.Option(False, "--anonymize-paths", help="Name inputs in the report by a stable hash of their path (sha256, 12 hex digits) instead of the path."),
) -> None:
    """How far has TARGET drifted from SOURCE? Covariate, label and concept shift with p-values and intervals."""
    check_number(significance, "--significance", above=0, below=1)
    read_options = ReadOptions(window=parse_window(window), slice_index=slice_index)
    refuse_overwriting_inputs(out, [out / "report.json", out / "report.html"], {  # plots/ in SRC: a new class
        "source": source, "target": target, "target labels": target_labels}, scanned=("source", "target"))
    out = output_folder(out)
    request = DiagnoseRequest(
        source=source, target=target, arch=arch, weights=weights, checkpoint=checkpoint, target_labels=target_labels,
        target_prevalence=target_prevalence,
        tests=(tuple(t.strip() for t in tests.split(",") if t.strip()) if tests is not None
               else registry.default_tests("diagnose")), permutations=permutations, alpha=significance,
        bootstrap=bootstrap, label_method=label_method, max_images=max_images, pca=pca, seed=seed, device=device,
        image_size=image_size, batch_size=batch_size, cache_dir=cache_dir,
        read_options=read_options, on_bad_image=on_bad_image, anonymize_paths=anonymize_paths,
        fingerprint=fingerprint, thumbnails=thumbnails, try_harmonizers=try_harmonizers,
    )
    from shiftkit.report.diagnose import print_summary, write_report

    with make_progress(err_console) as progress:
        stages = StageProgress(progress)
        profile, data = run_diagnose(request, on_stage=stages.stage, on_step=stages.step)
    report = write_report(profile, data, out, domain=domain)
    warn_skipped(report["skipped_images"], "report.json")
    print_summary(profile, console, report)
    from shiftkit.cli.recommend import print_recommendation

    print_recommendation(report["recommendation"], console, top=3)
    console.print(f"wrote {out / 'report.json'} and {out / 'report.html'}", markup=False)
