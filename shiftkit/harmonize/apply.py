"""Apply image harmonizers to files: fit on a reference table, transform each image and write the harmonized images
and a manifest (the library behind ``shiftkit harmonize`` and ``audit --harmonize``).

Decoding and writing each input kind is :mod:`shiftkit.harmonize.raw` (its docstring has the table), the output
layout and manifest :mod:`shiftkit.harmonize.outputs`, the harmonizers and their registry
:mod:`shiftkit.harmonize.base`, the shift before/after :mod:`shiftkit.harmonize.measure`, the command
:mod:`shiftkit.harmonize.command`.

Intensity methods work on raw stored values (not the [0, 1] the network sees), on the whole image or volume.
Values are rounded and clipped to the output type's range; z-score with ``scale="unit"`` is refused for 8- and
16-bit inputs, whose outputs could not hold negative values. Spacing comes from the manifest's ``spacing`` column
when present (it overrides the header), else from the header of medical formats; PNG/JPEG have none.

Non-finite pixels (NaN, +-inf in float TIFFs and medical volumes) are left out of the fit and of each image's own
statistics and written back unchanged (resampling interpolates, so a NaN also blanks its output neighbours). Every
output is checked before it is written: a harmonizer that would turn finite pixels into NaN/infinity, or a
non-constant image into a constant one (after rounding and clipping to the output type), is refused, naming the file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shiftkit.data.table import LABEL_SEPARATOR, ImageRecord, ImageTable, read_manifest
from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.base import Harmonizer, load_harmonizer, make_harmonizer, method_of
from shiftkit.harmonize.measure import MIN_IMAGES, MeasureSettings, check_settings, measure_shift  # noqa: F401  (moved)
from shiftkit.harmonize.outputs import format_spacing, input_root, output_relative, write_manifest
from shiftkit.harmonize.raw import (
    RawImage,
    from_sitk,
    header_geometry,
    output_suffix,
    read_raw,
    spacing_of,
    stored_values,
    to_sitk,
    write_raw,
)
from shiftkit.overwrite import refuse_overwriting_inputs

__all__ = [  # with names that lived here before the split, which tests, benchmarks and the README import
    "Harmonizer", "MIN_IMAGES", "MeasureSettings", "RawImage", "check_output", "check_settings", "fit_harmonizer",
    "from_sitk", "harmonize_table", "load_harmonizer", "make_harmonizer", "measure_shift", "method_of", "read_raw",
    "to_sitk", "transform_raw", "write_raw",
]


# -------------------------------------------------------------------------------------------- fit and transform

def check_output(harmonizer: Harmonizer, before: RawImage, after: RawImage) -> None:
    """Refuse an output that gained non-finite pixels, or that became constant while its input was not: written,
    it would silently blank an image (errors are prefixed with the file by the caller)."""
    stored = stored_values(after)
    finite_in, finite_out = np.isfinite(before.array), np.isfinite(stored)
    if stored.shape == before.array.shape:
        gained = int((finite_in & ~finite_out).sum())
    else:  # resampled: another grid; only an input without non-finite pixels can be compared
        gained = int((~finite_out).sum()) if finite_in.all() else (0 if finite_out.any() else stored.size)
    if gained:
        raise DataError(f"the {harmonizer.kind} harmonizer turned {gained} finite pixel(s) into non-finite values "
                        "(NaN or infinity); refused rather than written")
    for c in range(before.array.shape[-1]):
        values_in = before.array[..., c][finite_in[..., c]]
        values_out = stored[..., c][finite_out[..., c]]
        if values_in.size and np.ptp(values_in) > 0 and values_out.size and np.ptp(values_out) == 0:
            raise DataError(f"the {harmonizer.kind} harmonizer turned a non-constant image into a constant one "
                            f"(every stored pixel {float(values_out[0]):g}"
                            f"{'' if before.array.shape[-1] == 1 else f' in channel {c}'}); refused rather than "
                            "written: check the reference's intensity range against this image's type")


def _check_geometries(harmonizer: Harmonizer, table: ImageTable) -> None:
    """Refuse, before any image is written, an image of ``table`` that a geometric harmonizer cannot write (a target
    spacing that makes it too large), from its header alone."""
    for record in table.records:
        geometry = header_geometry(record)
        if geometry is None:
            continue
        try:
            harmonizer.check_geometry(*geometry)
        except DataError as exc:
            raise DataError(f"{record.origin or record.path}: {record.path.name} is {exc}") from None


def _check_input(harmonizer: Harmonizer, raw: RawImage, record: ImageRecord) -> None:
    """The harmonizer's own refusal of this file's kind (colour: 8-bit RGB only), naming the file."""
    try:
        harmonizer.check_input(raw.kind, raw.array.shape[-1], record.path.name)
    except (DataError, ConfigError) as exc:
        raise type(exc)(f"{record.origin or record.path}: {exc}") from None


def fit_harmonizer(harmonizer: Harmonizer, reference: ImageTable,
                   on_image: Callable[[], None] | None = None) -> Harmonizer:
    """Fit ``harmonizer`` on every image of ``reference`` (the source domain)."""
    if len(reference) == 0:
        raise DataError(f"{reference.source or 'reference'}: the reference has no images")
    tick = on_image or (lambda: None)
    if harmonizer.geometric:  # read lazily: a resampler with a given spacing reads no header

        def spacings():
            for record in reference.records:
                spacing = spacing_of(record)
                tick()
                yield spacing

        return harmonizer.fit(spacings())

    current: list[ImageRecord] = []

    def images():
        for record in reference.records:
            current[:] = [record]
            raw = read_raw(record)
            _check_input(harmonizer, raw, record)
            tick()
            yield raw.array

    try:
        return harmonizer.fit(images())
    except DataError as exc:  # name the image (no finite pixel) or the reference (all constant)
        where = (current[0].origin or str(current[0].path)) if "no finite pixel" in str(exc) and current else (
            reference.source or "reference")
        raise type(exc)(f"{where}: {exc}") from None


def transform_raw(harmonizer: Harmonizer, raw: RawImage) -> RawImage:
    """Harmonize one decoded image; the result keeps the input's kind (and geometry, except after resampling)."""
    if harmonizer.geometric:
        result = from_sitk(raw, harmonizer.transform(to_sitk(raw)))
    else:
        result = replace(raw, array=np.asarray(harmonizer.transform(raw.array),
                                               dtype=np.float64).reshape(raw.array.shape))
    check_output(harmonizer, raw, result)
    return result


