"""``shiftkit harmonize`` as a library call: fit (or load) a harmonizer, write the harmonized images, the manifest,
``harmonizer.json`` and ``harmonize.json``, and measure the shift to the reference before and after."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shiftkit.data.table import load_table
from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.apply import fit_harmonizer, harmonize_table
from shiftkit.harmonize.base import load_harmonizer, make_harmonizer
from shiftkit.harmonize.measure import MeasureSettings, check_settings, measure_shift
from shiftkit.harmonize.outputs import input_root
from shiftkit.hooks import StageHook
from shiftkit.io import write_json
from shiftkit.overwrite import refuse_overwriting_inputs

OUTPUT_FILES = ("manifest.csv", "harmonizer.json", "harmonize.json", "report.html")  # besides the images


@dataclass
class HarmonizeRequest:
    input: Path
    out: Path
    method: str | None = None
    reference: Path | None = None
    harmonizer: Path | None = None  # a saved harmonizer to apply instead of fitting
    options: dict[str, Any] = field(default_factory=dict)
    measure: bool = True
    settings: MeasureSettings = field(default_factory=MeasureSettings)


def run_harmonize(request: HarmonizeRequest, on_stage: StageHook | None = None) -> dict[str, Any]:
    """Fit (or load), write images + ``manifest.csv`` + ``harmonizer.json``, measure the shift before and after,
    write ``harmonize.json`` and return its content."""
    started = time.perf_counter()
    unfitted = None
    if request.harmonizer is None:
        if request.method is None:
            raise ConfigError("give --method (or --harmonizer FILE to apply a saved harmonizer)")
        if request.reference is None:
            raise ConfigError("give --reference SOURCE to fit on (or --harmonizer FILE to apply a saved harmonizer)")
        unfitted = make_harmonizer(request.method, **request.options)  # a bad method/option: before reading
    elif request.options:
        raise ConfigError(f"option '{next(iter(request.options))}' cannot change a saved harmonizer "
                          f"({request.harmonizer})")
    if request.measure:
        check_settings(request.settings)
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
    stage = on_stage or (lambda description, total: (lambda: None))
    if unfitted is None:
        harmonizer = load_harmonizer(request.harmonizer, request.method)
    else:
        total = len(reference) if unfitted.reads_reference else 0
        harmonizer = fit_harmonizer(unfitted, reference, stage(f"fitting {request.method} on the reference", total))
    new_table, _ = harmonize_table(table, reference or table, harmonizer.method, request.out,
                                   harmonizer=harmonizer, on_image=stage("writing harmonized images", len(table)))
    harmonizer_path = harmonizer.save(request.out / "harmonizer.json")
    shift = None
    if request.measure and reference is not None:
        shift = measure_shift(reference, table, new_table, request.settings, on_stage)
    kinds: dict[str, int] = {}
    for record in new_table.records:
        suffix = ".nii.gz" if record.path.name.endswith(".nii.gz") else record.path.suffix
        kinds[suffix] = kinds.get(suffix, 0) + 1
    from shiftkit import __version__

    report = {
        "method": harmonizer.method, "kind": harmonizer.kind, "input": str(request.input),
        "reference": str(request.reference) if request.reference else None,
        "harmonizer": str(harmonizer_path), "loaded_from": str(request.harmonizer) if request.harmonizer else None,
        "params": harmonizer.params(), "n_images": len(new_table), "outputs": kinds,
        "manifest": str(request.out / "manifest.csv"),
        "shift": shift,
        "shift_not_measured": None if shift is not None else (
            "no --reference to compare with" if reference is None else "--no-measure"),
        "seconds": round(time.perf_counter() - started, 2), "shiftkit": __version__,
    }
    write_json(request.out / "harmonize.json", report)
    return report
