"""Approximate automatic lesion masks for dermoscopy (a dark lesion on lighter skin), for radiomics without manual
segmentations. **Approximate**: a classical threshold, not a trained segmentation model; check a sample of masks
(and ``masks.json``'s warnings) before trusting features that depend on the border (shape, and texture near it).

Per image, with SimpleITK:

1. luminance Y = 0.299 R + 0.587 G + 0.114 B (grayscale images as they are);
2. Gaussian smoothing (``sigma`` pixels, 2 by default: hairs and pores blur, the lesion stays);
3. Otsu's threshold on the smoothed luminance; the pixels at or below it are the dark class;
4. a binary opening of radius 1 (cuts one-pixel bridges between the lesion and dark corners or hairs);
5. connected components; the lesion is the component with the most pixels inside the central disc (radius a
   quarter of the shorter side: dermoscopy centres the lesion, and the dark vignetting of the lens sits in the
   corners), or the largest component when none reaches the centre;
6. holes filled.

A mask covering more than :data:`LARGE` of the image (the threshold split the field, not the lesion) or less than
:data:`SMALL` is written with a warning; a uniform image, or one where no dark component remains, is a failure.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from PIL import Image

from shiftkit.data.csvfile import read_csv
from shiftkit.errors import DataError
from shiftkit.hooks import StageHook, start_stage
from shiftkit.io import json_text
from shiftkit.radiomics.images import CaseError, luminance, read_image
from shiftkit.radiomics.manifest import resolve_path
from shiftkit.radiomics.outputs import csv_text

DEFAULT_SIGMA = 2.0
CENTRE_RADIUS = 0.25  # of the shorter side
LARGE = 0.8
SMALL = 0.005
METHOD = ("approximate automatic segmentation: Otsu threshold on the Gaussian-smoothed luminance (dark lesion on "
          "lighter skin), opening radius 1, the connected component most inside the central disc (else the "
          "largest), holes filled")


@dataclass(frozen=True)
class LesionMask:
    mask: np.ndarray  # bool, H x W
    threshold: float  # Otsu's threshold on the smoothed luminance
    fraction: float  # of the image
    components: int  # dark components found
    touches_border: bool
    warning: str | None = None


def segment_lesion(image: np.ndarray, sigma: float = DEFAULT_SIGMA) -> LesionMask:
    """The approximate lesion mask of one 2-D image (``H x W`` or ``H x W x 3``), steps 1-6 of the module
    docstring. Raises :class:`CaseError` for a uniform image or when no dark component remains."""
    gray = luminance(image) if image.ndim == 3 else np.asarray(image, dtype=np.float32)
    if gray.ndim != 2:
        raise CaseError(f"expected a 2-D image, got shape {image.shape}")
    if not np.isfinite(gray).all() or np.ptp(gray) == 0:
        raise CaseError("the image is uniform (or not finite): there is no lesion to segment")
    smooth = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(gray), float(sigma))
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(1)  # at or below the threshold: the dark class
    otsu.SetOutsideValue(0)
    dark = otsu.Execute(smooth)
    dark = sitk.BinaryMorphologicalOpening(dark, [1, 1], sitk.sitkBall, 0, 1)
    components = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(dark), sortByObjectSize=True))
    count = int(components.max())
    if count == 0:
        raise CaseError("no dark region left after thresholding and opening")
    height, width = gray.shape
    yy, xx = np.ogrid[:height, :width]
    centre = (yy - (height - 1) / 2.0) ** 2 + (xx - (width - 1) / 2.0) ** 2 <= (CENTRE_RADIUS * min(height, width)) ** 2
    inside = np.bincount(components[centre].ravel(), minlength=count + 1)[1:]
    chosen = int(np.argmax(inside)) + 1 if inside.max() > 0 else 1  # components are sorted: 1 is the largest
    region = sitk.GetImageFromArray((components == chosen).astype(np.uint8))
    mask = sitk.GetArrayFromImage(sitk.BinaryFillhole(region, fullyConnected=False, foregroundValue=1)).astype(bool)
    fraction = float(mask.mean())
    border = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    warning = None
    if fraction > LARGE:
        warning = f"the mask covers {fraction:.0%} of the image: probably the field, not the lesion"
    elif fraction < SMALL:
        warning = f"the mask covers {fraction:.2%} of the image: probably a spot, not the lesion"
    return LesionMask(mask, float(otsu.GetThreshold()), fraction, count, border, warning)


@dataclass
class MasksResult:
    manifest: Path  # the manifest written (path,mask,site[,label][,kept columns])
    records: list[dict[str, Any]] = field(default_factory=list)  # one per mask written
    failures: list[dict[str, Any]] = field(default_factory=list)  # path, row, reason
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["warning"]]

    def summary(self) -> dict[str, Any]:
        fractions = [r["fraction"] for r in self.records]
        return {"kind": "radiomics_masks", "method": METHOD, "manifest": str(self.manifest),
                "n_images": len(self.records) + len(self.failures), "n_masks": len(self.records),
                "n_failed": len(self.failures), "n_warnings": len(self.warnings),
                "median_fraction": float(np.median(fractions)) if fractions else None,
                "settings": self.settings, "failures": self.failures, "masks": self.records}


def _mask_name(path_text: str, used: set[str], row: int) -> str:
    name = f"{Path(path_text).stem}.png"
    if name in used:
        name = f"{Path(path_text).stem}_row{row}.png"
    used.add(name)
    return name


def _relative(path: Path, folder: Path) -> str:
    try:
        return os.path.relpath(path, folder)
    except ValueError:  # another drive (Windows)
        return str(path)


def make_masks(manifest: str | Path, out: str | Path, *, site_column: str = "site", label_column: str | None = "label",
               keep: Sequence[str] = (), sigma: float = DEFAULT_SIGMA, on_stage: StageHook | None = None
               ) -> tuple[MasksResult, dict[Path, bytes | str]]:
    """Segment every image of an image manifest (``path`` and ``site_column`` columns; ``label_column`` and the
    ``keep`` columns copied when present). Returns the result and the files to write, ``{path: content}``:
    ``OUT/masks/<image stem>.png`` (0 background, 255 lesion), ``OUT/manifest.csv`` (``path,mask,site[,label]``
    plus ``keep``; image paths absolute when the input's are, else relative to OUT; ready for ``shiftkit radiomics
    extract``) and ``OUT/masks.json``."""
    manifest, out = Path(manifest), Path(out)
    table = read_csv(manifest, "manifest")
    for column, option in (("path", None), (site_column, "--site-column"), *((c, "--keep") for c in keep)):
        if column not in table.header:
            named = f" ({option})" if option else ""
            raise DataError(f"{manifest}: no column '{column}'{named}; columns are {', '.join(table.header[:12])}")
    if not table.rows:
        raise DataError(f"{manifest}: the manifest has no rows")
    has_label = label_column is not None and label_column in table.header
    header = ["path", "mask", "site"] + (["label"] if has_label else []) + list(keep)
    result = MasksResult(out / "manifest.csv", settings={"sigma": sigma, "centre_radius": CENTRE_RADIUS,
                                                         "source_manifest": str(manifest)})
    files: dict[Path, bytes | str] = {}
    rows, used = [], set()
    tick = start_stage(on_stage, "lesion masks", len(table.rows))
    for number, row in zip(table.numbers, table.dicts(strip_values=True)):
        path_text = row["path"]
        try:
            if not path_text:
                raise CaseError("empty path")
            if not row[site_column]:
                raise CaseError(f"empty site in column '{site_column}'")
            path = resolve_path(manifest.parent, path_text)
            image = read_image(path, colour=True)
            if image.GetDimension() != 2:
                raise CaseError(f"is {image.GetDimension()}-D; automatic lesion masks are for 2-D dermoscopy images")
            lesion = segment_lesion(sitk.GetArrayFromImage(image), sigma)
        except CaseError as exc:
            result.failures.append({"path": path_text, "row": number, "reason": str(exc)})
        else:
            name = _mask_name(path_text, used, number)
            buffer = io.BytesIO()
            Image.fromarray(lesion.mask.astype(np.uint8) * 255).save(buffer, format="PNG")
            files[out / "masks" / name] = buffer.getvalue()
            mask_text = f"masks/{name}"
            written = path_text if Path(path_text).expanduser().is_absolute() else _relative(path, out)
            rows.append([written, mask_text, row[site_column]]
                        + ([row[label_column]] if has_label else []) + [row[c] for c in keep])
            result.records.append({"path": path_text, "mask": mask_text, "row": number,
                                   "fraction": round(lesion.fraction, 6), "threshold": round(lesion.threshold, 4),
                                   "components": lesion.components, "touches_border": lesion.touches_border,
                                   "warning": lesion.warning})
        if tick is not None:
            tick()
    if rows:
        files[out / "manifest.csv"] = csv_text(header, rows)
    files[out / "masks.json"] = json_text(result.summary())
    return result, files
