"""``finetune``: from data paths to a trained model and ``metrics.json`` (the CLI is a thin layer over this).

Under ``torchrun --nproc_per_node N`` every rank runs this function: each decodes the images, trains its share
of every batch, and only rank 0 writes files and reports progress (see ``shiftkit.finetune.distributed``).
"""

from __future__ import annotations

import math
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shiftkit import __version__
from shiftkit.data.cache import ImageCache
from shiftkit.data.dataset import ImageDataset, stratified_split
from shiftkit.data.readers import ReadOptions
from shiftkit.data.table import ImageTable, load_table
from shiftkit.data.validate import check_policy, decode_all, require_images_left
from shiftkit.errors import ConfigError, DataError
from shiftkit.finetune import distributed
from shiftkit.finetune.metrics import METRICS
from shiftkit.finetune.start import MUTUALLY_EXCLUSIVE, InitCheckpoint, check_arch, identity as init_identity, \
    load_start, read_init
from shiftkit.finetune.strategies import StrategyConfig, check_strategy_name, make_strategy
from shiftkit.device import resolve_device
from shiftkit.finetune.trainer import Trainer, TrainConfig, config_dict, resolve_precision
from shiftkit.hooks import StageHook, TrainerCallback, start_stage
from shiftkit.io import write_json
from shiftkit.overwrite import refuse_overwriting_inputs
from shiftkit.models.registry import build_model
from shiftkit.data.fingerprint import table_fingerprint
from shiftkit.privacy import shown_path

VAL_FRACTION = 0.2


@dataclass
class FinetuneRequest:
    data: Path
    out: Path
    arch: str = "resnet50"
    weights: str = "imagenet"
    val: Path | None = None
    init: Path | None = None  # a finetune output (or its best.pt) to start from instead of ``weights`` (start.py)
    test: Path | None = None
    image_size: int | None = None
    cache_dir: Path | None = None
    resume: bool = False
    on_bad_image: str = "fail"  # or "skip": unreadable images leave the run and are listed in metrics.json
    anonymize_paths: bool = False  # input paths in metrics.json and checkpoints become stable hashes
    overwrite: bool = False  # replace a previous run in ``out`` (removed once the inputs have been checked)
    read_options: ReadOptions = field(default_factory=ReadOptions)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)


def _check_training_table(table: ImageTable) -> None:
    if not table.labeled:
        raise DataError(f"{table.source}: training data needs labels (class folders or a 'label' column)")
    if len(table.classes) < 2 and not table.multilabel:
        raise DataError(f"{table.source}: training data needs at least two classes, found {list(table.classes)}")
    table.require_all_classes()


def _evaluation_table(path: Path, train: ImageTable, role: str) -> ImageTable:
    table = load_table(path)
    if not table.labeled:
        raise DataError(f"{path}: {role} data needs labels")
    if table.multilabel and not train.multilabel:
        raise DataError(f"{path}: {role} rows have several labels ('a|b') but the training data is single-label")
    return table.with_classes(train.classes, train.multilabel)


def _split(request: FinetuneRequest) -> tuple[ImageTable, ImageTable, ImageTable | None]:
    table = load_table(request.data)
    _check_training_table(table)
    if request.val is not None:
        train = table
        val = _evaluation_table(request.val, table, "validation")
    else:
        if len(table) < 4:
            raise DataError(f"{table.source}: {len(table)} images are too few to split off a validation set")
        train, val = stratified_split(table, VAL_FRACTION, request.train.seed)
        train.require_all_classes()
    test = _evaluation_table(request.test, table, "test") if request.test is not None else None
    return train, val, test


MAX_LEARNING_RATE = 10.0  # Adam's step is about lr per parameter: above this nothing trains, weights turn NaN
from shiftkit.data.preprocess import MIN_IMAGE_SIZE  # noqa: E402  one rule for every command


def _check_options(request: FinetuneRequest) -> None:
    cfg = request.train
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.patience < 1:
        raise ConfigError("--epochs, --batch-size and --patience must be at least 1")
    if not (math.isfinite(cfg.lr) and 0 < cfg.lr <= MAX_LEARNING_RATE):
        raise ConfigError(f"--lr must be a finite number above 0 and at most {MAX_LEARNING_RATE:g} (got {cfg.lr})")
    cfg.validate()
    if request.image_size is not None and request.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"--image-size must be at least {MIN_IMAGE_SIZE} (got {request.image_size})")
    check_strategy_name(cfg.strategy)
    if cfg.monitor != "auto" and cfg.monitor not in METRICS:
        raise ConfigError(f"unknown --monitor '{cfg.monitor}' (choose auto, {', '.join(METRICS)})")
    request.strategy.validate()
    check_policy(request.on_bad_image)
    if cfg.num_workers is not None and cfg.num_workers < 0:
        raise ConfigError(f"--workers must be 0 or more (got {cfg.num_workers})")
    resolve_precision(cfg.precision, resolve_device(cfg.device))  # fail before decoding any image


def _read_init(request: FinetuneRequest) -> InitCheckpoint | None:
    """The checkpoint of ``request.init`` (None without one), checked against the request before any image is
    read: ``weights`` must be left at its default and ``arch`` must be the checkpoint's."""
    if request.init is None:
        return None
    if request.weights != "imagenet":
        raise ConfigError(MUTUALLY_EXCLUSIVE)
    init = read_init(request.init)
    check_arch(init, request.arch)
    return init


