"""Tables of per-row features (radiomics, as pyradiomics writes them): the one reader behind ``shiftkit combat`` and
``shiftkit audit --features-table``, which columns are features, and how covariates enter a design matrix.

One rule decides numeric vs categorical, for feature columns and covariates alike: a column is **numeric** when it
has at least one non-empty cell and every non-empty cell spells a number (``float`` reads it; ``nan`` and ``inf``
included). A numeric column is then read strictly: an empty, NaN or infinite cell is refused with the file, the row
(as a spreadsheet numbers it, see :mod:`shiftkit.data.csvfile`) and the column, rather than turning the column into
text (a single ``nan`` in ``age`` would otherwise make every age a one-hot level). Any other column is text: as a
feature column it passes through untouched (ids, paths, notes), as a covariate it is categorical, one-hot encoded
with its first (sorted) level dropped, as neuroCombat does. Covariates may not have empty cells.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from shiftkit.data.csvfile import read_csv
from shiftkit.data.table import finite_number
from shiftkit.errors import ConfigError, DataError
from shiftkit.io import atomic_write

IGNORED_PATTERNS = ("diagnostics_*",)  # pyradiomics' provenance columns: versions, settings, image statistics
# Identifier columns (numeric IDs included) are never features: harmonizing them would corrupt them.
ID_NAMES = {"id", "patient", "patient_id", "patientid", "subject", "subject_id", "case", "case_id", "image", "mask",
            "path", "lesion_id", "image_id"}


def spells_number(text: str) -> bool:
    """True when ``float`` reads ``text`` (``nan`` and ``inf`` included: they are numbers, just not usable ones)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def is_numeric(values: Iterable[str]) -> bool:
    """The numeric-vs-categorical rule (module docstring): some cell is non-empty and every non-empty one is a
    number."""
    filled = [v.strip() for v in values if v.strip()]
    return bool(filled) and all(spells_number(v) for v in filled)


@dataclass(frozen=True)
class FeatureTable:
    """A features CSV read by the one CSV reader: ``rows`` keep their cells as written (so that :meth:`write` leaves
    the columns it does not replace untouched) and ``numbers`` their spreadsheet row numbers, for errors."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    numbers: list[int]

    @classmethod
    def read(cls, path: str | Path, what: str = "feature table") -> "FeatureTable":
        """Read ``path``; ``what`` names the table in messages. Odd paths, encodings, ``;`` separators, NUL bytes
        and ragged rows are refused in one line by :func:`shiftkit.data.csvfile.read_csv`."""
        table = read_csv(path, what, strict=True)
        if not table.rows:
            raise DataError(f"{table.path}: the {what} has no rows")
        return cls(table.path, table.header, table.rows, table.numbers)

    def require(self, name: str, option: str | None = None) -> None:
        """Refuse a missing column, saying which option named it and which columns there are."""
        if name not in self.header:
            named = f" ({option})" if option else ""
            raise DataError(f"{self.path}: no column '{name}'{named}; columns are {', '.join(self.header[:12])}"
                            + (" ..." if len(self.header) > 12 else ""))

    def column(self, name: str, option: str | None = None) -> list[str]:
        """The column's cells, stripped of surrounding spaces."""
        self.require(name, option)
        j = self.header.index(name)
        return [row[j].strip() for row in self.rows]

    def sites(self, column: str, option: str | None = "--site-column") -> np.ndarray:
        """The site of every row; an empty one is refused with its row."""
        sites = np.asarray(self.column(column, option))
        empty = np.flatnonzero(sites == "")
        if empty.size:
            raise DataError(f"{self.path} row {self.numbers[empty[0]]}: empty site in column '{column}'")
        return sites

    def feature_columns(self, kept_aside: Iterable[str | None], patterns: Sequence[str] = ()) -> tuple[list, list]:
        """(features, ignored): the numeric columns that are not ``kept_aside`` (site, label, covariates), not
        identifiers (:data:`ID_NAMES`) and match none of :data:`IGNORED_PATTERNS` or ``patterns`` (fnmatch); and the
        other columns, ``kept_aside`` excepted. Refuses a table with no feature column."""
        kept = {c for c in kept_aside if c is not None}
        features, ignored = [], []
        for name in self.header:
            if name in kept:
                continue
            if (name.lower() in ID_NAMES or any(fnmatch(name, p) for p in (*IGNORED_PATTERNS, *patterns))
                    or not is_numeric(self.column(name))):
                ignored.append(name)
            else:
                features.append(name)
        if not features:
            raise DataError(f"{self.path}: no numeric feature columns (besides {', '.join(sorted(kept))} and "
                            f"{len(ignored)} ignored id, text or diagnostics column(s))")
        return features, ignored

    def matrix(self, columns: Sequence[str]) -> np.ndarray:
        """The ``columns`` as an n x p float matrix; an empty, NaN or infinite cell is refused with its row."""
        out = np.empty((len(self.rows), len(columns)))
        for j, name in enumerate(columns):
            for i, text in enumerate(self.column(name)):
                value = finite_number(text) if text else None
                if value is None:
                    raise DataError(f"{self.path} row {self.numbers[i]}: feature '{name}' is {text or 'an empty cell'}"
                                    "; features must be finite numbers (impute it, or drop the row or the feature)")
                out[i, j] = value
        return out

    def write(self, path: str | Path, replaced: dict[str, np.ndarray]) -> None:
        """The same table with the ``replaced`` columns' values swapped in (full float precision)."""
        positions = {self.header.index(name): values for name, values in replaced.items()}
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.header)
        for i, row in enumerate(self.rows):
            writer.writerow([repr(float(positions[j][i])) if j in positions else cell for j, cell in enumerate(row)])
        atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue()))


