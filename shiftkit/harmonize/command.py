"""``shiftkit harmonize`` as a library call: fit (or load) a harmonizer, write the harmonized images, the manifest,
``harmonizer.json`` and ``harmonize.json``, and measure the shift to the reference before and after.

``--method auto`` or a comma list of candidates first chooses the harmonizer on held-out images
(:func:`shiftkit.harmonize.selection.select_harmonizer`), then writes every image exactly as ``--method`` with the
chosen one would; when no candidate reduces the shift it writes no image (``force`` writes the best-ranked), only
``harmonize.json`` (its ``selection`` key holds the comparison) and ``report.html``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shiftkit.data.table import ImageTable, load_table
from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.apply import fit_harmonizer, harmonize_table
from shiftkit.harmonize.base import Harmonizer, load_harmonizer, make_harmonizer
from shiftkit.harmonize.measure import MeasureSettings, check_settings, measure_shift
from shiftkit.harmonize.outputs import input_root
from shiftkit.harmonize.selection import Selection, is_selection, select_harmonizer
from shiftkit.hooks import StageHook
from shiftkit.io import write_json
from shiftkit.overwrite import refuse_overwriting_inputs

OUTPUT_FILES = ("manifest.csv", "harmonizer.json", "harmonize.json", "report.html")  # besides the images
NOT_WRITTEN = "nothing written (use --force to write the best-ranked anyway)"


@dataclass
class HarmonizeRequest:
    input: Path
    out: Path
    method: str | None = None  # a --method, or "auto" / "a,b,c": chosen on held-out images
    reference: Path | None = None
    harmonizer: Path | None = None  # a saved harmonizer to apply instead of fitting
    options: dict[str, Any] = field(default_factory=dict)
    measure: bool = True
    settings: MeasureSettings = field(default_factory=MeasureSettings)
    force: bool = False  # auto: write the best-ranked candidate even when none reduces the shift
    holdout: float = 0.5  # auto: the fraction of each set the candidates are measured on


def _tables(request: HarmonizeRequest) -> tuple[ImageTable, ImageTable | None]:
    """The input and reference tables, after refusing an --out that is (or is inside) one of the inputs."""
    # before the folders are read: an --out inside one would be read as part of it (a new class, more images)
    refuse_overwriting_inputs(request.out, [], {"input": request.input, "reference": request.reference},
                              scanned=("input", "reference"))
    table = load_table(request.input)
    reference = load_table(request.reference) if request.reference is not None else None
    if reference is not None and len(reference) == 0:
        raise DataError(f"{request.reference}: the reference has no images")
    refuse_overwriting_inputs(request.out, [request.out / name for name in OUTPUT_FILES], {
        "input": request.input, "input's image folder": input_root(table) if len(table) else None,
        "reference": request.reference, "reference's image folder": input_root(reference) if reference else None,
        "saved harmonizer": request.harmonizer})
    return table, reference


def _write(request: HarmonizeRequest, harmonizer: Harmonizer, table: ImageTable, reference: ImageTable | None,
           stage: StageHook) -> tuple[dict[str, Any], ImageTable]:
    """Write the harmonized images, ``manifest.csv`` and ``harmonizer.json``; the report without its shift."""
    new_table, _ = harmonize_table(table, reference or table, harmonizer.method, request.out,
                                   harmonizer=harmonizer, on_image=stage("writing harmonized images", len(table)))
    harmonizer_path = harmonizer.save(request.out / "harmonizer.json")
    kinds: dict[str, int] = {}
    for record in new_table.records:
        suffix = ".nii.gz" if record.path.name.endswith(".nii.gz") else record.path.suffix
        kinds[suffix] = kinds.get(suffix, 0) + 1
    report = {
        "method": harmonizer.method, "kind": harmonizer.kind, "input": str(request.input),
        "reference": str(request.reference) if request.reference else None,
        "harmonizer": str(harmonizer_path), "loaded_from": str(request.harmonizer) if request.harmonizer else None,
        "params": harmonizer.params(), "n_images": len(new_table), "outputs": kinds,
        "manifest": str(request.out / "manifest.csv"),
    }
    return report, new_table


def _finish(report: dict[str, Any], shift: dict[str, Any] | None, not_measured: str | None, started: float,
            out: Path) -> dict[str, Any]:
    from shiftkit import __version__

    report.update({"shift": shift, "shift_not_measured": None if shift is not None else not_measured,
                   "seconds": round(time.perf_counter() - started, 2), "shiftkit": __version__})
    write_json(out / "harmonize.json", report)
    return report


def run_harmonize(request: HarmonizeRequest, on_stage: StageHook | None = None,
                  inline: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit (or load), write images + ``manifest.csv`` + ``harmonizer.json``, measure the shift before and after,
    write ``harmonize.json`` and return its content. ``--method auto`` (or a list) chooses first; ``inline``, when
    given, receives what only report.html shows (``selection_examples``: before/after thumbnails)."""
    if request.harmonizer is None and is_selection(request.method):
        return _run_selection(request, on_stage, inline)
    started = time.perf_counter()
    unfitted = None
    if request.force:
        raise ConfigError("--force applies to --method auto or a list of candidates (it writes the best-ranked "
                          "one when none reduces the shift)")
    if request.harmonizer is None:
        if request.method is None:
            raise ConfigError("give --method (or --harmonizer FILE to apply a saved harmonizer)")
        if request.reference is None:
            raise ConfigError("give --reference SOURCE to fit on (or --harmonizer FILE to apply a saved harmonizer)")
        unfitted = make_harmonizer(request.method, **request.options)  # a bad method/option: before reading
    elif request.options:
        raise ConfigError(f"option '{next(iter(request.options))}' cannot change a saved harmonizer "
                          f"({request.harmonizer})")
    elif is_selection(request.method):
        raise ConfigError(f"--method {request.method} chooses a harmonizer by fitting candidates; it cannot apply "
                          f"a saved one ({request.harmonizer})")
    if request.measure:
        check_settings(request.settings)
    table, reference = _tables(request)
    stage = on_stage or (lambda description, total: (lambda: None))
    if unfitted is None:
        harmonizer = load_harmonizer(request.harmonizer, request.method)
    else:
        total = len(reference) if unfitted.reads_reference else 0
        harmonizer = fit_harmonizer(unfitted, reference, stage(f"fitting {request.method} on the reference", total))
    report, new_table = _write(request, harmonizer, table, reference, stage)
    shift = None
    if request.measure and reference is not None:
        shift = measure_shift(reference, table, new_table, request.settings, on_stage)
    not_measured = "no --reference to compare with" if reference is None else "--no-measure"
    return _finish(report, shift, not_measured, started, request.out)