def run_finetune(request: FinetuneRequest, callback: TrainerCallback | None = None,
                 on_stage: StageHook | None = None) -> dict:
    """Train, keep the best epoch by validation, evaluate, write ``out/metrics.json``; return its content.

    A ``callback`` that returns :data:`~shiftkit.hooks.STOP` from ``on_epoch_end`` leaves the run unfinished:
    ``checkpoints/last.pt`` is kept for a later ``resume``, nothing is evaluated, no ``metrics.json`` is written,
    and the dict returned has ``halted: True``, the history so far and ``epochs_run``."""
    cfg = request.train
    _check_options(request)
    init = _read_init(request)
    writes = [request.out / "metrics.json"]
    if init is not None:  # a run started from OUT's own best.pt would replace it
        writes += [request.out / "checkpoints" / name for name in ("best.pt", "last.pt")]
    refuse_overwriting_inputs(request.out, writes, {  # checkpoints/ in DATA: a new class
        "data": request.data, "validation data": request.val, "test data": request.test,
        "init checkpoint": init.checkpoint if init is not None else None},
        scanned=("data", "validation data", "test data"))
    image_size = request.image_size if request.image_size is not None or init is None else init.image_size
    ctx = distributed.context()
    if not ctx.is_main:
        callback, on_stage = None, None
    train_table, val_table, test_table = _split(request)
    num_outputs = len(train_table.classes)
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    adapted = build_model(request.arch, num_outputs, "none" if init is not None else request.weights, image_size)
    started_from = None
    if init is not None:  # before the strategy is built: l1_sp / l2_sp anchor to these weights
        started_from = load_start(adapted, init, train_table.classes, train_table.task, request.anonymize_paths)
    strategy = make_strategy(cfg.strategy, adapted, request.strategy, cfg)  # lr and epochs: the run's
    if started_from is not None and started_from["head"] == "kept":
        strategy.anchor_head()
    cache = ImageCache(adapted.preprocessing, request.read_options, disk_dir=request.cache_dir)
    tables = {"train": train_table, "val": val_table, "test": test_table}
    skipped = []
    for name, table in tables.items():  # every image decoded once, up front: bad ones fail or skip here
        if table is None:
            continue
        tick = start_stage(on_stage, f"decoding {name} images", len(table))
        tables[name], bad = decode_all(table, cache, request.on_bad_image, on_image=tick)
        require_images_left(tables[name], bad, name, all_classes=name == "train")
        skipped += bad
    datasets = {name: ImageDataset(table, cache) for name, table in tables.items() if table is not None}
    if request.overwrite and not request.resume and ctx.is_main:  # the inputs are good: now replace the old run
        (request.out / "metrics.json").unlink(missing_ok=True)
        shutil.rmtree(request.out / "checkpoints", ignore_errors=True)
    task = train_table.task
    trainer = Trainer(
        adapted, strategy, task, datasets["train"], datasets["val"], cfg,
        checkpoint_dir=request.out / "checkpoints", callback=callback,
        identity_extra={
            "data": [shown_path(p, request.anonymize_paths) for p in (request.data, request.val)],
            "read_options": request.read_options.key(),
            "data_fingerprint": table_fingerprint(tables["train"], tables["val"]),  # labels and file contents
            **({"init": init_identity(started_from)} if started_from is not None else {}),
        },
        dist=ctx,
    )
    try:  # stop loader workers even when training ends by an exception (an interrupt, a diverged loss)
        resumed = request.resume and trainer.resume()
        summary = trainer.fit()
        if not summary["halted"]:
            trainer.load_best()
            val_metrics = trainer.evaluate(datasets["val"])
            test_metrics = trainer.evaluate(datasets["test"]) if "test" in datasets else None
    finally:
        trainer.close()
    if summary["halted"]:  # stopped by the callback: unfinished, resumable from checkpoints/last.pt
        return {"halted": True, "strategy": cfg.strategy, "arch": request.arch, "lr": cfg.lr, "seed": cfg.seed,
                "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"],
                "resumed": bool(resumed), "history": trainer.history}
    result = {
        "strategy": cfg.strategy,
        "arch": request.arch,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "task": task,
        "classes": list(train_table.classes),
        "monitor": trainer.monitor,
        "val": val_metrics,
        "test": test_metrics,
        "sizes": {name: len(d) for name, d in datasets.items()},
        "resumed": bool(resumed),
        "history": trainer.history,
        "linear_probe": next((h["linear_probe"] for h in reversed(trainer.history) if "linear_probe" in h), None),
        "config": {
            "protocol": cfg.protocol,
            "train": config_dict(cfg),
            "strategy": strategy.config_dict(),
            "weights": adapted.weights if started_from is not None else request.weights,
            **({"init": started_from} if started_from is not None else {}),
            "image_size": adapted.preprocessing.crop,
            "resize": adapted.preprocessing.resize,
            "data": shown_path(request.data, request.anonymize_paths),
            "val": shown_path(request.val, request.anonymize_paths) if request.val
            else f"stratified {VAL_FRACTION:.0%} of data (seed {cfg.seed})",
            "test": shown_path(request.test, request.anonymize_paths),
            "on_bad_image": request.on_bad_image,
            "anonymize_paths": request.anonymize_paths,
        },
        "environment": {
            "shiftkit": __version__,
            "torch": torch.__version__,
            "device": str(trainer.device),
            "gpu": torch.cuda.get_device_name() if trainer.device.type == "cuda" else None,
            "machine": platform.machine(),
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "precision": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "fp32",
            "loader_workers": trainer.num_workers,
        },
        "decoded_images": cache.decodes,
        "skipped_images": [s.to_dict(request.anonymize_paths) for s in skipped],
    }
    if ctx.is_main:
        write_json(request.out / "metrics.json", result)
    distributed.barrier(ctx)
    return result
