"""Export a MedMNIST ``.npz`` (Yang et al. 2023) to PNG files plus one manifest per split.

MedMNIST ships arrays, not files; exporting lets its images go through the same data layer as any
hospital's folder (``shiftkit finetune OUT/train.csv --val OUT/val.csv --test OUT/test.csv``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from shiftkit.errors import DataError
from shiftkit.io import atomic_write, write_text


def export_npz(npz_path: str | Path, out: str | Path, limit: int | None = None, seed: int = 0) -> dict[str, Path]:
    """Write ``out/<split>/<index>.png`` and ``out/<split>.csv``; ``limit`` keeps a seeded random subset per split."""
    npz_path, out = Path(npz_path), Path(out)
    if not npz_path.is_file():
        raise DataError(f"{npz_path}: MedMNIST file not found")
    arrays = np.load(npz_path)
    manifests = {}
    for split in ("train", "val", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].reshape(len(arrays[f"{split}_images"]), -1)
        order = np.arange(len(images))
        if limit is not None and limit < len(images):
            order = np.sort(np.random.default_rng(seed).choice(len(images), size=limit, replace=False))
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        manifest = out / f"{split}.csv"
        rows = io.StringIO()
        writer = csv.writer(rows)
        writer.writerow(["path", "label"])
        for index in order:
            target = folder / f"{index:05d}.png"
            if not target.exists():  # atomic: an interrupted export leaves no truncated image to reuse
                atomic_write(target, lambda tmp, pixels=images[index]: Image.fromarray(pixels).save(tmp, format="PNG"))
            label = "|".join(str(j) for j in np.flatnonzero(labels[index])) if labels.shape[1] > 1 else str(labels[index, 0])
            writer.writerow([f"{split}/{target.name}", label])
        write_text(manifest, rows.getvalue())  # the manifest appears only once every image it lists exists
        manifests[split] = manifest
    return manifests
