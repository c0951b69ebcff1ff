"""Decoded, resized images cached so that an epoch never decodes a file twice.

Two levels: an in-memory dictionary and an optional disk cache whose keys are the SHA-1 of the file's bytes
plus the reader and preprocessing settings, so a cache survives renames and is invalidated by any change of
content or settings.

The in-memory level is bounded: at most ``max_memory_bytes`` of decoded uint8 images (default 4 GiB, or
``$SHIFTKIT_CACHE_MEMORY_GB``), filled in table order and then frozen. Images beyond the budget are decoded again
when used (or read from the disk cache). Freezing, not LRU, is deliberate: an epoch visits every image once in a
shuffled order, which makes an LRU cache smaller than the set miss on every access, while a frozen one keeps
serving its share. At 224 px an RGB image is 150 kB, so 4 GiB holds about 28,000 images (at 64 px, 350,000).
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from shiftkit.data.paths import path_problem
from shiftkit.data.preprocess import Preprocessing
from shiftkit.data.readers import ReadOptions, read_image
from shiftkit.errors import ImageReadError
from shiftkit.io import atomic_write

DEFAULT_MEMORY_BYTES = 4 * 1024**3

RawTap = Callable[[np.ndarray, dict], None]
"""``on_decode(array, header)``: sees each decoded image once, before resize and crop (see :meth:`ImageCache.get`)."""


def default_memory_bytes() -> int:
    """The in-memory budget: ``$SHIFTKIT_CACHE_MEMORY_GB`` (read when a cache is made) or 4 GiB."""
    text = os.environ.get("SHIFTKIT_CACHE_MEMORY_GB", "").strip()
    try:
        return int(float(text) * 1024**3) if text else DEFAULT_MEMORY_BYTES
    except ValueError:
        return DEFAULT_MEMORY_BYTES


_DIGESTS: dict[tuple, str] = {}
"""SHA-1s already computed in this process, by (path, size, mtime, inode, device): the disk cache, the embedding
cache and the resume fingerprint all key on a file's content, and each would otherwise read every file again.
An edited or replaced file changes its size, mtime or inode, so it is read afresh."""


def file_digest(path: Path) -> str:
    """SHA-1 of a file's bytes (read once per process while the file is unchanged, see ``_DIGESTS``); a missing or
    unreadable file, or one that is not a regular file (a device such as ``/dev/zero`` would never end), is an
    :class:`ImageReadError` naming it."""
    problem = path_problem(path)
    if problem is not None:
        raise ImageReadError(f"{path}: {problem}")
    try:
        stat = path.stat()
        signature = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev)
    except OSError:
        signature = None
    if signature in _DIGESTS:
        return _DIGESTS[signature]
    digest = hashlib.sha1()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read file ({exc.strerror or type(exc).__name__})") from None
    if signature is not None:
        _DIGESTS[signature] = digest.hexdigest()
    return digest.hexdigest()


def content_key(path: Path) -> str:
    """``file_digest`` for keys that must exist even for a bad file (the bad file then fails at decoding)."""
    try:
        return file_digest(path)
    except ImageReadError as exc:
        return f"unreadable:{exc}"


CORRUPT_ENTRY_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def read_entry(target: Path) -> torch.Tensor | None:
    """A disk-cache entry (``C x H x W`` uint8), or None when it is damaged (empty, truncated, not an array, another
    type or shape): a cache entry is only ever recomputed, never fatal."""
    try:
        array = np.load(target, allow_pickle=False)
    except CORRUPT_ENTRY_ERRORS:
        return None
    if not isinstance(array, np.ndarray):  # a zip archive (np.load returns an NpzFile)
        array.close()
        return None
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[0] not in (1, 3):
        return None
    return torch.from_numpy(array)


class ImageCache:
    """``get(path)`` returns the preprocessed uint8 tensor, decoding the file at most once."""

    def __init__(
        self,
        preprocessing: Preprocessing,
        read_options: ReadOptions = ReadOptions(),
        disk_dir: str | Path | None = None,
        max_memory_bytes: int | None = None,
    ) -> None:
        self.preprocessing = preprocessing
        self.read_options = read_options
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.max_memory_bytes = default_memory_bytes() if max_memory_bytes is None else max_memory_bytes
        self._memory: dict[Path, torch.Tensor] = {}
        self._memory_bytes = 0
        self._lock = threading.Lock()  # warm-up decodes in threads
        self._tap = threading.local()  # the raw tap of the get() call running in this thread, if any
        self.decodes = 0  # files actually decoded (for tests and benchmarks)
        self.overflow = 0  # images that did not fit the memory budget

    def _disk_path(self, path: Path) -> Path:
        settings = f"{self.preprocessing.key()}|{self.read_options.key()}"
        key = hashlib.sha1(f"{file_digest(path)}|{settings}".encode()).hexdigest()
        return self.disk_dir / key[:2] / f"{key}.npy"  # type: ignore[operator]

    @property
    def memory_bytes(self) -> int:
        """Bytes of decoded images held in memory now (never above ``max_memory_bytes``)."""
        return self._memory_bytes

    def _decode(self, path: Path) -> torch.Tensor:
        with self._lock:
            self.decodes += 1
        on_decode = getattr(self._tap, "on_decode", None)  # set by get() for this thread's call only
        if on_decode is None:
            return self.preprocessing.geometric(read_image(path, self.read_options))
        header: dict = {}
        array = read_image(path, self.read_options, header)
        on_decode(array, header)  # the raw tap: this decode's array, before resize and crop (read it, never write)
        return self.preprocessing.geometric(array)

    def _load(self, path: Path) -> torch.Tensor:
        if self.disk_dir is None:
            return self._decode(path)
        target = self._disk_path(path)
        if target.is_file():
            stored = read_entry(target)
            if stored is not None:
                return stored
        tensor = self._decode(path)  # no entry, or a damaged one: decoded again and written over it
        def save(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.save(handle, tensor.numpy())

        atomic_write(target, save)
        return tensor

    def get(self, path: Path, on_decode: RawTap | None = None) -> torch.Tensor:
        """The preprocessed image. ``on_decode(array, header)`` (the raw tap) is called when, and only when, this
        call decodes the file: with :func:`read_image`'s float array before resize and crop, and the header fields
        it filled (``spacing``). A memory or disk cache hit decodes nothing and does not call it, so a caller that
        needs it for every image uses a cache that holds nothing (``max_memory_bytes=0``, no ``disk_dir``), as the
        embedding pass does, or checks which images it saw."""
        cached = self._memory.get(path)
        if cached is not None:
            return cached
        if on_decode is None:
            tensor = self._load(path)
        else:  # handed to _decode through a thread-local, so _decode(path) keeps its signature (tests wrap it)
            self._tap.on_decode = on_decode
            try:
                tensor = self._load(path)
            finally:
                self._tap.on_decode = None
        size = tensor.numel() * tensor.element_size()
        with self._lock:
            if path in self._memory:
                return self._memory[path]
            if self._memory_bytes + size <= self.max_memory_bytes:
                self._memory[path] = tensor
                self._memory_bytes += size
            elif self.max_memory_bytes > 0:
                self.overflow += 1
        return tensor
