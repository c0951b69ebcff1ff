"""Find bad images up front, in the one decoding pass a run needs anyway.

``decode_all`` decodes every image of a table once, in threads, straight into the :class:`ImageCache`
(so training never decodes them again), and applies the ``--on-bad-image`` policy:

- ``fail`` (default): the first unreadable image, in table order, stops the run with one line naming it,
  before anything is written;
- ``skip``: unreadable images leave the table and are listed (path, reason) for the report.

Images are checked before the first epoch, never mid-epoch. ``iter_batches`` applies the same policy to a
streaming pass (diagnose's embedding), which decodes each image exactly once and keeps no image beyond its batch.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from shiftkit.data.cache import ImageCache
from shiftkit.data.table import ImageTable
from shiftkit.errors import ConfigError, DataError, ImageReadError

BAD_IMAGE_POLICIES = ("fail", "skip")
CHUNK = 16  # images per thread task


class CacheOverflowWarning(UserWarning):
    """More decoded images than the in-memory cache's budget: the rest are decoded again when used."""


@dataclass(frozen=True)
class SkippedImage:
    """An image left out under ``--on-bad-image skip``: where it is, why, and its position in its table."""

    path: str
    reason: str
    index: int = -1
    origin: str = ""

    def to_dict(self, anonymize: bool = False) -> dict:
        from shiftkit.privacy import anonymize_path, scrub_path

        if not anonymize:
            return {"path": self.path, "reason": self.reason}
        return {"path": anonymize_path(self.path), "reason": scrub_path(self.reason, self.path)}


def check_policy(policy: str) -> None:
    if policy not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"--on-bad-image must be one of {', '.join(BAD_IMAGE_POLICIES)} (got '{policy}')")


def _reason(error: ImageReadError, path: str) -> str:
    """The error without its leading ``PATH: `` (the report has the path in its own field)."""
    text = str(error)
    return text[len(path) + 2:] if text.startswith(f"{path}: ") else text


def decode_all(
    table: ImageTable,
    cache: ImageCache,
    policy: str = "fail",
    threads: int = 4,
    on_image: Callable[[], None] | None = None,
) -> tuple[ImageTable, list[SkippedImage]]:
    """Decode every image of ``table`` once into ``cache``; return the table of readable images and the skipped.

    Under ``fail`` the first bad image (in table order) raises :class:`ImageReadError`; pending decodes are
    cancelled so a bad first image of 100,000 stops the run at once.
    """
    check_policy(policy)

    def check(chunk: range) -> list[str | None]:
        """Decode a run of images; a reason per image (None: fine). Chunks keep thread overhead off 100k sets."""
        reasons = []
        for index in chunk:
            path = table.records[index].path
            try:
                cache.get(path)  # the tensor stays in the cache (within its budget), not in this pass's results
                reasons.append(None)
            except ImageReadError as exc:
                if policy == "fail":
                    raise
                reasons.append(_reason(exc, str(path)))
        return reasons

    chunks = [range(start, min(start + CHUNK, len(table))) for start in range(0, len(table), CHUNK)]
    keep, skipped, overflow_before = [], [], cache.overflow
    pool = ThreadPoolExecutor(max_workers=max(1, threads))
    try:
        for chunk, reasons in zip(chunks, pool.map(check, chunks)):
            for index, reason in zip(chunk, reasons):
                if reason is None:
                    keep.append(index)
                else:
                    record = table.records[index]
                    skipped.append(SkippedImage(str(record.path), reason, index, record.origin))
                if on_image is not None:
                    on_image()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if cache.overflow > overflow_before:
        warnings.warn(
            f"{cache.overflow - overflow_before} image(s) did not fit the in-memory image cache "
            f"({cache.max_memory_bytes / 1024**3:.1f} GiB): they are decoded again when used; "
            "--cache-dir keeps them on disk instead", CacheOverflowWarning, stacklevel=2,
        )
    return (table.subset(keep) if skipped else table), skipped


def iter_batches(
    dataset,
    batch_size: int,
    policy: str,
    skipped: list[SkippedImage],
    collate: Callable,
    pin_memory: bool = False,
) -> Iterator:
    """Batches of ``dataset`` in order, decoding each image once; bad images raise (``fail``) or are appended
    to ``skipped`` and left out (``skip``). Only one batch of images is alive at a time."""
    check_policy(policy)
    records = dataset.table.records
    for start in range(0, len(dataset), batch_size):
        items = []
        for index in range(start, min(start + batch_size, len(dataset))):
            try:
                items.append(dataset[index])
            except ImageReadError as exc:
                if policy == "fail":
                    raise
                record = records[index]
                skipped.append(SkippedImage(str(record.path), _reason(exc, str(record.path)), index, record.origin))
        if not items:
            continue
        images, targets = collate(items)
        if pin_memory and torch.cuda.is_available():
            images = images.pin_memory()
        yield images, targets


def require_images_left(
    table: ImageTable, skipped: list[SkippedImage], role: str, minimum: int = 1, all_classes: bool = False
) -> None:
    """After skipping, a table must still be usable: ``minimum`` images and, when ``all_classes``, at least one
    image of every class (a training set)."""
    if not skipped:
        return
    if len(table) < minimum:
        raise DataError(f"{table.source}: {len(table)} readable {role} image(s) left after skipping "
                        f"{len(skipped)} unreadable one(s); at least {minimum} needed")
    if all_classes and table.labeled:
        empty = [name for name, count in table.class_counts().items() if count == 0]
        if empty:
            raise DataError(f"{table.source}: class '{empty[0]}' has no readable {role} images left after skipping "
                            f"{len(skipped)} unreadable one(s)")
