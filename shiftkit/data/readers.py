"""Decode one image file into a float array in [0, 1].

PIL reads PNG/JPEG/TIFF/BMP (8 and 16 bit); SimpleITK reads DICOM, NIfTI, NRRD and MetaImage.

Intensity windowing (documented in README, "Images and intensities"):
- 8-bit images are divided by 255 (their stored range is already a display range);
- everything else (16-bit PNG/TIFF, float TIFF, DICOM, NIfTI, NRRD, MHA) is windowed to ``window``
  when the caller gives one (e.g. CT in Hounsfield units, ``(-1000, 400)``), otherwise to the image's own
  0.5th-99.5th percentile, then clipped to [0, 1].
A 3-D volume yields its middle axial slice unless ``slice_index`` says otherwise. DICOM MONOCHROME1
(white = low) comes back already inverted by SimpleITK (ITK >= 5.1), so all grayscale images share one
polarity; an explicit window applies to those inverted values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shiftkit.errors import ImageReadError

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SITK_SUFFIXES = (".dcm", ".dicom", ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_SUFFIXES = PIL_SUFFIXES + SITK_SUFFIXES

ROBUST_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class ReadOptions:
    """How raw intensities become [0, 1]; part of the cache key."""

    window: tuple[float, float] | None = None
    slice_index: int | None = None

    def key(self) -> str:
        return f"w={self.window}|s={self.slice_index}"


def is_image_path(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in IMAGE_SUFFIXES)


def _window(array: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    if window is None:
        low, high = np.percentile(array, ROBUST_PERCENTILES)
    else:
        low, high = window
    if high <= low:
        return np.zeros_like(array)
    return np.clip((array - low) / (high - low), 0.0, 1.0)


def _read_pil(path: Path, options: ReadOptions) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        mode = image.mode
        if mode.startswith("I") or mode == "F":  # 16-bit ("I;16", "I;16B"), 32-bit integer, float
            return _window(np.asarray(image), options.window)
        if mode not in ("L", "RGB"):  # LA, RGBA, RGBX, P, CMYK, YCbCr, 1, ...: alpha and padding dropped
            image = image.convert("L" if mode in ("1", "LA", "La") else "RGB")
        return np.asarray(image, dtype=np.float32) / 255.0


def _read_sitk(path: Path, options: ReadOptions) -> np.ndarray:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        channels = array.shape[-1]
        spatial = array.shape[:-1]
    else:
        channels, spatial = 1, array.shape
    if len(spatial) == 3:
        depth = spatial[0]
        index = depth // 2 if options.slice_index is None else options.slice_index
        if not 0 <= index < depth:
            raise ImageReadError(f"{path}: slice {index} is outside the volume (0..{depth - 1})")
        array = array[index]
    elif len(spatial) != 2:
        raise ImageReadError(f"{path}: expected a 2-D image or 3-D volume, got shape {array.shape}")
    if channels >= 3:
        array = array[..., :3]
        if array.dtype == np.uint8:
            return array.astype(np.float32) / 255.0
        return _window(array, options.window)
    if channels > 1:
        array = array[..., 0]
    return _window(array, options.window)


def _decoder_reason(exc: Exception) -> str:
    """One informative line of a decoder's error (SimpleITK's first line is only its source location)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if lines[0].startswith("Exception thrown in SimpleITK") else lines[0]
    return line.removeprefix("sitk::ERROR: ")[:300]


def _dicom_without_pixels(path: Path) -> bool:
    """A DICOM file (``DICM`` preamble) without a Pixel Data element: a report or structured-report object."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return data[128:132] == b"DICM" and b"\xe0\x7f\x10\x00" not in data and b"\x7f\xe0\x00\x10" not in data


def read_image(path: str | Path, options: ReadOptions = ReadOptions()) -> np.ndarray:
    """Return an ``H x W`` (grayscale) or ``H x W x 3`` float32 array in [0, 1].

    Raises :class:`ImageReadError` naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    name = path.name.lower()
    try:
        if name.endswith(PIL_SUFFIXES):
            array = _read_pil(path, options)
        elif name.endswith(SITK_SUFFIXES):
            array = _read_sitk(path, options)
        else:
            raise ImageReadError(f"{path}: unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)})")
    except ImageReadError:
        raise
    except PermissionError:
        raise ImageReadError(f"{path}: cannot read file (permission denied)") from None
    except Exception as exc:  # PIL and SimpleITK raise many types for corrupt files
        if name.endswith((".dcm", ".dicom")) and _dicom_without_pixels(path):
            raise ImageReadError(f"{path}: DICOM file has no pixel data (7FE0,0010)") from exc
        raise ImageReadError(f"{path}: cannot decode image ({_decoder_reason(exc)})") from exc
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.size == 0 or min(array.shape[:2]) < 1:
        raise ImageReadError(f"{path}: image has no pixels")
    return np.ascontiguousarray(array, dtype=np.float32)
