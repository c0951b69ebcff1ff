"""Data pipeline: decoded-image cache against decoding every epoch (images/s the loader can feed).

The trainer decodes and resizes every image once (``ImageCache``; ``ImageDataset.warm`` before the first epoch)
and then serves uint8 tensors from memory; loader workers are forked after that and inherit the cache. This
script measures what that buys, with no model in the loop (so the numbers are the feed rate a GPU could use):

- ``decode_every_epoch``: no memory cache (``max_memory_bytes=0``): each epoch reads and decodes every file;
- ``disk_cache``: the ``--cache-dir`` ``.npy`` cache, no memory cache: the first epoch decodes and writes, later
  epochs read the arrays;
- ``memory_cache``: warmed once (its one-off cost is reported as ``warm_seconds``), then every epoch from memory.

Each mode runs with every ``--workers`` count through the same DataLoader settings as the trainer (persistent
workers, batch 64, the trainer's collate). Images: HAM10000 JPEGs (``--data``: a CSV manifest or class folders;
default ``../shared/data/ham10000_sites/metadata.csv`` when present, else 128 px phantom PNGs), resized to
``--image-size``.

    python benchmarks/data_pipeline.py --limit 2000 --image-size 224 --epochs 3 --workers 0,4,8 \
        --out runs/data_pipeline.json
    python benchmarks/data_pipeline.py --quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mmd_speed import _machine_info  # noqa: E402

from shiftkit.data import ImageCache, ImageDataset, load_table  # noqa: E402
from shiftkit.data.preprocess import Preprocessing  # noqa: E402
from shiftkit.data.synthetic import write_dataset  # noqa: E402
from shiftkit.finetune.distributed import SINGLE, GlobalBatchSampler  # noqa: E402
from shiftkit.finetune.trainer import _Collate  # noqa: E402
from shiftkit.io import write_json  # noqa: E402

HAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "ham10000_sites" / "metadata.csv"


def epochs_through(dataset: ImageDataset, workers: int, epochs: int, batch: int) -> list[float]:
    """Seconds per epoch to draw every batch (shuffled, as training does) through one persistent loader."""
    sampler = GlobalBatchSampler(len(dataset), batch, SINGLE, shuffle=True)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=_Collate(dataset), num_workers=workers,
                        persistent_workers=workers > 0)
    seconds = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        for images, _ in loader:
            images.sum()  # touch the batch
        seconds.append(time.perf_counter() - started)
    del loader
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HAM if HAM.is_file() else None)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", default="0,2,4")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache-dir", type=Path, default=None, help="disk cache folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("runs/data_pipeline.json"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 48 images, 2 epochs, workers 0,2")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit, args.epochs, args.workers, args.image_size = 48, 2, "0,2", 64
    workers = [int(w) for w in args.workers.split(",")]
    prep = Preprocessing.for_arch("resnet50", args.image_size)  # resize then centre-crop, as finetune does
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or write_dataset(Path(tmp) / "phantoms", per_class=-(-args.limit // 3), size=128)
        table = load_table(data)
        if len(table) > args.limit:
            table = table.subset(list(range(args.limit)))
        print(f"{len(table)} images from {data}, resized to {args.image_size} px; "
              f"{args.epochs} epochs, batch {args.batch_size}")
        print(f"{'mode':20} {'workers':>7} {'img/s per epoch':>40}")
        for mode in ("decode_every_epoch", "disk_cache", "memory_cache"):
            for count in workers:
                disk = (args.cache_dir or Path(tmp) / "disk") / f"w{count}" if mode == "disk_cache" else None
                cache = ImageCache(prep, disk_dir=disk, max_memory_bytes=0 if mode != "memory_cache" else 8 * 2**30)
                dataset = ImageDataset(table, cache)
                warm = None
                if mode == "memory_cache":
                    started = time.perf_counter()
                    dataset.warm()
                    warm = time.perf_counter() - started
                seconds = epochs_through(dataset, count, args.epochs, args.batch_size)
                rates = [len(table) / s for s in seconds]
                results[f"{mode}/workers={count}"] = {
                    "mode": mode, "workers": count, "epoch_seconds": seconds, "images_per_second": rates,
                    "warm_seconds": warm, "main_process_decodes": cache.decodes,
                }
                print(f"{mode:20} {count:>7} " + " ".join(f"{r:9.0f}" for r in rates)
                      + (f"   (warm-up {warm:.1f} s)" if warm is not None else ""), flush=True)
    write_json(args.out, {
        "benchmark": "data pipeline: decoded-image cache vs decoding every epoch",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "images": len(table),
        "machine": _machine_info("cpu", None),
        "results": results,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
