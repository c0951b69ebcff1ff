"""Colour constancy for dermoscopy and photography: Shades of Gray (``--method colour --colour-method
shades_of_gray``).

Finlayson & Trezzi (2004) estimate an image's illuminant as the Minkowski p-norm mean of each channel,
``e_c = (mean over pixels of I_c^p)^(1/p)``: ``p=1`` is gray-world (the mean colour is gray), ``p=inf`` max-RGB
(the brightest value of each channel is white), ``p=6`` (the default) what Barata et al. (2015) found best for
dermoscopy and ISIC pipelines use. The cast is removed with a von Kries diagonal map, ``gain_c = target_c / e_c``
(``e`` and ``target`` as unit vectors), scaled so that the image's mean intensity (over the pixels the estimate
used) is unchanged: only the colour balance moves, not the brightness.

Unlike Reinhard, which moves each image's LAB mean and spread (dominated by the lesion, which varies with class
and site), the correction is one gain per channel: the lesion's colour relative to the skin is kept.

``target="reference"`` maps every image's illuminant onto the reference set's mean illuminant (learned by
``fit``); ``target="neutral"`` onto gray (the usual ISIC preprocessing; ``fit`` then only records the reference's
illuminant). Inputs are 8-bit RGB (0..255); outputs are floats clipped to 0..255.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.base import Masks, register
from shiftkit.harmonize.colour import _ColourNormalization
from shiftkit.harmonize.pixels import as_channels, keep_non_finite

TARGETS = ("reference", "neutral")
NEUTRAL = np.full(3, 1.0 / math.sqrt(3.0))


def minkowski_norm(p: float | str) -> float | str:
    """``p`` as stored: a float >= 1, or ``"inf"`` (max-RGB; JSON holds no infinity). Accepts numbers and their
    text, including ``"inf"``/``"infinity"``, as the CLI and a saved file give them."""
    try:
        value = float(p)
    except (TypeError, ValueError):
        raise ConfigError(f"Shades of Gray p '{p}' must be a number >= 1 or 'inf'") from None
    if math.isnan(value) or value < 1:
        raise ConfigError(f"Shades of Gray p {p} must be >= 1 (1: gray-world, inf: max-RGB)")
    return "inf" if math.isinf(value) else value


def illuminant(image: np.ndarray, p: float | str, mask: np.ndarray | None = None) -> np.ndarray:
    """The Shades of Gray illuminant of an RGB image, ``(mean I_c^p)^(1/p)`` per channel over the finite pixels
    (in ``mask`` when given), as a unit vector (zeros for a black image).

    Written out (no library has it): computed as ``max_c * (mean (I_c / max_c)^p)^(1/p)`` so that a large ``p``
    cannot overflow."""
    array = as_channels(image)
    valid = np.isfinite(array).all(axis=-1)
    if mask is not None:
        valid &= mask
    if not valid.any():
        raise DataError("no finite pixel in the foreground to estimate the illuminant from")
    pixels = np.clip(array[valid], 0.0, None)  # n x 3
    top = pixels.max(axis=0)
    if p == "inf":
        estimate = top
    else:
        safe = np.where(top > 0, top, 1.0)
        estimate = top * np.mean((pixels / safe) ** float(p), axis=0) ** (1.0 / float(p))
    norm = np.linalg.norm(estimate)
    return estimate / norm if norm > 0 else estimate


@register("shades_of_gray", method="colour")
class ShadesOfGray(_ColourNormalization):
    """Shades of Gray colour constancy: each image's illuminant (Minkowski ``p``-norm) is mapped onto the
    reference's mean illuminant or onto gray by per-channel gains that keep the image's mean intensity."""

    def __init__(self, p: float | str = 6.0, target: str = "reference", foreground: str = "none") -> None:
        super().__init__()
        self.p = minkowski_norm(p)
        if target not in TARGETS:
            raise ConfigError(f"unknown Shades of Gray target '{target}' (choose {', '.join(TARGETS)})")
        self.target = target
        self.foreground = foreground  # checked by the base

    def _rgb(self, image: np.ndarray) -> np.ndarray:
        array = as_channels(image)
        if array.shape[-1] != 3:
            raise DataError(f"{self.kind} colour constancy needs RGB images (H x W x 3); got shape "
                            f"{np.shape(image)}")
        return array

    def fit(self, images: Iterable[np.ndarray], masks: Masks = None) -> "ShadesOfGray":
        estimates = [illuminant(self._rgb(image), self.p, mask) for image, mask in self.fit_images(images, masks)]
        mean = np.mean(estimates, axis=0)
        reference = mean / np.linalg.norm(mean) if np.linalg.norm(mean) > 0 else mean
        if not (reference > 0).all():
            channel = int(np.argmin(reference))
            raise DataError(f"{self.kind}: every reference image is black in channel {channel}; there is no "
                            "illuminant to map onto; use a reference with colour")
        target = reference if self.target == "reference" else NEUTRAL
        state = {"channels": 3, "target_illuminant": target.tolist(), "reference_illuminant": reference.tolist(),
                 "n_images": len(estimates)}
        self._fitted(state, np.ones(3))  # the check above stands for the spread check: refuses non-finite numbers
        return self

    def gains(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """The per-channel gains ``transform`` multiplies ``image`` by: ``target / illuminant``, scaled so the
        mean intensity over the estimate's pixels is unchanged (gain 1 for a channel that is black there)."""
        target = np.asarray(self._require_fitted()["target_illuminant"], dtype=np.float64)
        rgb = self._rgb(image)
        mask = self.mask_for(rgb, mask)
        estimate = illuminant(rgb, self.p, mask)
        gains = np.where(estimate > 0, target / np.where(estimate > 0, estimate, 1.0), 1.0)
        valid = np.isfinite(rgb).all(axis=-1) & (mask if mask is not None else True)
        means = np.clip(rgb[valid], 0.0, None).mean(axis=0)
        scaled = float(gains @ means)
        return gains * (means.sum() / scaled) if scaled > 0 else np.ones(3)

    def transform(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        rgb = self._rgb(image)
        out = np.clip(rgb * self.gains(rgb, mask), 0.0, 255.0)
        return keep_non_finite(out, rgb)
