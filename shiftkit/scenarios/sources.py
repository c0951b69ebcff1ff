"""The image pools scenarios are drawn from, read from the shared data folder (``../shared/data``; see its README):
MedMNIST ``.npz`` files (exported to PNG by :func:`shiftkit.data.medmnist.export_npz` when a scenario is built) and
the HAM10000 site table (``ham10000_sites/metadata.csv``: ``path,label,site,...``).

Only labels are read to plan a scenario, so planning the whole catalogue takes seconds and writes nothing.
"""

from __future__ import annotations

import csv
import functools
import os
from pathlib import Path

import numpy as np

from shiftkit.data.medmnist import export_npz
from shiftkit.errors import DataError
from shiftkit.scenarios.sampling import Row

MEDMNIST = ("pneumoniamnist", "breastmnist")
SPLITS = ("train", "val", "test")
HAM_METADATA = Path("ham10000_sites") / "metadata.csv"


def data_root(root: str | Path | None = None) -> Path:
    """The shared data folder: ``root`` when given, else ``$SHIFTKIT_SHARED/data``, else ``../shared/data`` beside
    the repository (the layout of the development machines)."""
    if root is not None:
        return Path(root)
    if os.environ.get("SHIFTKIT_SHARED"):
        return Path(os.environ["SHIFTKIT_SHARED"]) / "data"
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def npz_path(root: Path, dataset: str) -> Path:
    path = Path(root) / "medmnist" / f"{dataset}.npz"
    if not path.is_file():
        raise DataError(f"{path}: MedMNIST file not found (pass data_root, or set SHIFTKIT_SHARED)")
    return path


@functools.lru_cache(maxsize=8)
def _npz_labels(path: str, mtime: int) -> dict[str, tuple[str, ...]]:
    with np.load(path) as arrays:
        result = {}
        for split in SPLITS:
            labels = arrays[f"{split}_labels"]
            labels = labels.reshape(len(labels), -1)
            if labels.shape[1] != 1:
                raise DataError(f"{path}: multi-label MedMNIST sets are not scenario datasets")
            result[split] = tuple(str(int(v)) for v in labels[:, 0])  # as export_npz writes them
    return result


def medmnist_rows(root: Path, dataset: str, base: Path) -> dict[str, list[Row]]:
    """Rows of each official split, at the paths :func:`export_medmnist` writes (``base/<split>/<index>.png``)."""
    path = npz_path(root, dataset)
    labels = _npz_labels(str(path), path.stat().st_mtime_ns)
    base = Path(base).resolve()
    return {split: [Row(str(base / split / f"{index:05d}.png"), label) for index, label in enumerate(values)]
            for split, values in labels.items()}


def export_medmnist(root: Path, dataset: str, base: Path) -> None:
    """Export the dataset's PNGs once (``export_npz`` writes each split's manifest after its images, so three
    manifests mean a complete export; an interrupted one is completed)."""
    if all((Path(base) / f"{split}.csv").is_file() for split in SPLITS):
        return
    export_npz(npz_path(root, dataset), base)


@functools.lru_cache(maxsize=4)
def _ham_table(path: str, mtime: int) -> tuple[Row, ...]:
    folder = Path(path).parent.resolve()
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label", "site"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: needs the columns path, label and site (missing {sorted(missing)})")
        return tuple(Row(str(folder / r["path"]), r["label"], r["site"]) for r in reader)


def ham_rows(root: Path, site: str, classes: tuple[str, ...] | None = None) -> list[Row]:
    """The HAM10000 images of one site, optionally only those of ``classes``, sorted by path."""
    path = Path(root) / HAM_METADATA
    if not path.is_file():
        raise DataError(f"{path}: HAM10000 site table not found (pass data_root, or set SHIFTKIT_SHARED)")
    table = _ham_table(str(path), path.stat().st_mtime_ns)
    sites = sorted({r.site for r in table})
    if site not in sites:
        raise DataError(f"{path}: no site '{site}' (sites: {', '.join(sites)})")
    rows = [r for r in table if r.site == site and (classes is None or r.label in classes)]
    return sorted(rows, key=lambda r: r.path)