@dataclass(frozen=True)
class Covariate:
    """How one covariate column enters a design: ``numeric`` as is, ``categorical`` as one-hot columns for every
    level but the first (sorted), as neuroCombat does."""

    name: str
    kind: str  # numeric | categorical
    levels: tuple[str, ...] = ()

    @classmethod
    def fit(cls, table: FeatureTable, name: str, kind: str | None = None) -> "Covariate":
        """The covariate as ``table`` shows it: ``kind`` forced, or decided by :func:`is_numeric`."""
        values = table.column(name, "--covariates")
        _refuse_empty(table, name, values)
        kind = kind or ("numeric" if is_numeric(values) else "categorical")
        return cls(name, kind, tuple(sorted(set(values))) if kind == "categorical" else ())

    def columns(self) -> list[str]:
        return [self.name] if self.kind == "numeric" else [f"{self.name}={level}" for level in self.levels[1:]]

    def encode(self, table: FeatureTable) -> np.ndarray:
        """The design columns of this covariate for every row of ``table`` (n x len(columns()))."""
        values = table.column(self.name, "--covariates")
        _refuse_empty(table, self.name, values)
        if self.kind == "numeric":
            out = np.empty(len(values))
            for i, text in enumerate(values):
                value = finite_number(text)
                if value is None:
                    what = "not finite" if spells_number(text) else "not a number"
                    raise DataError(f"{table.path} row {table.numbers[i]}: covariate '{self.name}' is '{text}', "
                                    f"{what}; a numeric covariate needs finite numbers")
                out[i] = value
            return out[:, None]
        out = np.zeros((len(values), max(len(self.levels) - 1, 0)))
        lookup = {level: j for j, level in enumerate(self.levels)}
        for i, text in enumerate(values):
            if text not in lookup:
                raise DataError(f"{table.path} row {table.numbers[i]}: covariate '{self.name}' level '{text}' was not "
                                f"in the fitted data (levels: {', '.join(self.levels)})")
            if lookup[text] > 0:
                out[i, lookup[text] - 1] = 1.0
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "levels": list(self.levels)}

    @classmethod
    def from_dict(cls, data: dict) -> "Covariate":
        return cls(data["name"], data["kind"], tuple(data["levels"]))


def _refuse_empty(table: FeatureTable, name: str, values: Sequence[str]) -> None:
    empty = next((i for i, v in enumerate(values) if not v), None)
    if empty is not None:
        raise DataError(f"{table.path} row {table.numbers[empty]}: empty value in covariate column '{name}'")


def design_matrix(table: FeatureTable, covariates: Sequence[Covariate]) -> tuple[np.ndarray | None, list[str]]:
    """The covariates' design columns side by side and their names (``age``, ``sex=m``); None when there are none."""
    blocks = [c.encode(table) for c in covariates]
    names = [name for c in covariates for name in c.columns()]
    if not names:
        return None, []
    return np.hstack(blocks), names


def parse_covariates(text: str | None) -> list[tuple[str, str | None]]:
    """``age,sex,scanner:cat`` -> [(age, None), (sex, None), (scanner, categorical)]; None = decide from the data."""
    out = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, kind = item.partition(":")
        if kind and kind not in ("cat", "num"):
            raise ConfigError(f"--covariates '{item}': the suffix must be :cat or :num")
        out.append((name.strip(), {"cat": "categorical", "num": "numeric", "": None}[kind]))
    return out
