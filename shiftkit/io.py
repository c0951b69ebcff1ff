"""Atomic file output: a killed process never leaves a truncated result behind.

- :func:`atomic_write` / :func:`write_files`: one file, or a set of files published together (each written to a
  temporary file beside it, then all renamed), so a failed write leaves the old files, never half a set.
- A failed write (read-only or full disk) is an :class:`~shiftkit.errors.OutputError` naming the file.
- :func:`output_lock`: one run at a time per output folder (``OUT/.shiftkit.lock``, held with ``flock``, which the
  operating system releases when the process dies, so a killed run never leaves the folder locked).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import math
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from shiftkit.errors import OutputError, ShiftkitError

LOCK_NAME = ".shiftkit.lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def write_files(files: dict[Path, Callable[[Path], None]]) -> None:
    """Write a set of files that belong together: ``write(tmp)`` for each on a unique temporary file beside its
    path, then every temporary renamed over its path. A failure (a full disk, Ctrl-C) before the renames leaves
    the previous files and no temporaries; an ``OSError`` becomes an :class:`OutputError` naming the file."""
    staged: list[tuple[Path, Path]] = []
    path = None
    try:
        for path, write in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmp_path = Path(tmp)
            staged.append((tmp_path, path))
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from teammates
            write(tmp_path)
        for tmp_path, path in staged:
            os.replace(tmp_path, path)
    except BaseException as exc:
        for tmp_path, _ in staged:
            with contextlib.suppress(OSError):
                tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, ShiftkitError):
            others = "" if len(files) == 1 else f"; none of the {len(files)} files of this set was written"
            raise OutputError(f"{path}: cannot write the file ({_reason(exc)}){others}") from None
        raise


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a unique temporary file beside ``path``, then rename it over ``path``."""
    write_files({Path(path): write})


def _jsonable(value: Any) -> Any:
    """Turn NaN/inf into null (JSON has no such numbers) and numpy scalars into Python ones."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(data: Any) -> str:
    """``data`` as the indented JSON that :func:`write_json` writes (NaN/inf as null)."""
    return json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n"


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (temp file + rename)."""
    text = json_text(data)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def save_torch(path: str | Path, obj: Any) -> None:
    """``torch.save`` atomically, so a checkpoint is either the old one or the new one."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


# -- one run per output folder -----------------------------------------------------------------------------------

def _new_files(folder: Path, pattern: str | None) -> set[Path]:
    if not folder.is_dir():
        return set()
    found = folder.glob(pattern) if pattern else folder.rglob("*")
    return {p for p in found if p.is_file() or p.is_symlink()}


def _remove_empty(folder: Path, stop: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``stop`` (the first folder this run created) while empty."""
    if stop is None:
        return
    while True:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == stop or folder.parent == folder:
            return
        folder = folder.parent


@contextlib.contextmanager
def output_lock(out: str | Path, *, file: bool = False, name: str = LOCK_NAME,
                clean_failed: bool = True) -> Iterator[Path]:
    """Hold ``--out`` for this run: create it, prove it is writable, and lock it against other shiftkit runs.

    ``out`` is a folder, or with ``file=True`` a file whose folder is checked and whose lock sits beside it
    (``.NAME.shiftkit.lock``). The lock is ``flock`` on a lock file: a second process is refused at once, and a
    killed process releases it with its file descriptors. When the run fails to write an output
    (:class:`OutputError`) and ``clean_failed``, the files it had created are removed, so a full disk leaves no
    half-set of outputs (files that existed before are left as they were)."""
    out = Path(out)
    folder = out.parent if file else out
    lock = folder / (f".{out.name}.shiftkit.lock" if file else name)
    created = None
    for parent in reversed([folder, *folder.parents]):
        if not parent.exists():
            created = parent
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot create the folder {folder} ({_reason(exc)})") from None
    fd, held = None, False
    try:
        for _ in range(20):
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise OutputError(f"--out {out}: cannot write in {folder} ({_reason(exc)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "its owner is not recorded yet"
                raise OutputError(f"--out {out} is in use by another shiftkit run ({holder}); wait for it to "
                                  "finish, or use another --out") from None
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                held = True  # a file system without locks (some network mounts): run unlocked
                break
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                held = True
                break
            os.close(fd)  # the previous holder removed the file between our open and lock: take the new one
            fd = None
        else:
            raise OutputError(f"--out {out}: cannot take the lock {lock} (it keeps being replaced)")
        since = datetime.datetime.now().isoformat(timespec="seconds")
        try:  # the first write into --out: a read-only or full file system fails here, before any work
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n".encode(), 0)
            os.fsync(fd)
        except OSError as exc:
            raise OutputError(f"--out {out}: cannot write in {folder} ({_reason(exc)})") from None
        pattern = f"{_glob_escape(out.stem)}*" if file else None
        before = _new_files(folder, pattern) if clean_failed else set()
        try:
            yield out
        except OutputError:
            if clean_failed:
                for path in _new_files(folder, pattern) - before - {lock}:
                    with contextlib.suppress(OSError):
                        path.unlink()
                if not file:  # and the folders left empty
                    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                        with contextlib.suppress(OSError):
                            path.rmdir()
            raise
    finally:
        if fd is not None:
            if held:  # never the lock file of the run that holds it
                with contextlib.suppress(OSError):
                    os.unlink(lock)
            os.close(fd)
        _remove_empty(folder, created)  # a run that wrote nothing leaves no folder behind


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)
