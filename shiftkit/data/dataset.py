"""Torch dataset over an :class:`ImageTable`, serving cached uint8 images and their targets."""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from shiftkit.data.cache import ImageCache
from shiftkit.data.table import ImageRecord, ImageTable
from shiftkit.errors import DataError


RawImageTap = Callable[[int, np.ndarray, ImageRecord, dict], None]
"""``on_raw(index, array, record, header)``: the decoded image of row ``index`` before resize and crop."""


class ImageDataset(Dataset):
    """Items are ``(uint8 C x H x W image, target)``; normalisation happens per batch on the device.

    ``on_raw`` (the raw tap, e.g. :class:`shiftkit.shift.image_properties.PropertyTap`) is called with
    ``(index, array, record, header)`` each time an item's file is actually decoded: ``array`` is
    :func:`~shiftkit.data.readers.read_image`'s float array (read it, never write it: the model's input is made from
    it), ``header`` holds ``spacing`` for medical formats. A cache hit decodes nothing and calls nothing (see
    :meth:`ImageCache.get`). Without ``on_raw`` nothing changes."""

    def __init__(self, table: ImageTable, cache: ImageCache, on_raw: RawImageTap | None = None) -> None:
        self.table = table
        self.cache = cache
        self.on_raw = on_raw
        self.targets = torch.from_numpy(table.targets()) if table.labeled else None

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int):
        record = self.table.records[index]
        if self.on_raw is None:
            image = self.cache.get(record.path)
        else:
            on_raw = self.on_raw
            image = self.cache.get(record.path, lambda array, header: on_raw(index, array, record, header))
        target = self.targets[index] if self.targets is not None else torch.tensor(-1)
        return image, target

    def warm(self, threads: int = 4, on_image: Callable[[], None] | None = None) -> None:
        """Decode every image once, in parallel threads, before the first epoch.

        Raises the first :class:`~shiftkit.errors.ImageReadError` it meets, naming the file; to skip bad images
        instead, filter the table first with :func:`shiftkit.data.validate.decode_all`.
        """
        from shiftkit.data.validate import decode_all

        decode_all(self.table, self.cache, "fail", threads=threads, on_image=on_image)


def collate(items) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images that may mix 1 and 3 channels (grayscale becomes 3 channels)."""
    images, targets = zip(*items)
    channels = max(image.shape[0] for image in images)
    images = [image.expand(channels, -1, -1) if image.shape[0] != channels else image for image in images]
    return torch.stack(images), torch.stack(list(targets))


def stratified_split(table: ImageTable, fraction: float | int, seed: int) -> tuple[ImageTable, ImageTable]:
    """Split off ``fraction`` of the table (or that many images, when an int) as a second part, keeping label
    proportions (seeded); unlabelled tables and labels seen once are split at random."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(table))
    strata = ["|".join(r.labels) for r in table.records]
    counts = Counter(strata)
    stratify = strata if len(counts) > 1 and min(counts.values()) >= 2 else None
    try:
        train_idx, val_idx = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as exc:
        if table.multilabel:  # more label combinations than validation images: stratifying is impossible
            warnings.warn(f"{table.source}: label combinations too many to stratify; validation split is random")
            train_idx, val_idx = train_test_split(indices, test_size=fraction, random_state=seed)
            return table.subset(sorted(train_idx)), table.subset(sorted(val_idx))
        raise DataError(
            f"{table.source}: cannot split off a stratified validation set ({exc}); give a validation set with --val"
        ) from None
    return table.subset(sorted(train_idx)), table.subset(sorted(val_idx))
