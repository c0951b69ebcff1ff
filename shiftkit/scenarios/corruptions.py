"""Input-level corruptions of a target domain, each at two severities: what a scenario does to the target's pixels.

Every corruption takes a uint8 image (H x W grey or H x W x 3 RGB) and returns a uint8 image of the same shape, so
the corrupted set goes through the data layer like any folder. The operations are the library's (scipy's Gaussian
filter, Pillow's resampling and JPEG codec); what is written here is the per-pixel arithmetic of contrast, gamma,
noise and colour gains, which no library call does more plainly. Severity parameters are relative to the image's
side where the effect depends on scale (blur), so a 28 px MedMNIST image and a 128 px dermoscopy image are degraded
alike; they are in 0-255 intensity units elsewhere.

- ``blur``: Gaussian blur of standard deviation ``sigma_fraction * side`` pixels (per channel, not across them);
- ``noise``: additive Gaussian noise of standard deviation ``sigma`` (intensity units), drawn from a seeded generator;
- ``contrast``: every pixel pulled toward the image mean by factor ``c`` (the standard deviation scales by c);
- ``gamma``: ``255 * (x / 255) ** gamma``;
- ``resolution``: down-sampled by ``factor`` with area averaging (Pillow's BOX filter), then up-sampled back to the
  original size with bilinear interpolation: fewer distinct samples on the same pixel grid (the set keeps one image
  size; :func:`downsample` alone gives the small image);
- ``jpeg``: encoded as JPEG at ``quality`` and decoded (the decoded pixels are what a scenario stores, as PNG);
- ``colour_cast``: each RGB channel multiplied by its gain (RGB images only).

Rounding to uint8 and clipping at 0 and 255 follow each operation; they are the only departures from the formulas.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from shiftkit.errors import ConfigError


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _check(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ConfigError(f"corruptions take uint8 H x W or H x W x 3 images (got {image.dtype} {image.shape})")
    return image


def blur(image: np.ndarray, sigma_fraction: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Gaussian blur, sigma = ``sigma_fraction`` x the shorter side (scipy.ndimage.gaussian_filter, reflected edges)."""
    image = _check(image)
    sigma = float(sigma_fraction) * min(image.shape[:2])
    sigmas = (sigma, sigma, 0) if image.ndim == 3 else (sigma, sigma)
    return _to_uint8(ndimage.gaussian_filter(image.astype(np.float64), sigma=sigmas, mode="reflect"))


def noise(image: np.ndarray, sigma: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Additive Gaussian noise of standard deviation ``sigma`` (0-255 units); ``rng`` makes it reproducible."""
    image = _check(image)
    rng = rng if rng is not None else np.random.default_rng(0)
    return _to_uint8(image.astype(np.float64) + rng.normal(0.0, float(sigma), size=image.shape))


def contrast(image: np.ndarray, factor: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """``mean + factor * (x - mean)`` with the image's own mean (per channel): the standard deviation times factor."""
    image = _check(image).astype(np.float64)
    mean = image.mean(axis=(0, 1), keepdims=True)
    return _to_uint8(mean + float(factor) * (image - mean))


def gamma(image: np.ndarray, exponent: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """``255 * (x / 255) ** exponent``: above 1 darkens the mid-tones, 0 and 255 stay."""
    image = _check(image).astype(np.float64)
    return _to_uint8(255.0 * (image / 255.0) ** float(exponent))


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """The image at 1/``factor`` of its size (at least 1 px), by area averaging (Pillow's BOX filter)."""
    image = _check(image)
    height, width = image.shape[:2]
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def resolution(image: np.ndarray, factor: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Down-sampled by ``factor`` (:func:`downsample`), then back to the original size (bilinear)."""
    image = _check(image)
    small = downsample(image, factor)
    height, width = image.shape[:2]
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR))


def jpeg(image: np.ndarray, quality: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Encoded as JPEG at ``quality`` (1-95, Pillow/libjpeg, 4:2:0 chroma for RGB) and decoded."""
    image = _check(image)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB" if image.ndim == 3 else "L"))


def colour_cast(image: np.ndarray, gains: tuple[float, float, float],
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Each RGB channel times its gain (a white balance that is off); grey images are refused."""
    image = _check(image)
    if image.ndim != 3:
        raise ConfigError("colour_cast needs RGB images; this image is grey")
    return _to_uint8(image.astype(np.float64) * np.asarray(gains, dtype=np.float64).reshape(1, 1, 3))


@dataclass(frozen=True)
class Corruption:
    """A corruption and its parameter at severity 1 and 2 (2 is the stronger)."""

    name: str
    apply: Callable[..., np.ndarray]
    severities: dict[int, object]
    rgb_only: bool = False

    def parameter(self, severity: int) -> object:
        if severity not in self.severities:
            raise ConfigError(f"corruption '{self.name}': severity must be one of {sorted(self.severities)}")
        return self.severities[severity]

    def __call__(self, image: np.ndarray, severity: int, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.apply(image, self.parameter(severity), rng=rng)


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("blur", blur, {1: 0.025, 2: 0.05}),  # sigma 0.7 / 1.4 px at 28 px, 3.2 / 6.4 px at 128 px
    Corruption("noise", noise, {1: 12.0, 2: 25.0}),
    Corruption("contrast", contrast, {1: 0.6, 2: 0.35}),
    Corruption("gamma", gamma, {1: 1.6, 2: 2.5}),
    Corruption("resolution", resolution, {1: 2, 2: 4}),
    Corruption("jpeg", jpeg, {1: 30, 2: 10}),
    Corruption("colour_cast", colour_cast, {1: (1.15, 1.0, 0.85), 2: (1.3, 1.0, 0.7)}, rgb_only=True),
)}
"""Every corruption by name, with its two severities."""


def corruption(name: str) -> Corruption:
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption '{name}' (choose from {', '.join(CORRUPTIONS)})")
    return CORRUPTIONS[name]
