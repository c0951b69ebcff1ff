"""Read a radiomics case's image and mask as SimpleITK images, keeping the stored intensities.

Unlike :func:`shiftkit.data.readers.read_image` (which windows to [0, 1] for a CNN), radiomics needs the values as
stored: Hounsfield units, MR signal, 8-bit display values. So:

- NRRD, NIfTI, MetaImage, DICOM (SimpleITK): read as stored, with their spacing, origin and direction; 2-D or 3-D.
- PNG, JPEG, TIFF, BMP (Pillow): a 2-D image with spacing 1 (pixels) and origin 0. Grayscale keeps its values (8 or
  16 bit); **RGB is turned into luminance** Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, the weights of Pillow's
  ``convert("L")``, kept as float32 without rounding); an alpha channel is dropped. A vector-valued SimpleITK image
  (RGB NRRD) is treated the same way.
- Masks are label maps: integer values (a float mask must hold whole numbers), one channel (an RGB mask whose three
  channels are equal is read as one; a palette PNG keeps its palette indices as labels).

Size guards (a header that announces gigabytes) are those of :mod:`shiftkit.data.readers`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shiftkit.data.paths import path_problem
from shiftkit.data.readers import PIL_SUFFIXES, open_pil, read_sitk
from shiftkit.errors import DataError

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class CaseError(DataError):
    """One case cannot be extracted (its image or mask); the others go on."""


def is_pil_path(path: Path) -> bool:
    """PNG/JPEG/TIFF/BMP: read with Pillow as a 2-D image of spacing 1."""
    return Path(path).name.lower().endswith(PIL_SUFFIXES)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """``... x 3`` (or more channels: the first three are R, G, B) -> float32 luminance (BT.601 weights)."""
    return np.asarray(rgb[..., :3], dtype=np.float32) @ LUMA


def _check_path(path: Path, what: str) -> None:
    problem = path_problem(path)
    if problem is not None:
        raise CaseError(f"{what} {path}: {problem}")


def _decode_error(path: Path, what: str, exc: Exception) -> CaseError:
    if isinstance(exc, DataError):
        return CaseError(str(exc))
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = lines[-1] if lines and lines[0].startswith("Exception thrown in SimpleITK") else (lines[0] if lines else "")
    return CaseError(f"{what} {path}: cannot be read ({line.removeprefix('sitk::ERROR: ')[:200] or type(exc).__name__})")


def _pil_array(path: Path, what: str, *, mask: bool) -> np.ndarray:
    """A Pillow image as an array: ``H x W`` (grayscale, palette indices, or one channel of an equal-channel
    mask) or ``H x W x 3`` (colour image)."""
    try:
        with open_pil(path) as image:
            image.load()
            mode = image.mode
            if mask:
                if mode == "1":
                    return np.asarray(image, dtype=np.uint8)
                if mode in ("L", "P") or mode.startswith("I") or mode == "F":
                    return np.asarray(image)
                array = np.asarray(image.convert("RGB"))
                if not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])):
                    raise CaseError(f"{what} {path}: a colour image whose channels differ, not a label map; save it "
                                    "as a single-channel (grayscale or palette) PNG")
                return array[..., 0]
            if mode.startswith("I") or mode == "F" or mode == "L":
                return np.asarray(image)
            if mode in ("1", "LA", "La"):
                return np.asarray(image.convert("L"))
            return np.asarray(image.convert("RGB"))
    except CaseError:
        raise
    except Exception as exc:  # PIL's UnidentifiedImageError, truncated files, size guard
        raise _decode_error(path, what, exc) from None


def read_image(path: str | Path, *, colour: bool = False):
    """The image as a scalar SimpleITK image (RGB -> luminance), or with ``colour=True`` as it is stored (a vector
    image for RGB), for the deep features' crop. Raises :class:`CaseError` naming the file."""
    import SimpleITK as sitk

    path = Path(path)
    _check_path(path, "image")
    if is_pil_path(path):
        array = _pil_array(path, "image", mask=False)
        if array.ndim == 3 and not colour:
            array = luminance(array)
        return sitk.GetImageFromArray(array, isVector=array.ndim == 3)
    try:
        image = read_sitk(path)
    except Exception as exc:
        raise _decode_error(path, "image", exc) from None
    if image.GetNumberOfComponentsPerPixel() > 1 and not colour:
        array = sitk.GetArrayFromImage(image)
        if array.shape[-1] >= 3:
            scalar = sitk.GetImageFromArray(luminance(array))
        else:
            scalar = sitk.GetImageFromArray(array[..., 0])
        scalar.CopyInformation(image)
        return scalar
    return image


def read_mask(path: str | Path):
    """The mask as an unsigned 32-bit SimpleITK label map. Refused (:class:`CaseError`): a colour mask, a float
    mask with fractional values (a probability map), negative labels."""
    import SimpleITK as sitk

    path = Path(path)
    _check_path(path, "mask")
    if is_pil_path(path):
        mask = sitk.GetImageFromArray(_pil_array(path, "mask", mask=True))
    else:
        try:
            mask = read_sitk(path)
        except Exception as exc:
            raise _decode_error(path, "mask", exc) from None
        if mask.GetNumberOfComponentsPerPixel() > 1:
            array = sitk.GetArrayFromImage(mask)
            if any(not np.array_equal(array[..., 0], array[..., c]) for c in range(1, array.shape[-1])):
                raise CaseError(f"mask {path}: has {array.shape[-1]} channels that differ, not a label map")
            scalar = sitk.GetImageFromArray(array[..., 0])
            scalar.CopyInformation(mask)
            mask = scalar
    values = sitk.GetArrayViewFromImage(mask)
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all() or not np.array_equal(values, np.round(values)):
            example = values[~finite][0] if not finite.all() else values[values != np.round(values)][0]
            raise CaseError(f"mask {path}: holds non-integer values (e.g. {float(example):g}), not a label map; "
                            "threshold a probability map first")
    if values.dtype.kind in "fi" and values.size and values.min() < 0:
        raise CaseError(f"mask {path}: holds negative values ({values.min():g}); labels are 0 (background) and "
                        "positive integers")
    return sitk.Cast(mask, sitk.sitkUInt32)
