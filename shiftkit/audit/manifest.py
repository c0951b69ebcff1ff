"""The audit's input: a CSV manifest whose site (and label) column the user names, plus any extra columns.

``shiftkit.data.table.read_manifest`` knows the fixed columns ``path,label,site,spacing``; a multi-center table
usually names its site column otherwise (``hospital``, ``scanner``) and carries more (``dx_type``, ``age``, ``sex``),
which the audit compares across sites. This module reads such a table into an :class:`ImageTable` (labels and
site taken from the named columns) and keeps the other columns' raw values aside.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shiftkit.data.csvfile import read_csv, require_file
from shiftkit.data.paths import path_problem, safe_resolve
from shiftkit.data.table import LABEL_SEPARATOR, ImageRecord, ImageTable, _parse_spacing, check_label_spellings
from shiftkit.errors import DataError

RESERVED = ("path", "spacing")


@dataclass(frozen=True)
class AuditTable:
    """Images with their site (and labels), and the manifest's other columns (raw strings, one per image)."""

    table: ImageTable
    sites: np.ndarray  # one site name per record
    extra: dict[str, list[str]]
    site_column: str
    label_column: str | None

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.sites.tolist()))

    def subset(self, indices) -> "AuditTable":
        indices = [int(i) for i in indices]
        return AuditTable(self.table.subset(indices), self.sites[indices],
                          {k: [v[i] for i in indices] for k, v in self.extra.items()}, self.site_column,
                          self.label_column)


def read_audit_manifest(csv_path: Path, site_column: str, label_column: str | None = None) -> AuditTable:
    """Parse the manifest; one-line errors name the file, row and option."""
    csv_path = Path(csv_path)
    if path_problem(csv_path) != "file not found":  # a pipe, a device, a symlink loop, ...: said as such
        require_file(csv_path, "manifest", allow_folder=True)
    if csv_path.is_dir() or csv_path.suffix.lower() != ".csv":
        raise DataError(f"{csv_path}: an audit needs a CSV manifest with a path column and a site column")
    table = read_csv(csv_path, "manifest")
    columns, rows = table.header, table.dicts(strip_values=True)
    if "path" not in columns:
        raise DataError(f"{csv_path}: manifest needs a 'path' column (found: {', '.join(columns) or 'none'})")
    if site_column not in columns:
        raise DataError(f"{csv_path}: no site column '{site_column}' (--site-column); columns are {', '.join(columns)}")
    if label_column is not None and label_column not in columns:
        raise DataError(f"{csv_path}: no label column '{label_column}' (--label-column); columns are "
                        f"{', '.join(columns)}")
    if not rows:
        raise DataError(f"{csv_path}: manifest has no rows")
    base = csv_path.parent
    records, sites, seen, multilabel = [], [], {}, False
    for number, row in zip(table.numbers, rows):
        origin = f"{csv_path.name} row {number}"
        raw_path = row.get("path", "")
        if not raw_path:
            raise DataError(f"{origin}: empty path")
        path = Path(raw_path).expanduser()
        path = safe_resolve(path if path.is_absolute() else base / path)
        if path in seen:
            raise DataError(f"{origin}: duplicate path {raw_path} (also {seen[path]})")
        seen[path] = origin
        site = row.get(site_column, "")
        if not site:
            raise DataError(f"{origin}: empty site in column '{site_column}'")
        labels: tuple[str, ...] = ()
        if label_column is not None:
            text = row.get(label_column, "")
            if not text:
                raise DataError(f"{origin}: empty label in column '{label_column}' (label every row)")
            labels = tuple(sorted({s.strip() for s in text.split(LABEL_SEPARATOR) if s.strip()}))
            multilabel |= LABEL_SEPARATOR in text
        records.append(ImageRecord(path=path, labels=labels, site=site,
                                   spacing=_parse_spacing(row.get("spacing", ""), origin), origin=origin))
        sites.append(site)
    used = {site_column, label_column, *RESERVED}
    extra = {c: [row.get(c, "") for row in rows] for c in columns if c not in used}
    classes = tuple(sorted({label for r in records for label in r.labels}))
    check_label_spellings(records)
    table = ImageTable(records=tuple(records), classes=classes, multilabel=multilabel, source=str(csv_path))
    return AuditTable(table, np.asarray(sites, dtype=object).astype(str), extra, site_column, label_column)
