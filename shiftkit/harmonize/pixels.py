"""Pixel arrays as every array harmonizer sees them: channel-last, non-finite pixels left out, an optional mask.

Arrays carry a trailing channel axis (``H x W x C`` or ``D x H x W x C``); a 2-D array is one grayscale channel.
Non-finite pixels (NaN, +inf, -inf, as float TIFFs and medical volumes hold outside a field of view) are left out of
every statistic and written back unchanged. A foreground mask is a boolean array of the spatial shape;
``foreground="otsu"`` computes one per image (Otsu threshold on the channel mean) when none is given.
"""

from __future__ import annotations

import numpy as np

from shiftkit.errors import ConfigError, DataError

FOREGROUND_METHODS = ("none", "otsu")
FIT_PIXELS_PER_IMAGE = 20000  # seeded per-image pixel sample for pooled statistics (memory stays flat)


def as_channels(image: np.ndarray) -> np.ndarray:
    """``H x W`` -> ``H x W x 1``; arrays that already carry a channel axis are returned as float64."""
    image = np.asarray(image, dtype=np.float64)
    return image[..., None] if image.ndim == 2 else image


def restore_shape(result: np.ndarray, original: np.ndarray) -> np.ndarray:
    """``result`` (channel-last) back in the shape of ``original``: a 2-D input gets a 2-D output."""
    return result[..., 0] if np.ndim(original) == 2 else result


def keep_non_finite(out: np.ndarray, array: np.ndarray) -> np.ndarray:
    """Write ``array``'s non-finite pixels back into ``out`` unchanged (they stay missing)."""
    bad = ~np.isfinite(array)
    if bad.any():
        out[bad] = array[bad]
    return out


def check_foreground(method: str) -> str:
    """``method`` when it is one of :data:`FOREGROUND_METHODS`, else a one-line error."""
    if method not in FOREGROUND_METHODS:
        raise ConfigError(f"unknown foreground method '{method}' (choose {', '.join(FOREGROUND_METHODS)})")
    return method


def foreground_mask(image: np.ndarray, method: str = "otsu") -> np.ndarray | None:
    """A boolean foreground mask of the spatial shape (``None`` for ``method="none"``): Otsu's threshold on
    the channel mean, via SimpleITK. An image whose Otsu foreground is empty falls back to all pixels."""
    if check_foreground(method) == "none":
        return None
    import SimpleITK as sitk

    gray = as_channels(image).mean(axis=-1)
    finite = np.isfinite(gray)
    if finite.any() and not finite.all():  # Otsu on the finite pixels; the rest are left out anyway
        gray = np.where(finite, gray, gray[finite].min())
    gray = gray.astype(np.float32)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)  # 1 = above the threshold = foreground
    mask = sitk.GetArrayFromImage(otsu.Execute(sitk.GetImageFromArray(gray))).astype(bool)
    return mask if mask.any() else np.ones(gray.shape, dtype=bool)


def checked_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A given ``mask`` as booleans, refused when it does not fit ``image``'s spatial shape or is empty."""
    mask = np.asarray(mask, dtype=bool)
    spatial = as_channels(image).shape[:-1]
    if mask.shape != spatial:
        raise DataError(f"mask shape {mask.shape} does not match the image's spatial shape {spatial}")
    if not mask.any():
        raise DataError("the foreground mask is empty")
    return mask


def valid_pixels(image: np.ndarray, mask: np.ndarray | None, channel: int) -> np.ndarray:
    """The pixels a channel's statistics use: finite, and in the foreground ``mask`` when there is one."""
    valid = np.isfinite(image[..., channel])
    if mask is not None:
        valid &= mask
    if not valid.any():
        where = "in the foreground mask" if mask is not None else "in the image"
        raise DataError(f"no finite pixel {where} (channel {channel} is all NaN or infinite): nothing to harmonize")
    return valid


def channel_values(image: np.ndarray, mask: np.ndarray | None, channel: int) -> np.ndarray:
    """A channel's finite pixels (within ``mask``): non-finite ones are left out of every statistic."""
    return image[..., channel][valid_pixels(image, mask, channel)]
