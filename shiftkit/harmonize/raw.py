"""Images at their stored intensities: decode a file for harmonization and write the harmonized array back in a
format that holds it, keeping the input's geometry.

What is written for each input kind (README, "Harmonization"):

| input | harmonized in | written as |
|---|---|---|
| 8-bit PNG/JPEG/TIFF/BMP (gray, RGB; palette/alpha converted as the reader does) | 0..255 | 8-bit PNG (no JPEG re-compression) |
| 16-bit PNG/TIFF | raw values | 16-bit PNG, clipped to 0..65535 |
| 32-bit integer or float TIFF (one channel) | raw values | float32 TIFF |
| NIfTI | raw values (whole volume) | float32 ``.nii.gz`` with the input's spacing, origin, direction |
| DICOM, NRRD, MetaImage | raw values (whole volume) | float32 ``.mha`` with the input's spacing, origin, direction |

Values are rounded and clipped to the output type's range. Spacing comes from the manifest's ``spacing`` column
when present (it overrides the header), else from the header of medical formats; PNG/JPEG have none.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shiftkit.data.table import ImageRecord
from shiftkit.errors import ConfigError, DataError, ImageReadError
from shiftkit.io import atomic_write


@dataclass
class RawImage:
    """An image at its stored intensities: ``array`` is channel-last float64 (``H x W x C`` or ``D x H x W x C``)."""

    array: np.ndarray
    kind: str  # "8bit", "16bit", "float" (PIL) or "medical" (SimpleITK)
    spacing: tuple[float, ...] | None  # SimpleITK order (x, y[, z])
    sitk_image: Any = None  # medical images: the geometry (spacing, origin, direction) to keep
    nifti: bool = False


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def read_raw(record: ImageRecord) -> RawImage:
    """Decode ``record.path`` at its stored intensities (errors name the file)."""
    from shiftkit.data.paths import path_problem
    from shiftkit.data.readers import PIL_SUFFIXES, SITK_SUFFIXES

    path = Path(record.path)
    problem = path_problem(path)  # a device, pipe, folder or loop is named for what it is, not "not found"
    if problem is not None:
        where = record.origin if record.origin and record.origin != str(path) else None  # a manifest row
        raise ImageReadError(f"{where}: {problem} ({path})" if where else f"{path}: {problem}")
    name = path.name.lower()
    try:
        if name.endswith(PIL_SUFFIXES):
            return _read_pil_raw(path, record.spacing)
        if name.endswith(SITK_SUFFIXES):
            return _read_sitk_raw(path, record.spacing)
    except (ImageReadError, DataError, ConfigError):
        raise
    except Exception as exc:  # PIL and SimpleITK raise many types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageReadError(f"{path}: cannot decode image ({reason})") from exc
    raise ImageReadError(f"{path}: unsupported file type")


def _read_pil_raw(path: Path, spacing: tuple[float, ...] | None) -> RawImage:
    from shiftkit.data.readers import open_pil

    with open_pil(path) as image:  # refused from the header above the decoded-size limit
        image.load()
        mode = image.mode
        if mode.startswith("I;16") or (mode == "I" and path.suffix.lower() == ".png"):
            kind = "16bit"
        elif mode in ("I", "F"):
            kind = "float"
        else:
            kind = "8bit"
            if mode not in ("L", "RGB"):
                image = image.convert("L" if mode in ("1", "LA", "La") else "RGB")
        array = np.asarray(image).astype(np.float64)
    if array.ndim == 2:
        array = array[..., None]
    if spacing is not None and len(spacing) != 2:
        raise DataError(f"{path}: manifest spacing {spacing} must have 2 values for a 2-D image")
    return RawImage(array, kind, spacing)


def _read_sitk_raw(path: Path, spacing: tuple[float, ...] | None) -> RawImage:
    import SimpleITK as sitk

    from shiftkit.data.readers import read_sitk

    image = read_sitk(path)  # refused from the header above the decoded-size limit
    if spacing is not None:
        if len(spacing) != image.GetDimension():
            raise DataError(f"{path}: manifest spacing {spacing} has {len(spacing)} value(s) but the image is "
                            f"{image.GetDimension()}-D")
        image.SetSpacing(spacing)
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    if image.GetNumberOfComponentsPerPixel() == 1:
        array = array[..., None]
    return RawImage(array, "medical", tuple(image.GetSpacing()), image, _is_nifti(path))


def output_suffix(raw: RawImage) -> str:
    if raw.kind == "medical":
        return ".nii.gz" if raw.nifti else ".mha"
    return ".tiff" if raw.kind == "float" else ".png"


def to_sitk(raw: RawImage, array: np.ndarray | None = None):
    """The image as SimpleITK sees it (float32), with the medical header's geometry or the manifest spacing."""
    import SimpleITK as sitk

    array = raw.array if array is None else array
    vector = array.shape[-1] > 1
    image = sitk.GetImageFromArray((array if vector else array[..., 0]).astype(np.float32), isVector=vector)
    if raw.sitk_image is not None:
        image.SetSpacing(raw.sitk_image.GetSpacing())
        image.SetOrigin(raw.sitk_image.GetOrigin())
        image.SetDirection(raw.sitk_image.GetDirection())
    elif raw.spacing is not None:
        image.SetSpacing(raw.spacing)
    return image


