"""Where harmonized images are written and the manifest that lists them: the output folder mirrors the input's
layout (suffix by output format), and ``manifest.csv`` is a table ``load_table`` reads back."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from shiftkit.data.table import ImageTable
from shiftkit.io import write_text


def input_root(table: ImageTable) -> Path:
    """The folder the output mirrors: the input folder, or the manifest's folder when every image lies below it,
    else the images' deepest common folder."""
    source = Path(table.source) if table.source else None
    parents = [str(r.path.resolve().parent) for r in table.records]
    if source is not None:
        base = (source if source.is_dir() else source.parent).resolve()
        if all(p == str(base) or p.startswith(str(base) + os.sep) for p in parents):
            return base
    return Path(os.path.commonpath(parents))


def output_relative(path: Path, root: Path, suffix: str) -> Path:
    """Where the output of the image at ``path`` goes below the output folder: its place below ``root``, with
    ``suffix`` (its output format's) instead of its own."""
    relative = _strip_suffix(path.resolve().relative_to(root))
    return relative.with_name(relative.name + suffix)


def _strip_suffix(relative: Path) -> Path:
    name = relative.name
    lowered = name.lower()
    for suffix in (".nii.gz",):
        if lowered.endswith(suffix):
            return relative.with_name(name[: -len(suffix)])
    return relative.with_suffix("")


def format_spacing(spacing: tuple[float, ...] | None) -> str:
    """The manifest's ``spacing`` cell: ``0.7x0.7x2.5``, empty for none."""
    return "x".join(f"{s:.6g}" for s in spacing) if spacing else ""


def write_manifest(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    """``path,label[,site][,spacing]`` CSV that ``load_table`` reads back (paths relative to its folder)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