def harmonize_table(table: ImageTable, reference: ImageTable, method: str, out_dir: Path, *,
                    options: dict | None = None,
                    on_image: Callable[[], None] | None = None,
                    harmonizer: Harmonizer | None = None) -> tuple[ImageTable, Harmonizer]:
    """Fit ``method`` on ``reference``, write the harmonized images of ``table`` under ``out_dir`` (same relative
    layout, suffix by input kind) plus ``out_dir/manifest.csv``, and return the new table (same labels, sites and
    class vocabulary) and the fitted harmonizer. ``harmonizer``: an already fitted one (``reference`` unused).
    ``on_image`` is called once per image fitted on and once per image written."""
    if len(table) == 0:
        raise DataError(f"{table.source or 'input'}: the input has no images")
    if harmonizer is None:
        harmonizer = fit_harmonizer(make_harmonizer(method, **(options or {})), reference, on_image)
    elif not harmonizer.fitted:
        raise ConfigError(f"the {harmonizer.kind} harmonizer is not fitted")
    out_dir = Path(out_dir)
    if harmonizer.geometric:
        _check_geometries(harmonizer, table)
    root = input_root(table)
    refuse_overwriting_inputs(out_dir, [out_dir / "manifest.csv"],
                              {"input": Path(table.source) if table.source else None, "input's image folder": root})
    tick = on_image or (lambda: None)
    rows, seen = [], {}
    any_site = any(r.site for r in table.records)
    any_spacing = False
    for record in table.records:
        raw = read_raw(record)
        _check_input(harmonizer, raw, record)
        try:
            result = transform_raw(harmonizer, raw)
        except DataError as exc:
            raise type(exc)(f"{record.origin or record.path}: {exc}") from None
        relative = output_relative(record.path, root, output_suffix(raw))
        if relative in seen:
            raise DataError(f"{record.origin or record.path}: its output {relative} would overwrite the output of "
                            f"{seen[relative]} (same name, different suffix)")
        seen[relative] = record.origin or str(record.path)
        if (out_dir / relative).resolve() == record.path.resolve():
            raise ConfigError(f"{record.origin or record.path}: writing the output to {out_dir} would overwrite "
                              "the input image; choose another --out")
        write_raw(result, out_dir / relative)
        spacing = result.spacing if result.kind != "medical" else None  # medical: the header carries it
        any_spacing |= spacing is not None
        rows.append({"path": relative.as_posix(), "label": LABEL_SEPARATOR.join(record.labels),
                     "site": record.site or "", "spacing": format_spacing(spacing)})
        tick()
    columns = ["path", "label"] + (["site"] if any_site else []) + (["spacing"] if any_spacing else [])
    manifest = out_dir / "manifest.csv"
    write_manifest(manifest, rows, columns)
    new_table = read_manifest(manifest)
    if new_table.records and not new_table.labeled and table.labeled:
        raise DataError(f"{manifest}: labels were lost")  # a bug guard: labels must survive
    new_table = replace(new_table, classes=table.classes, multilabel=table.multilabel, _index={})
    return new_table, harmonizer


# ------------------------------------------------------------------------------------------------ the command

def __getattr__(name: str) -> Any:
    """``HarmonizeRequest``, ``run_harmonize`` and ``OUTPUT_FILES`` moved to :mod:`shiftkit.harmonize.command`
    (which imports this module, hence the lazy lookup); old imports keep working."""
    if name in ("HarmonizeRequest", "run_harmonize", "OUTPUT_FILES"):
        from shiftkit.harmonize import command

        return getattr(command, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
