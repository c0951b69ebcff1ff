"""``shiftkit finetune``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from shiftkit.cli.common import (console, err_console, output_folder, parse_window, previous_run, user_errors,
                                 warn_skipped)
from shiftkit.cli.options import (AlphaOption, BetaOption, ClassWeightOption, LpSolverOption, ProtocolOption,
                                  RgnWeightDecayOption, SpUpdateOption, training_settings)
from shiftkit.cli.progress import EpochProgress, make_progress
from shiftkit.data.readers import ReadOptions
from shiftkit.data.synthetic import write_dataset
from shiftkit.errors import ConfigError
from shiftkit.finetune import distributed
from shiftkit.finetune.metrics import METRICS
from shiftkit.finetune.run import FinetuneRequest, run_finetune
from shiftkit.finetune.strategies import STRATEGIES, StrategyConfig, check_strategy_name
from shiftkit.finetune.trainer import TrainConfig

DEFAULTS = {"arch": "resnet50", "epochs": 50, "image_size": None, "lr": 1e-4, "weights": "imagenet"}
# --demo: real ImageNet weights that install offline (EfficientNet-Lite0), small images, a short run.
DEMO_DEFAULTS = {"arch": "efficientnet_lite0", "epochs": 4, "image_size": 64, "lr": 1e-3, "weights": "imagenet"}


def _given(value, default):
    return default if value is None else value


def _results_table(result: dict) -> Table:
    table = Table(title=f"{result['strategy']} on {result['arch']}  (best epoch {result['best_epoch']} "
                  f"of {result['epochs_run']}, lr {result['lr']:g}, seed {result['seed']})")
    table.add_column("split")
    for name in METRICS:
        table.add_column(name, justify="right")
    for split in ("val", "test"):
        if result.get(split):
            table.add_row(split, *("—" if result[split][m] is None else f"{result[split][m]:.4f}" for m in METRICS))
    return table


@user_errors
def finetune(
    data: Optional[Path] = typer.Argument(None, help="Class folders, or a CSV manifest (path,label[,site][,spacing])."),
    out: Path = typer.Option(..., "--out", help="Output folder: metrics.json, checkpoints/."),
    strategy: str = typer.Option("ft", help=f"One of: {', '.join(STRATEGIES)}."),
    arch: Optional[str] = typer.Option(None, help="resnet50 (default), densenet121, vgg19, resnet18, efficientnet_lite0."),
    weights: Optional[str] = typer.Option(None, help="imagenet (default), a path to a state dict, or none."),
    val: Optional[Path] = typer.Option(None, help="Validation data; default: a stratified 20% split of DATA."),
    test: Optional[Path] = typer.Option(None, help="Test data, evaluated once with the best checkpoint."),
    lr: Optional[float] = typer.Option(None, help="Base learning rate (Adam). Default 1e-4."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs. Default 50."),
    batch_size: int = typer.Option(64, help="Batch size."),
    patience: int = typer.Option(5, help="Early stopping: epochs without validation improvement."),
    seed: int = typer.Option(0, help="Random seed (split, head initialisation, batch order)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    image_size: Optional[int] = typer.Option(None, help="Crop size (default 224, as the paper); smaller trains faster on a CPU."),
    monitor: str = typer.Option("auto", help="Validation metric for early stopping and the best checkpoint: auto (mAP for multi-label, AUROC otherwise), map, accuracy, auroc, kappa, f1."),
    epochs_per_block: Optional[int] = typer.Option(None, help="g_lf/g_fl: epochs per unfrozen block (default epochs // blocks)."),
    lp_epochs: int = typer.Option(5, help="lp_ft: epochs of linear probing before all layers train."),
    protocol: ProtocolOption = "shiftkit",
    lp_solver: LpSolverOption = None,
    class_weight: ClassWeightOption = None,
    sp_update: SpUpdateOption = None,
    alpha: AlphaOption = None,
    beta: BetaOption = None,
    rgn_batches: int = typer.Option(5, help="auto_rgn: batches per epoch for the relative gradient norms."),
    rgn_weight_decay: RgnWeightDecayOption = 1e-4,
    window: Optional[str] = typer.Option(None, help="Intensity window LOW,HIGH for 16-bit/medical images (default: 0.5-99.5th percentile per image)."),
    slice_index: Optional[int] = typer.Option(None, "--slice", help="Axial slice of 3-D volumes (default: the middle one)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Disk cache for decoded, resized images (reused across runs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from OUT/checkpoints/last.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in OUT (its metrics.json and checkpoints/) instead of refusing."),
    on_bad_image: str = typer.Option("fail", help="fail: an unreadable image stops the run (before training); skip: leave it out and list it in metrics.json (skipped_images)."),
    anonymize_paths: bool = typer.Option(False, "--anonymize-paths", help="Name inputs in metrics.json and checkpoints by a stable hash of their path (sha256, 12 hex digits) instead of the path."),
    workers: Optional[int] = typer.Option(None, help="Data-loader worker processes (default: 0 on CPU, up to 8 per GPU on CUDA)."),
    precision: str = typer.Option("auto", help="auto (bf16 autocast on CUDA where supported, else fp16; fp32 on CPU), bf16, fp16 or fp32."),
    demo: bool = typer.Option(False, "--demo", help="Train on a generated 3-class phantom set (written to OUT/data)."),
) -> None:
    """Fine-tune a pre-trained CNN with one of the eight strategies of Davila et al. (2024).

    Multi-GPU: torchrun --nproc_per_node N -m shiftkit finetune ... (the global --batch-size is split over ranks).
    """
    ctx = distributed.context()  # torchrun's environment, if any; one process otherwise
    read_options = ReadOptions(window=parse_window(window), slice_index=slice_index)
    # rank 0 holds OUT; a full disk keeps the checkpoints (--resume continues from them)
    out = output_folder(out, lock=ctx.is_main, clean_failed=False)
    if ctx.is_main:
        previous_run(out, resume, overwrite)
    check_strategy_name(strategy)  # before --demo writes any data
    train_settings, strategy_settings = training_settings(protocol, lp_solver, class_weight, sp_update, alpha, beta)
    defaults = DEMO_DEFAULTS if demo else DEFAULTS
    if demo:
        if data is not None:
            raise ConfigError("--demo generates its own data; leave out DATA")
        if ctx.is_main:
            data = write_dataset(out / "data")
            err_console.print(f"demo: generated a 3-class phantom set in {data}", markup=False)
        distributed.barrier(ctx)
        data = out / "data"
    elif data is None:
        raise ConfigError("give DATA (class folders or a CSV manifest), or --demo")
    request = FinetuneRequest(
        data=data,
        out=out,
        arch=_given(arch, defaults["arch"]),
        weights=_given(weights, defaults["weights"]),
        val=val,
        test=test,
        image_size=_given(image_size, defaults["image_size"]),
        cache_dir=cache_dir,
        resume=resume,
        on_bad_image=on_bad_image,
        anonymize_paths=anonymize_paths,
        overwrite=overwrite,
        read_options=read_options,
        train=TrainConfig(
            strategy=strategy, lr=_given(lr, defaults["lr"]), epochs=_given(epochs, defaults["epochs"]),
            batch_size=batch_size,
            patience=patience, seed=seed, device=device, monitor=monitor, num_workers=workers,
            precision=precision, **train_settings,
        ),
        strategy=StrategyConfig(epochs_per_block=epochs_per_block, lp_epochs=lp_epochs, rgn_batches=rgn_batches,
                                rgn_weight_decay=rgn_weight_decay, **strategy_settings),
    )
    if not ctx.is_main:  # other ranks train silently; rank 0 shows progress and writes the files
        run_finetune(request)
        distributed.shutdown(ctx)
        return
    with make_progress(err_console) as progress:
        reporter = EpochProgress(progress, request.train.epochs)
        result = run_finetune(request, callback=reporter, on_stage=reporter)
    distributed.shutdown(ctx)
    warn_skipped(result["skipped_images"], "metrics.json")
    console.print(_results_table(result))
    console.print(f"wrote {out / 'metrics.json'}", markup=False)
