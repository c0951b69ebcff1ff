"""Output paths never replace inputs: one check for every command whose ``--out`` could name an input.

``adapt-bn RUN TARGET --out RUN`` used to write over the source model's ``checkpoints/best.pt`` and
``metrics.json``; ``harmonize --out REFERENCE`` over the reference's manifest. :func:`refuse_overwriting_inputs`
is called with what a command reads and what it will write, before any work, and refuses (one line naming both)
when the output folder *is* an input folder or an output file *is* an input file (after resolving symlinks,
``..`` and relative spellings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from shiftkit.errors import ConfigError


def _resolved(path: Path) -> Path:
    return Path(path).expanduser().resolve()


def refuse_overwriting_inputs(out: Path, writes: Iterable[Path], inputs: Mapping[str, Path | None],
                              option: str = "--out") -> None:
    """Refuse ``out`` when it is one of the ``inputs`` folders (name -> path, e.g. ``{"target": ...}``) or when
    one of the files it ``writes`` is an input file. ``None`` inputs (options not given) are skipped."""
    out_path = _resolved(out)
    written = [_resolved(w) for w in writes]
    for what, path in inputs.items():
        if path is None:
            continue
        resolved = _resolved(path)
        if resolved == out_path and resolved.is_dir():
            replaced = [w.relative_to(out_path).as_posix() for w in written
                        if w.is_file() and w.is_relative_to(out_path)]
            effect = (f"replace its {' and '.join(replaced)}" if replaced
                      else f"overwrite the {what}'s files or mix the outputs into them")
            raise ConfigError(f"{option} {out} is the {what} ({path}): writing there would {effect}; "
                              f"choose another {option}")
        if resolved in written:
            raise ConfigError(f"{option} {out} would overwrite the {what} {path}; choose another {option}")
