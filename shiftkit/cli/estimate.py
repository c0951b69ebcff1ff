"""``shiftkit estimate CHECKPOINT --source-val SRC --target TGT``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from shiftkit.cli.common import console, err_console, output_folder, parse_window, user_errors
from shiftkit.cli.progress import StageProgress, make_progress
from shiftkit.data.readers import ReadOptions
from shiftkit.estimate.command import PRIOR_CHOICES, EstimateRequest
from shiftkit.estimate.run import DEFAULT_METHODS
from shiftkit.overwrite import refuse_overwriting_inputs


@user_errors
def estimate(
    checkpoint: Path = typer.Argument(..., help="A `shiftkit finetune` output folder (or its checkpoints/best.pt)."),
    source_val: Path = typer.Option(..., "--source-val", help="Labelled source images the model did NOT train on (calibration): class folders or a CSV."),
    target: Path = typer.Option(..., "--target", help="Target images (labels not needed; when present they are only used to show the measured metrics)."),
    out: Path = typer.Option(..., "--out", help="Output folder: estimate.json, estimate.html."),
    methods: str = typer.Option(",".join(DEFAULT_METHODS), help="Estimators, comma-separated: source, ac, ac_dc, atc, doc, cm_atc, iw."),
    prior: str = typer.Option("em_bcts", help=f"Target class prior: estimated ({', '.join(PRIOR_CHOICES)}; cm_atc and its PPV/NPV use it), or the prevalence you know at the target, CLASS=VALUE,... (proportions or counts; ac, ac_dc and cm_atc are then computed at it)."),
    positive: Optional[str] = typer.Option(None, help="Binary tasks: the positive class (default: the second class)."),
    bootstrap: int = typer.Option(1000, help="Bootstrap replicates for the intervals."),
    seed: int = typer.Option(0, help="Seed for the bootstrap and the density-ratio classifier."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(128, help="Batch size for the forward passes."),
    cache_dir: Optional[Path] = typer.Option(None, help="Disk cache of the model's outputs (keyed by image content and model)."),
    window: Optional[str] = typer.Option(None, help="Intensity window LOW,HIGH for 16-bit/medical images."),
    slice_index: Optional[int] = typer.Option(None, "--slice", help="Axial slice of 3-D volumes (default: middle)."),
) -> None:
    """How well will the model do on the target? Label-free estimates with intervals and the flags that qualify them."""
    from shiftkit.estimate.command import run_estimate
    from shiftkit.report.estimate import print_summary, write_report

    request = EstimateRequest(
        checkpoint=checkpoint, source_val=source_val, target=target,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()), prior=prior, positive=positive,
        bootstrap=bootstrap, seed=seed, device=device, batch_size=batch_size, cache_dir=cache_dir,
        read_options=ReadOptions(window=parse_window(window), slice_index=slice_index))
    refuse_overwriting_inputs(out, [out / "estimate.json", out / "estimate.html"],
                              {"checkpoint": checkpoint, "source-val": source_val, "target": target})
    out = output_folder(out)
    with make_progress(err_console) as progress:
        result = run_estimate(request, on_stage=StageProgress(progress).stage)
    write_report(result, out)
    print_summary(result, console)
    console.print(f"wrote {out / 'estimate.json'} and {out / 'estimate.html'}", markup=False)
