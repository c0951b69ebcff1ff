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

Refused as bad images (README, "Reliability"): a path that is not a regular file (said as what it is: a device, a
pipe, a symlink loop, ...), an image whose header announces more than ``$SHIFTKIT_MAX_IMAGE_GB`` (1 GiB) of decoding,
and a float image without a single finite pixel (it is not a black image).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shiftkit.data.paths import path_problem
from shiftkit.errors import ConfigError, ImageReadError

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SITK_SUFFIXES = (".dcm", ".dicom", ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_SUFFIXES = PIL_SUFFIXES + SITK_SUFFIXES

ROBUST_PERCENTILES = (0.5, 99.5)

# Decompressed-size guard (README, "Reliability"): before any pixel is decoded, the size the header announces is
# turned into the memory decoding would take (the decoded samples plus the float32 working copy for PIL; the ITK
# image plus its NumPy copy for SimpleITK) and refused above this limit, so a 1 MB .nii.gz of 1000^3 voxels or a
# 12000^2 PNG is one clear line, not gigabytes. $SHIFTKIT_MAX_IMAGE_GB raises (or, at 0, lifts) it. Pillow's own
# pixel limit follows it (limit / 5 bytes, the least a pixel costs here, so Pillow never refuses an image this check
# accepts and still guards other Pillow reads), and its DecompressionBombWarning is silenced: this check says it.
DEFAULT_MAX_IMAGE_BYTES = 1024**3
MAX_IMAGE_ENV = "SHIFTKIT_MAX_IMAGE_GB"


class _NoFinitePixels(Exception):
    """A float image whose every pixel is NaN or infinite."""


def max_image_bytes() -> int | None:
    """Decoding memory allowed per image: ``$SHIFTKIT_MAX_IMAGE_GB`` (GiB, read for each image; 0 means no
    limit) or 1 GiB. A value that is not a non-negative number is a :class:`ConfigError` naming the variable."""
    text = os.environ.get(MAX_IMAGE_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_BYTES
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{MAX_IMAGE_ENV}='{text}' must be a number of GB (e.g. 4), or 0 for no limit")
    return None if value == 0 else int(value * 1024**3)


def _size_text(n: float) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1024:.0f} kB"


def _check_size(path: Path, dims: tuple[int, ...], bytes_needed: int, limit: int | None) -> None:
    if limit is not None and bytes_needed > limit:
        shape = "x".join(str(d) for d in dims)
        unit = "voxels" if len(dims) > 2 and min(dims) > 1 else "pixels"
        raise ImageReadError(f"{path}: image is {shape} {unit}, which would take {_size_text(bytes_needed)} to "
                             f"decode, above the limit of {_size_text(limit)} per image (set {MAX_IMAGE_ENV} to "
                             "raise it)")


MIN_PIL_BYTES_PER_PIXEL = 5  # one 8-bit sample + its float32 copy


def _pil(limit: int | None):
    """PIL's Image module, its decompression-bomb limit set from ``limit`` and its warning silenced (each time:
    ``warnings.catch_warnings`` blocks elsewhere may have restored the filters)."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    Image.MAX_IMAGE_PIXELS = None if limit is None else max(1, limit // MIN_PIL_BYTES_PER_PIXEL)
    return Image


def _pil_bytes_per_pixel(mode: str, bands: int) -> int:
    stored = 2 if mode.startswith("I;16") else 4 if mode in ("I", "F", "I;32") else bands
    return stored + 4 * (1 if bands < 3 else 3)  # the decoded samples + the float32 image returned


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
        if not np.any(np.isfinite(array)):  # all NaN/inf: there is no image, not a black one
            raise _NoFinitePixels()
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    if window is None:
        low, high = np.percentile(array, ROBUST_PERCENTILES)
    else:
        low, high = window
    if high <= low:
        return np.zeros_like(array)
    return np.clip((array - low) / (high - low), 0.0, 1.0)


def open_pil(path: Path):
    """``PIL.Image.open(path)`` (header only, use it as a context manager), refused with an
    :class:`ImageReadError` when decoding it would exceed :func:`max_image_bytes`."""
    limit = max_image_bytes()
    Image = _pil(limit)
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as exc:  # over twice Pillow's pixel limit, i.e. surely over ``limit``
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        count = int(pixels.group(1)) if pixels else 2 * Image.MAX_IMAGE_PIXELS
        raise ImageReadError(f"{path}: image has {count} pixels, which would take at least "
                             f"{_size_text(count * MIN_PIL_BYTES_PER_PIXEL)} to decode, above the limit of "
                             f"{_size_text(limit)} per image (set {MAX_IMAGE_ENV} to raise it)") from None
    width, height = image.size
    try:
        _check_size(path, (width, height), width * height * _pil_bytes_per_pixel(image.mode, len(image.getbands())),
                    limit)
    except ImageReadError:
        image.close()
        raise
    return image


def read_sitk(path: Path):
    """``SimpleITK.ReadImage(path)``, refused with an :class:`ImageReadError` before any pixel is read when the
    header's size means decoding (the ITK image plus its NumPy copy) would exceed :func:`max_image_bytes`."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()  # the header: size and pixel type, no pixels yet
    dims = tuple(int(d) for d in reader.GetSize())
    pixel_type = sitk.GetPixelIDValueAsString(reader.GetPixelID())  # "16-bit signed integer", "vector of ..."
    bits = re.search(r"(\d+)-bit", pixel_type)
    sample = (int(bits.group(1)) // 8 if bits else 8) * (2 if pixel_type.startswith("complex") else 1)
    _check_size(path, dims, 2 * math.prod(dims) * sample * reader.GetNumberOfComponents(), max_image_bytes())
    return reader.Execute()


def _read_pil(path: Path, options: ReadOptions) -> np.ndarray:
    with open_pil(path) as image:
        image.load()
        mode = image.mode
        if mode.startswith("I") or mode == "F":  # 16-bit ("I;16", "I;16B"), 32-bit integer, float
            return _window(np.asarray(image), options.window)
        if mode not in ("L", "RGB"):  # LA, RGBA, RGBX, P, CMYK, YCbCr, 1, ...: alpha and padding dropped
            image = image.convert("L" if mode in ("1", "LA", "La") else "RGB")
        return np.asarray(image, dtype=np.float32) / 255.0


def _read_sitk(path: Path, options: ReadOptions, header: dict | None = None) -> np.ndarray:
    import SimpleITK as sitk

    image = read_sitk(path)
    if header is not None:  # from the image already read: no second read of the file
        header["spacing"] = tuple(float(s) for s in image.GetSpacing()[:2])
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


def read_image(path: str | Path, options: ReadOptions = ReadOptions(), header: dict | None = None) -> np.ndarray:
    """Return an ``H x W`` (grayscale) or ``H x W x 3`` float32 array in [0, 1].

    When ``header`` is a dict, what the file's header says that the array does not is put in it during this one
    decode: ``spacing``, the in-plane pixel spacing (x, y) of SimpleITK formats (PIL formats have none).
    Raises :class:`ImageReadError` naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise ImageReadError(f"{path}: {problem}")
    name = path.name.lower()
    try:
        if name.endswith(PIL_SUFFIXES):
            array = _read_pil(path, options)
        elif name.endswith(SITK_SUFFIXES):
            array = _read_sitk(path, options, header)
        else:
            raise ImageReadError(f"{path}: unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)})")
    except (ImageReadError, ConfigError):
        raise
    except _NoFinitePixels:
        raise ImageReadError(f"{path}: image has no finite pixel values (all NaN or infinite)") from None
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
