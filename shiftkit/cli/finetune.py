"""``shiftkit finetune``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from shiftkit.cli.common import (console, err_console, output_folder, parse_window, previous_run, user_errors,
                                 warn_skipped)
from shiftkit.cli.options import (BatchSizeOption, CacheDirOption, DeviceOption, ImageSizeOption, InitOption,
                                  MonitorOption, PatienceOption, SliceOption, ValOption, WindowOption,
                                  hyperparameter_options, training_settings)
from shiftkit.cli.progress import EpochProgress, make_progress
from shiftkit.data.readers import ReadOptions
from shiftkit.data.synthetic import write_dataset
from shiftkit.errors import ConfigError
from shiftkit.finetune import distributed
from shiftkit.finetune.metrics import METRICS
from shiftkit.finetune.run import FinetuneRequest, run_finetune
from shiftkit.finetune.config import TrainConfig
from shiftkit.finetune.start import check_weights, read_init
from shiftkit.finetune.strategies import STRATEGY_CLASSES, check_strategy_name

DEFAULTS = {"arch": "resnet50", "epochs": TrainConfig.epochs, "image_size": None, "lr": TrainConfig.lr,
            "weights": "imagenet"}
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
@hyperparameter_options
def finetune(
    data: Optional[Path] = typer.Argument(None, help="Class folders, or a CSV manifest (path,label[,site][,spacing])."),
    out: Path = typer.Option(..., "--out", help="Output folder: metrics.json, checkpoints/."),
    strategy: str = typer.Option("ft", help=f"One of: {', '.join(STRATEGY_CLASSES)}."),
    arch: Optional[str] = typer.Option(None, help="resnet50 (default), densenet121, vgg19, resnet18, efficientnet_lite0."),
    weights: Optional[str] = typer.Option(None, help="imagenet (default), a path to a state dict, or none."),
    init: InitOption = None,
    val: ValOption = None,
    test: Optional[Path] = typer.Option(None, help="Test data, evaluated once with the best checkpoint."),
    lr: Optional[float] = typer.Option(None, help="Base learning rate (Adam). Default 1e-4."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs. Default 50."),
    batch_size: BatchSizeOption = TrainConfig.batch_size,
    patience: PatienceOption = TrainConfig.patience,
    seed: int = typer.Option(0, help="Random seed (split, head initialisation, batch order)."),
    device: DeviceOption = TrainConfig.device,
    image_size: ImageSizeOption = None,
    monitor: MonitorOption = TrainConfig.monitor,
    hyperparameters: dict = None,  # --epochs-per-block ... --rgn-weight-decay: cli.options.HYPERPARAMETERS
    window: WindowOption = None,
    slice_index: SliceOption = None,
    cache_dir: CacheDirOption = None,
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
    check_weights(init, weights)
    if init is not None and arch is None:  # the checkpoint's architecture (a given --arch is checked against it)
        arch = read_init(init).arch
    train_settings, strategy_config = training_settings(hyperparameters)
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
        init=init,
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
        strategy=strategy_config,
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
    note = (result["config"].get("init") or {}).get("note")
    if note:
        err_console.print(f"note: --init: {note}", markup=False)
    console.print(_results_table(result))
    console.print(f"wrote {out / 'metrics.json'}", markup=False)
