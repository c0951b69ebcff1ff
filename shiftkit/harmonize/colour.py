"""Colour normalization for RGB images (dermoscopy, histology), fitted on the source domain.

- :class:`Reinhard` -- Reinhard et al. (2001) colour transfer in CIELAB (sRGB, D65 white): each target image's
  per-channel LAB mean and sd are moved to the source domain's typical image (the mean over source images of
  their per-image LAB means and sds);
- :class:`Macenko` -- Macenko et al. (2009) stain normalization for H&E: the stain matrix and the 99th-percentile
  stain concentrations of the source (from a seeded pixel sample pooled over source images) replace each target
  image's own.

Both take 8-bit-valued RGB arrays (``H x W x 3``, values 0..255, float or uint8) and return floats in 0..255.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.base import Harmonizer, register
from shiftkit.harmonize.pixels import FIT_PIXELS_PER_IMAGE

_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_XYZ_TO_SRGB = np.linalg.inv(_SRGB_TO_XYZ)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
_DELTA = 6.0 / 29.0


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (``... x 3``) -> CIELAB (L in 0..100), D65 white."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE
    f = np.where(xyz > _DELTA ** 3, np.cbrt(xyz), xyz / (3 * _DELTA ** 2) + 4.0 / 29.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])],
                    axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB -> sRGB in [0, 1] (out-of-gamut colours clipped)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4.0 / 29.0)) * _D65_WHITE
    linear = np.clip(xyz @ _XYZ_TO_SRGB.T, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def _rgb(image: np.ndarray, kind: str) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise DataError(f"{kind} colour normalization needs RGB images (H x W x 3); got shape {array.shape}")
    return array


def _fit_rgb(images: Iterable[np.ndarray], kind: str):
    count = 0
    for image in images:
        count += 1
        yield _rgb(image, kind)
    if count == 0:
        raise DataError("the reference (source) domain has no images to fit on")


class _ColourNormalization(Harmonizer):
    """What both colour methods share: 8-bit RGB inputs only (their outputs are 0..255 RGB)."""

    def check_input(self, stored: str, channels: int, name: str) -> None:
        if stored != "8bit" or channels != 3:
            raise DataError(f"{self.kind} colour normalization needs 8-bit RGB images ({name} is {stored} with "
                            f"{channels} channel(s))")


@register("reinhard", method="colour")  # the first registered: --method colour's default
class Reinhard(_ColourNormalization):
    """Reinhard colour transfer in CIELAB: per-image LAB mean/sd moved to the source domain's typical values."""

    @staticmethod
    def lab_stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and sd of an RGB image (0..255) in CIELAB."""
        lab = rgb_to_lab(_rgb(image, "Reinhard") / 255.0).reshape(-1, 3)
        return lab.mean(0), lab.std(0)

    def fit(self, images: Iterable[np.ndarray], masks: Any = None) -> "Reinhard":
        stats = [self.lab_stats(image) for image in _fit_rgb(images, "Reinhard")]
        self.state = {"channels": 3, "lab_mean": np.mean([m for m, _ in stats], 0).tolist(),
                      "lab_sd": np.mean([s for _, s in stats], 0).tolist(), "n_images": len(stats)}
        return self

    def transform(self, image: np.ndarray, mask: Any = None) -> np.ndarray:
        state = self._require_fitted()
        lab = rgb_to_lab(_rgb(image, "Reinhard") / 255.0)
        mean, sd = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
        lab = (lab - mean) / np.where(sd > 0, sd, 1.0) * np.asarray(state["lab_sd"]) + np.asarray(state["lab_mean"])
        return lab_to_rgb(lab) * 255.0


@register("macenko", method="colour")
class Macenko(_ColourNormalization):
    """Macenko stain normalization for H&E (optical density ``-ln((I + 1) / io)``; pixels whose OD is below
    ``beta`` in any channel are background; stain vectors at the ``alpha`` and ``100 - alpha`` angle percentiles
    in the plane of the two main OD eigenvectors; hematoxylin first)."""

    def __init__(self, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15, seed: int = 0) -> None:
        super().__init__()
        if not (io > 0 and 0 < alpha < 50 and beta >= 0):
            raise ConfigError("Macenko needs io > 0, 0 < alpha < 50 and beta >= 0")
        self.io, self.alpha, self.beta, self.seed = float(io), float(alpha), float(beta), int(seed)

    def _od(self, image: np.ndarray) -> np.ndarray:
        return -np.log((_rgb(image, "Macenko").reshape(-1, 3) + 1.0) / self.io)

    def stain_matrix(self, od: np.ndarray) -> np.ndarray:
        """3 x 2 unit stain vectors (columns: hematoxylin, eosin) from optical densities (n x 3)."""
        tissue = od[np.all(od > self.beta, axis=1)]
        if len(tissue) < 10:
            raise DataError("Macenko: fewer than 10 stained pixels (optical density above beta); "
                            "is this an H&E image?")
        _, vectors = np.linalg.eigh(np.cov(tissue.T))
        plane = vectors[:, 1:3]  # the two largest eigenvalues
        plane = plane * np.where(plane[0] < 0, -1.0, 1.0)  # fix the eigenvectors' sign for determinism
        angles = np.arctan2(tissue @ plane[:, 1], tissue @ plane[:, 0])
        low, high = np.percentile(angles, [self.alpha, 100 - self.alpha])
        first = plane @ np.array([np.cos(low), np.sin(low)])
        second = plane @ np.array([np.cos(high), np.sin(high)])
        stains = np.stack([first, second], axis=1) if first[0] > second[0] else np.stack([second, first], axis=1)
        return stains / np.linalg.norm(stains, axis=0, keepdims=True)

    @staticmethod
    def _concentrations(od: np.ndarray, stains: np.ndarray) -> np.ndarray:
        return np.linalg.lstsq(stains, od.T, rcond=None)[0]  # 2 x n

    def fit(self, images: Iterable[np.ndarray], masks: Any = None) -> "Macenko":
        rng = np.random.default_rng(self.seed)
        samples = []
        for image in _fit_rgb(images, "Macenko"):
            od = self._od(image)
            if len(od) > FIT_PIXELS_PER_IMAGE:
                od = od[rng.choice(len(od), FIT_PIXELS_PER_IMAGE, replace=False)]
            samples.append(od)
        od = np.concatenate(samples)
        stains = self.stain_matrix(od)
        max_c = np.percentile(self._concentrations(od, stains), 99, axis=1)
        self.state = {"channels": 3, "stain_matrix": stains.tolist(), "max_concentrations": max_c.tolist(),
                      "n_images": len(samples)}
        return self

    def transform(self, image: np.ndarray, mask: Any = None) -> np.ndarray:
        state = self._require_fitted()
        array = _rgb(image, "Macenko")
        od = self._od(array)
        reference = np.asarray(state["stain_matrix"])
        try:
            stains = self.stain_matrix(od)
        except DataError:  # almost no stain (background tile): leave the image as it is
            return array.copy()
        concentrations = self._concentrations(od, stains)
        own_max = np.percentile(concentrations, 99, axis=1)
        concentrations *= (np.asarray(state["max_concentrations"]) / np.where(own_max > 0, own_max, 1.0))[:, None]
        out = self.io * np.exp(-(reference @ concentrations)).T
        return np.clip(out, 0.0, 255.0).reshape(array.shape)
