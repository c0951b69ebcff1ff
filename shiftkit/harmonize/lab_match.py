"""Histogram matching of RGB images in CIELAB (``--method labmatch``), so that intensity is matched without
inventing colours.

Per-channel RGB histogram matching (``histmatch``) moves R, G and B by three unrelated monotone maps. A pixel's
hue is the *ratio* of its channels, so pixels of one colour that sit at different ranks in the three channels
(a brown lesion on pink skin, JPEG block noise around an edge) are sent to colours that were in neither image:
colour speckle and false hues. Matching in CIELAB separates lightness (L) from chroma (a, b):

- ``channels="l"`` (default) matches only L and keeps each pixel's a, b: brightness and contrast follow the
  reference, and no hue is changed (only lightness; colours pushed outside the sRGB gamut are clipped);
- ``channels="lab"`` matches L, a and b independently, which also moves the colour distribution (a and b are far
  less correlated than R, G and B, so it creates far fewer novel colours than RGB matching, but some).

The quantile fit and the matching itself are :class:`~shiftkit.harmonize.intensity.HistogramMatching`'s, run on the
LAB channels (so ``match_points``, ``histogram_levels``, ``reference`` and ``foreground`` mean the same); the
foreground (``foreground="otsu"`` or a given mask) is found on the RGB image, as for the other harmonizers. Inputs
are 8-bit RGB (values 0..255); outputs are floats in 0..255.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.base import Masks, register
from shiftkit.harmonize.colour import lab_to_rgb, rgb_to_lab
from shiftkit.harmonize.intensity import HistogramMatching
from shiftkit.harmonize.pixels import as_channels, keep_non_finite

LAB_CHANNELS = {"l": (0,), "lab": (0, 1, 2)}  # the ``channels`` choices: which CIELAB channels are matched


def _gray_refused(kind: str, channels: int, where: str = "") -> ConfigError:
    return ConfigError(f"{kind} matches colour images in CIELAB and needs RGB (3 channels); {where or 'the image'} "
                       f"has {channels} channel(s): for grayscale images use --method histmatch")


@register("labmatch")
class LabHistogramMatching(HistogramMatching):
    """Histogram matching in CIELAB: the L channel only (``channels="l"``) or L, a and b independently
    (``channels="lab"``); the other arguments are :class:`HistogramMatching`'s."""

    def __init__(self, channels: str = "l", match_points: int = 100, histogram_levels: int = 1024,
                 reference_points: int = 1025, reference: str = "average", foreground: str = "none",
                 seed: int = 0) -> None:
        super().__init__(match_points=match_points, histogram_levels=histogram_levels,
                         reference_points=reference_points, reference=reference, foreground=foreground, seed=seed)
        if channels not in LAB_CHANNELS:
            raise ConfigError(f"unknown labmatch channels '{channels}' (choose {', '.join(LAB_CHANNELS)})")
        self.channels = channels

    def check_input(self, stored: str, channels: int, name: str) -> None:
        if channels != 3:
            raise _gray_refused(self.kind, channels, name)
        if stored != "8bit":
            raise DataError(f"{self.kind} needs 8-bit RGB images ({name} is {stored})")

    def _rgb(self, image: np.ndarray) -> np.ndarray:
        array = as_channels(image)
        if array.shape[-1] != 3:
            raise _gray_refused(self.kind, array.shape[-1])
        return array

    def _lab(self, rgb: np.ndarray) -> np.ndarray:
        """The matched CIELAB channels of an RGB image (0..255), channel-last."""
        return rgb_to_lab(rgb / 255.0)[..., list(LAB_CHANNELS[self.channels])]

    def fit(self, images: Iterable[np.ndarray], masks: Masks = None) -> "LabHistogramMatching":
        """Fit :class:`HistogramMatching` on the matched LAB channels of the reference, with the masks found on
        (or checked against) the RGB images; the images are read one at a time."""
        current: list[np.ndarray | None] = []

        def lab_images() -> Iterator[np.ndarray]:
            for image, mask in self.fit_images(images, masks):
                current[:] = [mask]
                yield self._lab(self._rgb(image))

        def lab_masks() -> Iterator[np.ndarray | None]:  # the mask of the image just yielded (read after it)
            while True:
                yield current[0]

        return super().fit(lab_images(), lab_masks())

    def transform(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        rgb = self._rgb(image)
        mask = self.mask_for(rgb, mask)  # on the RGB image, as in fit
        lab = rgb_to_lab(rgb / 255.0)
        lab[..., list(LAB_CHANNELS[self.channels])] = super().transform(self._lab(rgb), mask)
        return keep_non_finite(lab_to_rgb(lab) * 255.0, rgb)
