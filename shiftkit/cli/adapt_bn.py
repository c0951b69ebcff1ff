"""``shiftkit adapt-bn CHECKPOINT TARGET``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from shiftkit.cli.common import (MAX_LEARNING_RATE, check_number, console, err_console, output_folder, parse_window,
                                 user_errors)
from shiftkit.cli.progress import StageProgress, make_progress
from shiftkit.data.readers import ReadOptions
from shiftkit.harmonize.bn import AdaptBNRequest, run_adapt_bn


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def _table(result) -> Table:
    table = Table(title=f"{result.method} on {result.images} target images ({result.bn_layers} BatchNorm layers)")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("mean entropy", _fmt(result.before["mean_entropy"]), _fmt(result.after["mean_entropy"]))
    if result.labeled:
        if "top1_accuracy" in result.before:
            table.add_row("accuracy", _fmt(result.before["top1_accuracy"]), _fmt(result.after["top1_accuracy"]))
        for name, value in result.before["metrics"].items():
            table.add_row(f"{name} (paper)" if name == "accuracy" else name, _fmt(value),
                          _fmt(result.after["metrics"][name]))
    return table


@user_errors
def adapt_bn(
    checkpoint: Path = typer.Argument(..., help="A `shiftkit finetune` output folder, or a .pt checkpoint from adapt-bn."),
    target: Path = typer.Argument(..., help="Target images: a folder or a CSV manifest; labels optional."),
    out: Path = typer.Option(..., "--out", help="A folder (metrics.json, checkpoints/best.pt, adaptation.json) or a .pt file (+ .json beside it)."),
    method: str = typer.Option("adabn", help="adabn (re-estimate BatchNorm statistics) or tent (entropy minimisation of BatchNorm's affine parameters)."),
    lr: float = typer.Option(1e-3, help="tent: Adam learning rate."),
    epochs: int = typer.Option(1, help="tent: passes over the target (one step per batch)."),
    batch_size: int = typer.Option(64, help="Target batch size (statistics per batch for tent)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, help="Seed for the batch order."),
    cache_dir: Optional[Path] = typer.Option(None, help="Disk cache for decoded, resized images."),
    window: Optional[str] = typer.Option(None, help="Intensity window LOW,HIGH for 16-bit/medical images."),
    slice_index: Optional[int] = typer.Option(None, "--slice", help="Axial slice of 3-D volumes (default: middle)."),
) -> None:
    """Adapt a fine-tuned model's BatchNorm layers to unlabeled target images (AdaBN or TENT)."""
    check_number(lr, "--lr", above=0, maximum=MAX_LEARNING_RATE)
    read_options = ReadOptions(window=parse_window(window), slice_index=slice_index)
    output_folder(out, file=out.suffix == ".pt")
    request = AdaptBNRequest(
        checkpoint=checkpoint, target=target, out=out, method=method, lr=lr, epochs=epochs, batch_size=batch_size,
        device=device, seed=seed, cache_dir=cache_dir, read_options=read_options,
    )
    with make_progress(err_console) as progress:
        result = run_adapt_bn(request, on_stage=StageProgress(progress).stage)
    console.print(_table(result))
    report = Path(result.checkpoint_file).with_suffix(".json") if out.suffix == ".pt" else out / "adaptation.json"
    console.print(f"wrote {result.checkpoint_file} and {report}", markup=False)
