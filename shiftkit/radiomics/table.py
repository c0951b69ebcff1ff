"""The features table of an extraction: one row per extracted case, the manifest's columns, then the features.

Column order: ``case_id, path, mask, site[, label][, patient][, covariates...]``, then the PyRadiomics features in
PyRadiomics' order (``original_firstorder_Mean``, ...), then the deep features ``deep_0 .. deep_{d-1}`` when asked.
Values are written with full float precision (``repr``), so a table read back is the table computed.

A feature column must be usable by ``shiftkit audit --features-table`` and ``shiftkit combat``, which refuse empty,
NaN and infinite cells. So a feature that PyRadiomics did not compute for every extracted case (2-D and 3-D cases
mixed, a filter skipped for a small region) or that is NaN or infinite for some case (a feature that failed, a
ratio over a zero) is **dropped**, and named with its reason in ``dropped``. PyRadiomics' ``diagnostics_*`` values
(versions, settings, image and mask statistics) are not features: they go to a separate table when asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from shiftkit.radiomics.extract import CaseResult
from shiftkit.radiomics.manifest import RadiomicsManifest


@dataclass(frozen=True)
class FeaturesTable:
    header: list[str]
    rows: list[list[str]]
    metadata_columns: list[str]
    feature_columns: list[str]
    dropped: dict[str, str] = field(default_factory=dict)  # feature -> why it was left out

    def diagnostics(self, results: Sequence[CaseResult]) -> tuple[list[str], list[list[str]]]:
        """The ``diagnostics_*`` table (case_id first) of the extracted cases."""
        kept = [r for r in results if r.ok]
        names = list(dict.fromkeys(name for r in kept for name in r.diagnostics))
        return ["case_id"] + names, [[r.case_id] + [r.diagnostics.get(n, "") for n in names] for r in kept]


def _ordered_union(results: Sequence[CaseResult]) -> list[str]:
    names: dict[str, None] = {}
    for result in results:
        names.update(dict.fromkeys(result.features))
    return list(names)


def build_table(manifest: RadiomicsManifest, results: Sequence[CaseResult],
                deep: np.ndarray | None = None, deep_names: Sequence[str] = ()) -> FeaturesTable:
    """The table of the successful ``results`` (manifest order). ``deep``: one row per successful result, in the
    same order, appended as ``deep_names`` columns."""
    kept = [r for r in results if r.ok]
    names = _ordered_union(kept)
    dropped: dict[str, str] = {}
    columns: list[str] = []
    for name in names:
        missing = sum(1 for r in kept if name not in r.features)
        if missing:
            dropped[name] = f"not computed for {missing} of {len(kept)} cases"
            continue
        bad = [r.case_id for r in kept if not math.isfinite(r.features[name])]
        if bad:
            dropped[name] = f"NaN or infinite for {len(bad)} case(s) (first: {bad[0]})"
            continue
        columns.append(name)
    deep_names = list(deep_names)
    if deep is not None and len(deep) != len(kept):
        raise ValueError(f"{len(deep)} rows of deep features for {len(kept)} extracted cases")
    meta = manifest.metadata_columns()
    rows = []
    for i, result in enumerate(kept):
        case = manifest.cases[result.index]
        values = [repr(float(result.features[n])) for n in columns]
        if deep is not None:
            values += [repr(float(v)) for v in deep[i]]
        rows.append(manifest.metadata_row(case) + values)
    return FeaturesTable(meta + columns + deep_names, rows, meta, columns + deep_names, dropped)
