"""The radiomics manifest: one row per case (an image and its mask), read and checked before any extraction.

Columns (a comma-separated CSV, read by :func:`shiftkit.data.csvfile.read_csv`):

- ``path``, ``mask`` (required): the image and its mask, relative to the manifest's folder or absolute;
- ``site`` (required): the acquisition site (hospital, scanner) of the case;
- ``label``, ``patient`` (optional): the outcome and the patient (repeated scans of one patient share it);
- ``case_id`` (optional): the case's name in the outputs; by default the image path as written, or
  ``path|mask`` when one image has several masks;
- ``mask_label`` (optional): the label value of the region of interest in this case's mask (an integer);
- any other column is a **covariate** (age, sex, ...), copied to the features table as written.

A problem with the manifest itself (a missing column, an empty site or path, a duplicate case) refuses the whole
run in one line naming the row; a problem with one case's files is that case's failure at extraction time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shiftkit.data.csvfile import read_csv
from shiftkit.data.paths import safe_resolve
from shiftkit.errors import DataError

REQUIRED = ("path", "mask", "site")
OPTIONAL = ("label", "patient", "case_id", "mask_label")
RESERVED = REQUIRED + OPTIONAL


@dataclass(frozen=True)
class Case:
    """One image and its mask, with what the features table carries beside its features."""

    case_id: str
    path: Path  # resolved
    mask: Path  # resolved
    path_text: str  # as written in the manifest
    mask_text: str
    site: str
    label: str | None = None
    patient: str | None = None
    mask_label: int | None = None
    covariates: dict[str, str] = field(default_factory=dict)
    row: int = 0  # the manifest row, as a spreadsheet numbers it


@dataclass(frozen=True)
class RadiomicsManifest:
    path: Path
    cases: tuple[Case, ...]
    covariates: tuple[str, ...]  # covariate column names, in manifest order
    has_label: bool
    has_patient: bool

    def __len__(self) -> int:
        return len(self.cases)

    def metadata_columns(self) -> list[str]:
        """The non-feature columns of the features table, in order."""
        return (["case_id", "path", "mask", "site"] + (["label"] if self.has_label else [])
                + (["patient"] if self.has_patient else []) + list(self.covariates))

    def metadata_row(self, case: Case) -> list[str]:
        return ([case.case_id, case.path_text, case.mask_text, case.site]
                + ([case.label or ""] if self.has_label else []) + ([case.patient or ""] if self.has_patient else [])
                + [case.covariates.get(c, "") for c in self.covariates])


def resolve_path(base: Path, text: str) -> Path:
    """A manifest cell as a path: relative to the manifest's folder ``base`` unless absolute."""
    path = Path(text).expanduser()
    return safe_resolve(path if path.is_absolute() else base / path)


def read_radiomics_manifest(path: str | Path) -> RadiomicsManifest:
    """Read and check the manifest (module docstring); every problem is a one-line :class:`DataError`."""
    path = Path(path)
    table = read_csv(path, "manifest")
    missing = [c for c in REQUIRED if c not in table.header]
    if missing:
        raise DataError(f"{path}: the radiomics manifest needs columns path, mask and site; missing "
                        f"{', '.join(missing)} (columns are {', '.join(table.header[:12]) or 'none'})")
    if not table.rows:
        raise DataError(f"{path}: the manifest has no rows")
    covariates = tuple(c for c in table.header if c and c not in RESERVED)
    base = path.parent
    rows = table.dicts(strip_values=True)
    repeated = _repeated([r["path"] for r in rows])  # images with several masks
    cases, seen = [], {}
    for number, row in zip(table.numbers, rows):
        where = f"{path.name} row {number}"
        for column in REQUIRED:
            if not row[column]:
                raise DataError(f"{where}: empty {column}")
        mask_label = None
        if row.get("mask_label"):
            try:
                mask_label = int(row["mask_label"])
            except ValueError:
                raise DataError(f"{where}: mask_label '{row['mask_label']}' is not an integer") from None
            if mask_label <= 0:
                raise DataError(f"{where}: mask_label {mask_label} must be a positive integer (0 is background)")
        case_id = row.get("case_id") or (f"{row['path']}|{row['mask']}" if row["path"] in repeated else row["path"])
        if case_id in seen:
            what = "case_id" if row.get("case_id") else "image and mask"
            raise DataError(f"{where}: duplicate {what} '{case_id}' (also row {seen[case_id]})")
        seen[case_id] = number
        cases.append(Case(
            case_id=case_id, path=resolve_path(base, row["path"]), mask=resolve_path(base, row["mask"]),
            path_text=row["path"], mask_text=row["mask"], site=row["site"], label=row.get("label") or None,
            patient=row.get("patient") or None, mask_label=mask_label,
            covariates={c: row.get(c, "") for c in covariates}, row=number))
    return RadiomicsManifest(path, tuple(cases), covariates, "label" in table.header, "patient" in table.header)


def _repeated(values: list[str]) -> set[str]:
    seen, repeated = set(), set()
    for value in values:
        (repeated if value in seen else seen).add(value)
    return repeated
