"""What is where: an :class:`ImageTable` lists image files with their labels, site and spacing.

Three inputs are accepted (see README, "Data"):
  (a) a folder with one sub-folder per class,
  (b) a flat folder of unlabeled images,
  (c) a CSV manifest with columns ``path,label`` and optional ``site`` and ``spacing``; relative paths resolve
      against the CSV's folder; a multi-label row separates its labels with ``|``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from shiftkit.data.csvfile import read_csv, require_file
from shiftkit.data.paths import path_problem, safe_resolve
from shiftkit.data.readers import is_image_path
from shiftkit.errors import DataError

LABEL_SEPARATOR = "|"


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    labels: tuple[str, ...] = ()
    site: str | None = None
    spacing: tuple[float, ...] | None = None
    origin: str = ""  # where the record came from, for error messages ("row 7 of train.csv")


@dataclass(frozen=True)
class ImageTable:
    """An ordered list of images plus the class vocabulary (sorted, or as given)."""

    records: tuple[ImageRecord, ...]
    classes: tuple[str, ...]
    multilabel: bool = False
    source: str = ""
    _index: dict = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labeled(self) -> bool:
        return bool(self.records) and all(r.labels for r in self.records)

    @property
    def task(self) -> str:
        """``binary``, ``multiclass`` or ``multilabel``: decides the loss and the metrics."""
        if self.multilabel:
            return "multilabel"
        return "binary" if len(self.classes) == 2 else "multiclass"

    def targets(self) -> np.ndarray:
        """Class indices (single-label, shape ``n``) or a multi-hot matrix (multi-label, ``n x C``)."""
        if not self.labeled:
            raise DataError(f"{self.source}: the images have no labels")
        lookup = {name: i for i, name in enumerate(self.classes)}
        if self.multilabel:
            out = np.zeros((len(self.records), len(self.classes)), dtype=np.float32)
            for row, record in enumerate(self.records):
                out[row, [lookup[label] for label in record.labels]] = 1.0
            return out
        return np.array([lookup[r.labels[0]] for r in self.records], dtype=np.int64)

    def class_counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.classes}
        for record in self.records:
            for label in record.labels:
                counts[label] += 1
        return counts

    def subset(self, indices: Sequence[int]) -> "ImageTable":
        return replace(self, records=tuple(self.records[i] for i in indices), _index={})

    def with_classes(self, classes: Sequence[str], multilabel: bool | None = None,
                     role: str = "training") -> "ImageTable":
        """Adopt another table's class vocabulary (e.g. the training set's), refusing labels it lacks;
        ``role`` names that other table in the error (``training``, ``source``)."""
        known = set(classes)
        for record in self.records:
            unknown = [label for label in record.labels if label not in known]
            if unknown:
                raise DataError(
                    f"{record.origin or record.path}: label '{unknown[0]}' is not one of the {role} classes "
                    f"({', '.join(classes)})"
                )
        return replace(self, classes=tuple(classes), multilabel=self.multilabel if multilabel is None else multilabel)

    def require_all_classes(self) -> None:
        """A training set needs at least one image of every class."""
        empty = [name for name, count in self.class_counts().items() if count == 0]
        if empty:
            raise DataError(f"{self.source}: class '{empty[0]}' has no images")


def finite_number(label: str) -> float | None:
    """The finite number ``label`` spells, or None (labels and metadata values are text until read as numbers)."""
    try:
        value = float(label)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def check_label_spellings(records: Sequence[ImageRecord]) -> None:
    """Refuse labels that are one number written two ways (``0`` and ``0.0``, ``1`` and ``1.00``): as text they
    would silently become two classes. The error names both rows."""
    first_seen: dict[str, str] = {}
    by_value: dict[float, str] = {}
    for record in records:
        for label in record.labels:
            if label in first_seen:
                continue
            first_seen[label] = record.origin or str(record.path)
            value = finite_number(label)
            if value is None:
                continue
            other = by_value.setdefault(value, label)
            if other != label:
                raise DataError(f"{first_seen[label]}: label '{label}' is label '{other}' ({first_seen[other]}) "
                                "written another way; they would become two classes (write each class one way)")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p) and not p.name.startswith("."))


def _from_class_folders(folder: Path, class_dirs: list[Path]) -> ImageTable:
    records: list[ImageRecord] = []
    for class_dir in class_dirs:
        files = _image_files(class_dir)
        if not files:
            raise DataError(f"{class_dir}: class '{class_dir.name}' has no images")
        records += [ImageRecord(path=f, labels=(class_dir.name,), origin=str(f)) for f in files]
    check_label_spellings(records)
    classes = tuple(sorted(d.name for d in class_dirs))
    return ImageTable(records=tuple(records), classes=classes, source=str(folder))


def _parse_spacing(text: str, origin: str) -> tuple[float, ...] | None:
    text = text.strip()
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.replace("x", " ").replace(",", " ").split())
    except ValueError:
        raise DataError(f"{origin}: spacing '{text}' is not a number or a list of numbers") from None
    if not values or any(not np.isfinite(v) or v <= 0 for v in values):
        raise DataError(f"{origin}: spacing '{text}' must be positive")
    return values


def read_manifest(csv_path: str | Path) -> ImageTable:
    """Parse a ``path,label[,site][,spacing]`` CSV. ``label`` may be empty for unlabeled images."""
    csv_path = Path(csv_path)
    base = csv_path.parent
    table = read_csv(csv_path, "manifest")
    columns = table.header
    if "path" not in columns:
        raise DataError(f"{csv_path}: manifest needs a 'path' column (found: {', '.join(columns) or 'none'})")
    rows = table.dicts()
    if not rows:
        raise DataError(f"{csv_path}: manifest has no rows")
    records, seen, multilabel = [], {}, False
    for number, row in zip(table.numbers, rows):  # line 1 is the header
        origin = f"{csv_path.name} row {number}"
        raw_path = row.get("path", "").strip()
        if not raw_path:
            raise DataError(f"{origin}: empty path")
        path = Path(raw_path).expanduser()
        path = path if path.is_absolute() else (base / path)
        path = safe_resolve(path)
        if path in seen:
            raise DataError(f"{origin}: duplicate path {raw_path} (also {seen[path]})")
        seen[path] = origin
        label_text = row.get("label", "").strip()
        labels = tuple(sorted({s.strip() for s in label_text.split(LABEL_SEPARATOR) if s.strip()}))
        multilabel |= LABEL_SEPARATOR in label_text
        records.append(
            ImageRecord(
                path=path,
                labels=labels,
                site=row.get("site", "").strip() or None,
                spacing=_parse_spacing(row.get("spacing", ""), origin),
                origin=origin,
            )
        )
    labeled = [r for r in records if r.labels]
    if labeled and len(labeled) != len(records):
        missing = next(r for r in records if not r.labels)
        raise DataError(f"{missing.origin}: empty label (label every row, or none for an unlabeled set)")
    check_label_spellings(records)
    classes = tuple(sorted({label for r in records for label in r.labels}))
    return ImageTable(records=tuple(records), classes=classes, multilabel=multilabel, source=str(csv_path))


def load_table(path: str | Path) -> ImageTable:
    """Open a class-folder tree, a flat folder or a CSV manifest (decided by what ``path`` is)."""
    path = Path(path).expanduser()
    if path_problem(path) == "file not found":
        raise DataError(f"{path}: no such file or folder")
    require_file(path, "manifest", allow_folder=True)  # a pipe, a device, a symlink loop, ...: said as such
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{path}: expected a folder or a .csv manifest")
        return read_manifest(path)
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [p for p in path.iterdir() if p.is_file() and is_image_path(p)]
    if class_dirs and not loose:
        return _from_class_folders(path, class_dirs)
    files = _image_files(path) if not class_dirs else loose
    if not files:
        raise DataError(f"{path}: folder has no images")
    records = tuple(ImageRecord(path=f, origin=str(f)) for f in sorted(files))
    return ImageTable(records=records, classes=(), source=str(path))


def seeded_subset(strata: Sequence[str], limit: int | None, seed: int) -> list[int]:
    """Sorted positions of a seeded subset of ``limit`` items (all of them when ``limit`` is None or not below their
    number), stratified by ``strata`` (one key per item, e.g. its labels) so that rare classes survive; a plain
    seeded random subset when a key occurs once, all keys are equal, or there are more keys than places. One rule
    for diagnose's ``--max-images``, the audit's ``--max-images-per-site`` and harmonize's measurement."""
    from collections import Counter

    from sklearn.model_selection import train_test_split

    n = len(strata)
    if limit is None or n <= limit:
        return list(range(n))
    counts = Counter(strata)
    stratify = list(strata) if len(counts) > 1 and min(counts.values()) >= 2 else None
    try:
        chosen, _ = train_test_split(np.arange(n), train_size=limit, random_state=seed, stratify=stratify)
    except ValueError:  # more classes than places in the subset: stratifying is impossible
        chosen, _ = train_test_split(np.arange(n), train_size=limit, random_state=seed)
    return sorted(int(i) for i in chosen)


def subsample_table(table: ImageTable, limit: int | None, seed: int) -> ImageTable:
    """At most ``limit`` images of ``table``: :func:`seeded_subset` stratified by each image's labels."""
    if limit is None or len(table) <= limit:
        return table
    return table.subset(seeded_subset([LABEL_SEPARATOR.join(r.labels) for r in table.records], limit, seed))