def _held_out_shift(selection: Selection, name: str | None) -> dict[str, Any] | None:
    """The chosen candidate's held-out measurement in the shape of ``measure_shift``'s (``before``, ``after``,
    ``settings``), so that harmonize.json's ``shift`` reads the same with --method auto."""
    if name is None:
        return None
    result = selection.result(name)
    settings = dict(selection.measure)
    settings.update({"n_reference": selection.split["reference"]["held_out"],
                     "n_input": selection.split["input"]["held_out"], "held_out": True,
                     "note": f"held out: {name} fitted on the reference's fit part and measured on images it was "
                             "not fitted on (the written images come from a fit on the whole reference); PCA and the "
                             "MMD bandwidth are fitted on each pooled pair, as diagnose does"})
    return {"before": selection.before, "after": result.after, "settings": settings}


def _run_selection(request: HarmonizeRequest, on_stage: StageHook | None,
                   inline: dict[str, Any] | None) -> dict[str, Any]:
    """``--method auto`` / ``a,b,c``: choose on held-out images, then write as ``--method CHOSEN`` would, or write
    nothing (but harmonize.json and report.html) when no candidate reduces the shift and not ``force``."""
    started = time.perf_counter()
    if request.reference is None:
        raise ConfigError(f"--method {request.method} needs --reference SOURCE to fit the candidates on and to "
                          "measure the shift against")
    if not request.measure:
        raise ConfigError(f"--method {request.method} chooses by measuring the shift; it cannot run with "
                          "--no-measure")
    check_settings(request.settings)
    table, reference = _tables(request)
    selection = select_harmonizer(table, reference, request.method, request.settings, request.holdout, on_stage,
                                  options=request.options)
    if inline is not None:
        inline["selection_examples"] = selection.examples
    write = selection.chosen or (selection.best if request.force else None)
    verdict = selection.verdict
    if write is None:
        report: dict[str, Any] = {
            "method": None, "kind": None, "input": str(request.input), "reference": str(request.reference),
            "harmonizer": None, "loaded_from": None, "params": None, "n_images": 0, "outputs": {},
            "manifest": None}
        why = "nothing written: every candidate failed or was disqualified" if request.force else NOT_WRITTEN
        verdict = f"{verdict}; {why}"
    else:
        stage = on_stage or (lambda description, total: (lambda: None))
        unfitted = write.make()
        total = len(reference) if unfitted.reads_reference else 0
        harmonizer = fit_harmonizer(unfitted, reference, stage(f"fitting {write.name} on the whole reference",
                                                               total))
        report, _ = _write(request, harmonizer, table, reference, stage)
        if selection.chosen is None:
            verdict = f"{verdict}; --force: wrote the best-ranked, {write.name}"
    report["selection"] = {**selection.to_dict(), "verdict": verdict, "written": write.name if write else None,
                           "forced": write is not None and selection.chosen is None}
    return _finish(report, _held_out_shift(selection, write.name if write else None),
                   "no harmonizer was written (see selection)", started, request.out)
