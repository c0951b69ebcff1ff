"""Training throughput of ``ft`` (images/s) on the GPU path: is the GPU the bottleneck, or the data feed?

Three measurements per batch size, each through the real :class:`~shiftkit.finetune.trainer.Trainer` settings
(bf16 autocast where supported, channels-last, Adam; pinned memory, non-blocking copies and persistent
loader workers on CUDA):

- ``model_only``: one batch already on the device, repeated: the model's ceiling, no data feed at all;
- ``in_memory``: random uint8 images held in memory, fed by the trainer's loader (``Trainer._train_epoch``);
- ``real_data``: image files (``--data``, class folders or a CSV; default: 224 px phantom PNGs written to a
  temporary folder) decoded once into the trainer's image cache (``ImageDataset.warm``), then fed the same way.

An untimed first epoch starts the workers and lets cuDNN pick its kernels; the next ``--epochs`` are timed
(training only, no validation). Without CUDA it still runs (slowly: use ``--quick``) and says so.

    python benchmarks/gpu_throughput.py --arch resnet50 --image-size 224 --batches 64,128 --out runs/gpu.json
    python benchmarks/gpu_throughput.py --quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mmd_speed import _machine_info  # noqa: E402

from shiftkit.data import ImageCache, ImageDataset, load_table  # noqa: E402
from shiftkit.data.synthetic import write_dataset  # noqa: E402
from shiftkit.finetune.strategies import StrategyConfig, make_strategy  # noqa: E402
from shiftkit.finetune.trainer import Trainer, TrainConfig  # noqa: E402
from shiftkit.io import write_json  # noqa: E402
from shiftkit.models import build_model  # noqa: E402


class InMemoryImages(Dataset):
    """``n`` random uint8 3 x size x size images and binary targets, generated once."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
        self.targets = torch.randint(0, 2, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.targets[index]


def _trainer(args, dataset, classes: int, batch: int) -> Trainer:
    torch.manual_seed(0)
    adapted = build_model(args.arch, classes, "none", args.image_size)
    config = TrainConfig(strategy="ft", lr=1e-4, epochs=args.epochs + 1, batch_size=batch, device=args.device,
                         num_workers=args.workers, precision=args.precision)
    strategy = make_strategy("ft", adapted, StrategyConfig(), config)
    trainer = Trainer(adapted, strategy, "multiclass" if classes > 2 else "binary", dataset, dataset, config)
    trainer.strategy.begin_epoch(0, None)
    trainer._apply_plan()
    return trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def loader_throughput(args, dataset, classes: int, batch: int) -> dict:
    trainer = _trainer(args, dataset, classes, batch)
    trainer._train_epoch(0)  # warm-up: workers start, cuDNN autotunes
    seconds = []
    for epoch in range(1, args.epochs + 1):
        _sync(trainer.device)
        started = time.perf_counter()
        trainer._train_epoch(epoch)  # ends with a .item(): the GPU has finished
        seconds.append(time.perf_counter() - started)
    trainer.close()
    return {"images_per_second": len(dataset) * len(seconds) / sum(seconds), "epoch_seconds": seconds,
            "images": len(dataset), "workers": trainer.num_workers,
            "precision": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "fp32"}


def model_only_throughput(args, batch: int) -> dict:
    dataset = InMemoryImages(batch, args.image_size)
    trainer = _trainer(args, dataset, 2, batch)
    images = dataset.images.to(trainer.device)
    targets = dataset.targets.to(trainer.device)
    trainer._set_modes()

    def step() -> None:
        loss = trainer._batch_loss(trainer._forward(images, False, train=True).float(), targets, batch)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()

    for _ in range(args.warmup):
        step()
    _sync(trainer.device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(trainer.device)
    seconds = time.perf_counter() - started
    return {"images_per_second": batch * args.steps / seconds, "steps": args.steps, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--images", type=int, default=4096, help="images per epoch for the loader measurements")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one untimed)")
    parser.add_argument("--steps", type=int, default=50, help="model_only: timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="model_only: untimed steps")
    parser.add_argument("--data", type=Path, default=None, help="image folders or CSV for real_data")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the trainer's)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_throughput.json"))
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: 64 px, batch 8, 32 images, 2 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.image_size, args.batches, args.images, args.epochs = 64, "8", 32, 1
        args.steps, args.warmup = 2, 1
    cuda = torch.cuda.is_available()
    print(f"CUDA available: {cuda}" + (f" ({torch.cuda.get_device_name()})" if cuda else " (CPU only: slow)"))
    batches = [int(b) for b in args.batches.split(",")]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            data = write_dataset(Path(tmp) / "phantoms", per_class=-(-args.images // 3), size=args.image_size)
        else:
            data = args.data
        table = load_table(data)
        if len(table) > args.images:
            table = table.subset(list(range(args.images)))
        adapted = build_model(args.arch, len(table.classes), "none", args.image_size)
        cache = ImageCache(adapted.preprocessing)
        real = ImageDataset(table, cache)
        started = time.perf_counter()
        real.warm(threads=8)
        decode_seconds = time.perf_counter() - started
        synthetic = InMemoryImages(args.images, args.image_size)
        for batch in batches:
            entry = {
                "model_only": model_only_throughput(args, batch),
                "in_memory": loader_throughput(args, synthetic, 2, batch),
                "real_data": loader_throughput(args, real, len(table.classes), batch),
            }
            results[str(batch)] = entry
            print(f"batch {batch:4}: " + "  ".join(f"{k} {v['images_per_second']:8.1f} img/s"
                                                   for k, v in entry.items()), flush=True)
    write_json(args.out, {
        "benchmark": f"{args.arch} ft training throughput at {args.image_size} px",
        "cuda_available": cuda,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "real_data": {"source": str(args.data or "phantom PNGs"), "images": len(table),
                      "decode_and_cache_seconds": decode_seconds},
        "machine": _machine_info("cuda" if cuda else "cpu", None),
        "results": results,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
