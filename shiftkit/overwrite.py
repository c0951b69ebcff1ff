"""Output paths never replace inputs: one check for every command whose ``--out`` could name an input.

``adapt-bn RUN TARGET --out RUN`` used to write over the source model's ``checkpoints/best.pt`` and
``metrics.json``; ``harmonize --out REFERENCE`` over the reference's manifest. :func:`refuse_overwriting_inputs`
is called with what a command reads and what it will write, before any work, and refuses (one line naming both)
when the output folder *is* an input folder or an output file *is* an input file (after resolving symlinks,
``..`` and relative spellings). A data folder read whole (class folders, a flat image folder: every sub-folder is a
class, every image below is data) cannot hold the output folder anywhere inside it either: ``diagnose SRC TGT --out
SRC/results`` would make ``results`` a class of SRC (its ``plots/*.png`` images) the next time SRC is read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from shiftkit.errors import ConfigError


def _resolved(path: Path) -> Path:
    """The path with symlinks and ``..`` resolved; a symlink loop or an over-long name (said by the reader later)
    stays as given, made absolute."""
    path = Path(path).expanduser()
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return Path(os.path.abspath(path))


def _is(test, path: Path) -> bool:
    try:
        return test(path)
    except (OSError, ValueError):  # a name over the file system's limit, a NUL byte
        return False


def refuse_overwriting_inputs(out: Path, writes: Iterable[Path], inputs: Mapping[str, Path | None],
                              option: str = "--out", scanned: Iterable[str] = ()) -> None:
    """Refuse ``out`` when it is one of the ``inputs`` folders (name -> path, e.g. ``{"target": ...}``) or when
    one of the files it ``writes`` is an input file. ``None`` inputs (options not given) are skipped.
    ``scanned``: names of inputs that, when they are folders, are read whole (a dataset of class folders or a flat
    image folder); ``out`` anywhere inside one is refused too, as its outputs would become part of that data."""
    out_path = _resolved(out)
    written = [_resolved(w) for w in writes]
    scanned = set(scanned)
    for what, path in inputs.items():
        if path is None:
            continue
        resolved = _resolved(path)
        inside = resolved != out_path and out_path.is_relative_to(resolved)
        if what in scanned and inside and _is(Path.is_dir, resolved):
            raise ConfigError(f"{option} {out} is inside the {what} folder ({path}), which is read whole as data: "
                              f"the outputs would become part of the {what} (a new class, or more images) the next "
                              f"time it is read; choose another {option}")
        if resolved == out_path and _is(Path.is_dir, resolved):
            replaced = [w.relative_to(out_path).as_posix() for w in written
                        if _is(Path.is_file, w) and w.is_relative_to(out_path)]
            effect = (f"replace its {' and '.join(replaced)}" if replaced
                      else f"overwrite the {what}'s files or mix the outputs into them")
            raise ConfigError(f"{option} {out} is the {what} ({path}): writing there would {effect}; "
                              f"choose another {option}")
        if resolved in written:
            raise ConfigError(f"{option} {out} would overwrite the {what} {path}; choose another {option}")
