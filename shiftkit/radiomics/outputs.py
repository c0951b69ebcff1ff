"""The files of an extraction, beside ``--out features.csv``, published together (:func:`shiftkit.io.write_files`:
each written to a temporary file, then all renamed, so a killed run never leaves half a table):

- ``features.csv``: the features table (:mod:`shiftkit.radiomics.table`), ready for ``shiftkit audit
  --features-table`` and ``shiftkit combat``; when no case could be extracted it is not written (and one left by
  an earlier run is removed, so that it cannot be mistaken for this run's);
- ``features.failures.csv``: ``case_id,path,mask,site,row,stage,reason``, one row per failed case (only the header
  when none failed, so a stale list never survives a rerun);
- ``features.json``: the summary (settings, versions, failures, dropped features, times);
- ``features.diagnostics.csv`` with ``--diagnostics``: PyRadiomics' ``diagnostics_*`` values per case.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from shiftkit.io import json_text, write_files
from shiftkit.radiomics.run import Extraction

FAILURE_COLUMNS = ("case_id", "path", "mask", "site", "row", "stage", "reason")


def output_paths(out: Path) -> dict[str, Path]:
    """Where each file of ``--out`` goes: csv, failures, summary, diagnostics."""
    out = Path(out)
    return {"csv": out, "failures": out.with_name(f"{out.stem}.failures.csv"),
            "summary": out.with_name(f"{out.stem}.json"), "diagnostics": out.with_name(f"{out.stem}.diagnostics.csv")}


def csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_extraction(extraction: Extraction, out: Path) -> list[Path]:
    """Write the files (module docstring); returns the paths written."""
    paths = output_paths(out)
    failures = extraction.failures()
    texts = {
        paths["failures"]: csv_text(FAILURE_COLUMNS, [[f[c] for c in FAILURE_COLUMNS] for f in failures]),
        paths["summary"]: json_text({**extraction.summary(), "output": str(paths["csv"])}),
    }
    if extraction.table.rows:
        texts[paths["csv"]] = csv_text(extraction.table.header, extraction.table.rows)
        if extraction.settings.diagnostics:
            texts[paths["diagnostics"]] = csv_text(*extraction.table.diagnostics(extraction.results))
    write_files({path: (lambda tmp, text=text: tmp.write_text(text)) for path, text in texts.items()})
    if not extraction.table.rows:  # no table this time: an older one beside the new failures would mislead
        for stale in (paths["csv"], paths["diagnostics"]):
            if stale.is_file():
                stale.unlink()
    return list(texts)