def from_sitk(raw: RawImage, image) -> RawImage:
    """A resampled SimpleITK image back as a :class:`RawImage` of the same kind."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image).astype(np.float64)
    if image.GetNumberOfComponentsPerPixel() == 1:
        array = array[..., None]
    return RawImage(array, raw.kind, tuple(image.GetSpacing()), image if raw.kind == "medical" else None, raw.nifti)


def stored_values(raw: RawImage) -> np.ndarray:
    """The pixel values :func:`write_raw` stores: rounded and clipped for 8- and 16-bit PNGs, float32 otherwise."""
    if raw.kind in ("8bit", "16bit"):
        top, dtype = (255, np.uint8) if raw.kind == "8bit" else (65535, np.uint16)
        return np.clip(np.rint(np.nan_to_num(raw.array, nan=0.0)), 0, top).astype(dtype)
    return raw.array.astype(np.float32)


def write_raw(raw: RawImage, path: Path) -> None:
    """Write ``raw`` as its kind's output format (table in the module docstring), atomically."""
    array = raw.array
    if raw.kind in ("8bit", "16bit"):
        from PIL import Image

        pixels = stored_values(raw)
        pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels

        def save(tmp: Path) -> None:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            tmp.write_bytes(buffer.getvalue())
    elif raw.kind == "float":
        from PIL import Image

        pixels = array[..., 0].astype(np.float32)

        def save(tmp: Path) -> None:
            buffer = io.BytesIO()
            Image.fromarray(pixels, mode="F").save(buffer, format="TIFF")
            tmp.write_bytes(buffer.getvalue())
    else:
        import SimpleITK as sitk

        image = to_sitk(raw)

        def save(tmp: Path) -> None:
            # SimpleITK picks the writer from the file name, so write beside tmp with the real suffix first
            named = tmp.with_name(tmp.name + output_suffix(raw))
            try:
                sitk.WriteImage(image, str(named), useCompression=True)
                os.replace(named, tmp)
            finally:
                named.unlink(missing_ok=True)

    atomic_write(path, save)


# ------------------------------------------------------------------------------------------- headers only

def spacing_of(record: ImageRecord) -> tuple[float, ...]:
    """The record's spacing: the manifest's, else the medical header's (read without the pixels)."""
    if record.spacing is not None:
        return record.spacing
    from shiftkit.data.readers import SITK_SUFFIXES

    if record.path.name.lower().endswith(SITK_SUFFIXES):
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(record.path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise ImageReadError(f"{record.path}: cannot read the header ({reason})") from None
        return tuple(reader.GetSpacing())
    raise DataError(f"{record.origin or record.path}: no spacing (PNG/JPEG have none: add a 'spacing' column "
                    "to the manifest, e.g. 0.5,0.5)")


def header_geometry(record: ImageRecord) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """(size, spacing) in SimpleITK order from the header alone (no pixels), as :func:`read_raw` will see them;
    ``None`` when the header cannot be read (reading the image then names the problem)."""
    from shiftkit.data.readers import PIL_SUFFIXES, SITK_SUFFIXES

    name = record.path.name.lower()
    try:
        if name.endswith(PIL_SUFFIXES):
            from shiftkit.data.readers import open_pil

            with open_pil(record.path) as image:  # no raw DecompressionBombWarning; too large: read_raw says so
                size = tuple(image.size)
            return size, record.spacing or (1.0,) * len(size)
        if name.endswith(SITK_SUFFIXES):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(record.path))
            reader.ReadImageInformation()
            return tuple(reader.GetSize()), record.spacing or tuple(reader.GetSpacing())
    except Exception:  # noqa: BLE001  corrupt or unreadable: read_raw gives the one-line error
        return None
    return None
