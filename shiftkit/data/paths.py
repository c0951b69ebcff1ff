"""What a path given by a user is, in words, when it is not a plain file: one clear line for odd paths.

``path_problem`` never raises: a missing file, a folder, a FIFO (or a process substitution such as ``/dev/fd/63``),
a character or block device, a socket, a symlink loop, a name longer than the file system allows and a path with a
NUL byte each get a short description, so that readers refuse them with a message saying what the path *is*
(a device is not "not found") and nothing blocks reading a pipe or an endless device such as ``/dev/zero``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

KINDS = (
    (stat.S_ISDIR, "is a folder, not a file"),
    (stat.S_ISFIFO, "is a pipe (FIFO or process substitution), not a file"),
    (stat.S_ISCHR, "is a character device, not a file"),
    (stat.S_ISBLK, "is a block device, not a file"),
    (stat.S_ISSOCK, "is a socket, not a file"),
)


def path_problem(path: str | Path, missing: str = "file not found") -> str | None:
    """None for a regular file (after following links); otherwise what the path is, e.g. ``is a character
    device, not a file``, ``is a symlink loop``, ``file name is too long (300 bytes; ...)``,
    or ``missing`` when nothing is there."""
    text = os.fspath(path)
    if "\x00" in text:
        return "path contains a NUL byte"
    try:
        mode = os.stat(text).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop (too many levels of symbolic links)"
        if exc.errno == errno.ENAMETOOLONG:
            longest = max((len(part.encode()) for part in Path(text).parts), default=0)
            return f"file name is too long ({longest} bytes; the file system allows 255)"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if os.path.islink(text):
                return f"is a broken symbolic link (to {os.readlink(text)})"
            return missing
        if exc.errno == errno.EACCES:
            return "cannot read file (permission denied)"
        return f"cannot read file ({exc.strerror or type(exc).__name__})"
    except ValueError:  # embedded NUL on some platforms
        return "path contains a NUL byte"
    for test, words in KINDS:
        if test(mode):
            return words
    return None


def safe_resolve(path: Path) -> Path:
    """``path.resolve()`` that never raises (a symlink loop or an over-long name stays as given, absolute)."""
    try:
        return Path(str(path.resolve()))
    except (OSError, RuntimeError, ValueError):
        return Path(os.path.abspath(os.fspath(path)))
