"""Intensity harmonization fitted on the source domain and applied to target images.

Three methods, each a :class:`Harmonizer` (``fit`` on source images, ``transform`` one target image, ``save`` /
``load`` as a small JSON file that round-trips exactly):

- :class:`HistogramMatching` -- SimpleITK's ``HistogramMatchingImageFilter`` against the source domain's typical
  image (the mean of the source images' quantile functions; ``reference="pooled"`` uses all source pixels), with many match points (default 100; SimpleITK's own default is 1, which only matches the
  mean);
- :class:`NyulStandardization` -- Nyúl & Udupa (2000) piecewise-linear standardization: landmarks (1st, 10th,
  ..., 90th, 99th percentiles) learned on the source, as TorchIO's ``HistogramStandardization`` does;
- :class:`ZScore` -- per-image mean/sd standardization within an optional foreground mask, with optional
  percentile clipping; the result is put on the source's scale (``scale="source"``, the default, so that 8-bit
  images stay 8-bit) or left at mean 0 / sd 1 (``scale="unit"``).

``masks`` (in ``fit``) is an optional iterable of per-image masks, aligned with ``images``.

Non-finite pixels (NaN, +inf, -inf, as float TIFFs and medical volumes hold outside a field of view) are left out of
every statistic, in ``fit`` and in ``transform``, and are written back unchanged: they stay missing, and every other
pixel is harmonized as if they were not there. An image (or foreground) without a single finite pixel is refused, as
is a reference whose images are all constant (there is no intensity distribution to map onto: every output would be
constant), and a fit whose learned numbers are not finite (intensities that overflow float64).
Arrays carry a trailing channel axis (``H x W x C`` or ``D x H x W x C``); a 2-D array is one grayscale channel.
Colour images (dermoscopy, histology) are harmonized per channel. A foreground mask is a boolean array of the
spatial shape; ``foreground="otsu"`` computes one per image (Otsu threshold on the channel mean) when none is given.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from shiftkit.errors import ConfigError
from shiftkit.harmonize.base import (
    FORMAT,
    FORMAT_VERSION,
    Harmonizer,
    Masks,
    check_state,
    read_harmonizer_dict,
    register,
)
from shiftkit.harmonize.pixels import (
    FIT_PIXELS_PER_IMAGE,
    FOREGROUND_METHODS,
    as_channels,
    channel_values,
    foreground_mask,
    keep_non_finite,
    restore_shape,
    valid_pixels,
)

__all__ = [  # the base class, file format and pixel helpers lived here: old imports keep working
    "FIT_PIXELS_PER_IMAGE", "FOREGROUND_METHODS", "FORMAT", "FORMAT_VERSION", "Harmonizer", "HistogramMatching",
    "NyulStandardization", "ZScore", "as_channels", "check_state", "foreground_mask", "keep_non_finite",
    "read_harmonizer_dict",
]


def _pair(values: Sequence[float] | None, name: str) -> tuple[float, float] | None:
    if values is None:
        return None
    low, high = (float(v) for v in values)
    if not 0 <= low < high <= 100:
        raise ConfigError(f"{name} ({low}, {high}) must satisfy 0 <= low < high <= 100")
    return low, high


# ------------------------------------------------------------------------------------------ histogram matching

@register("histmatch")
class HistogramMatching(Harmonizer):
    """Match each target channel's histogram to the source domain's histogram.

    ``fit`` keeps ``reference_points`` quantiles per channel of the source: ``reference="average"`` (default) the
    mean over source images of each image's quantile function (the Wasserstein barycenter of the per-image
    histograms: the source's *typical* image, as Nyúl averages landmarks), or ``reference="pooled"`` the quantiles
    of all source pixels together (a seeded sample of at most 20,000 foreground pixels per image), which includes
    the between-image spread and so over-stretches each single image. ``transform`` runs SimpleITK's
    ``HistogramMatchingImageFilter`` (``match_points`` quantiles, ``histogram_levels`` bins, no threshold at the
    mean) of the target's foreground pixels against an image made of those quantiles. Background pixels, when a
    mask is used, follow the same monotone mapping (interpolated; constant beyond the foreground's range).
    """

    REFERENCES = ("average", "pooled")

    def __init__(self, match_points: int = 100, histogram_levels: int = 1024, reference_points: int = 1025,
                 reference: str = "average", foreground: str = "none", seed: int = 0) -> None:
        super().__init__()
        if match_points < 1 or histogram_levels < 2 or reference_points < 2:
            raise ConfigError("histogram matching needs match_points >= 1, histogram_levels >= 2, "
                              "reference_points >= 2")
        self.foreground = foreground  # checked by the base
        self.match_points, self.histogram_levels = int(match_points), int(histogram_levels)
        if reference not in self.REFERENCES:
            raise ConfigError(f"unknown histogram reference '{reference}' (choose {', '.join(self.REFERENCES)})")
        self.reference_points, self.seed = int(reference_points), int(seed)
        self.reference = reference

    @classmethod
    def uses_seed(cls, options: dict[str, Any]) -> bool:
        """Only the pooled reference samples pixels; the average one saves the default seed."""
        return options.get("reference") == "pooled"

    def fit(self, images: Iterable[np.ndarray], masks: Masks = None) -> "HistogramMatching":
        rng = np.random.default_rng(self.seed)
        levels = np.linspace(0.0, 1.0, self.reference_points)
        samples: list[list[np.ndarray]] = []
        for image, mask in self.fit_images(images, masks):
            if not samples:
                samples = [[] for _ in range(image.shape[-1])]
            for c in range(image.shape[-1]):
                values = channel_values(image, mask, c)
                if self.reference == "average":  # this image's quantile function
                    samples[c].append(np.quantile(values, levels))
                    continue
                if len(values) > FIT_PIXELS_PER_IMAGE:
                    values = values[rng.choice(len(values), FIT_PIXELS_PER_IMAGE, replace=False)]
                samples[c].append(values)
        if self.reference == "average":
            quantiles = [np.mean(s, axis=0).tolist() for s in samples]
        else:
            quantiles = [np.quantile(np.concatenate(s), levels).tolist() for s in samples]
        state = {"channels": len(samples), "quantile_levels": levels.tolist(), "quantiles": quantiles,
                 "n_images": len(samples[0])}
        self._fitted(state, np.ptp(np.asarray(quantiles), axis=1))
        return self

    def transform(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        import SimpleITK as sitk

        state, array = self._fitted_channels(image)
        mask = self.mask_for(array, mask)
        matcher = sitk.HistogramMatchingImageFilter()
        matcher.SetNumberOfHistogramLevels(self.histogram_levels)
        matcher.SetNumberOfMatchPoints(self.match_points)
        matcher.ThresholdAtMeanIntensityOff()
        out = np.empty_like(array)
        for c in range(array.shape[-1]):
            reference = sitk.GetImageFromArray(np.asarray(state["quantiles"][c], dtype=np.float64)[None, :])
            valid = valid_pixels(array, mask, c)
            values = array[..., c][valid]
            if np.ptp(values) == 0:  # a constant image has no histogram to match: move it to the source median
                matched = np.full_like(values, np.interp(0.5, state["quantile_levels"], state["quantiles"][c]))
            else:
                matched = sitk.GetArrayFromImage(matcher.Execute(sitk.GetImageFromArray(values[None, :]),
                                                                 reference))[0]
            if valid.all():
                out[..., c] = matched.reshape(array.shape[:-1])
            else:  # background and non-finite pixels: the same monotone map (non-finite ones restored below)
                order = np.argsort(values, kind="stable")
                channel = np.interp(array[..., c], values[order], matched[order])
                channel[valid] = matched
                out[..., c] = channel
        return restore_shape(keep_non_finite(out, array), image)


# ------------------------------------------------------------------------------------- Nyúl-Udupa standardization

NYUL_LANDMARKS = (10, 20, 30, 40, 50, 60, 70, 80, 90)


@register("nyul")
class NyulStandardization(Harmonizer):
    """Nyúl & Udupa (2000) histogram standardization, as TorchIO's ``HistogramStandardization``.

    Per source image and channel: the percentiles ``cutoff[0], 10, ..., 90, cutoff[1]`` are mapped linearly so that
    the cutoffs land on ``scale``; the standard landmarks are their mean over the source images. ``transform`` maps
    a target image's own percentiles piecewise-linearly onto the standard landmarks (linear extrapolation beyond the
    cutoffs). ``scale=None`` (default) uses the source's mean cutoff percentiles, so the output keeps the source's
    intensity units (8-bit images stay 8-bit); TorchIO uses ``(0, 100)``.
    """

    auto_channels = (1,)  # per-channel on RGB speckles colour: --method auto tries labmatch/colour there

    def __init__(self, cutoff: Sequence[float] = (1.0, 99.0), scale: Sequence[float] | None = None,
                 foreground: str = "none") -> None:
        super().__init__()
        self.cutoff = _pair(cutoff, "Nyúl cutoff percentiles")
        if not (self.cutoff[0] < NYUL_LANDMARKS[0] and NYUL_LANDMARKS[-1] < self.cutoff[1]):
            raise ConfigError(f"Nyúl cutoff percentiles must lie outside 10..90, got {self.cutoff}")
        if scale is not None:
            scale = tuple(float(v) for v in scale)
            if len(scale) != 2 or not scale[0] < scale[1]:
                raise ConfigError(f"Nyúl scale {scale} must be two numbers LOW < HIGH")
        self.scale, self.foreground = scale, foreground

    @property
    def percentiles(self) -> np.ndarray:
        return np.array([self.cutoff[0], *NYUL_LANDMARKS, self.cutoff[1]], dtype=np.float64)

    def fit(self, images: Iterable[np.ndarray], masks: Masks = None) -> "NyulStandardization":
        per_image: list[np.ndarray] = []  # images x channels x landmarks
        for image, mask in self.fit_images(images, masks):
            per_image.append(np.stack([np.percentile(channel_values(image, mask, c), self.percentiles)
                                       for c in range(image.shape[-1])]))
        landmarks = np.stack(per_image)
        if self.scale is None:
            scale = np.stack([landmarks[:, :, 0].mean(0), landmarks[:, :, -1].mean(0)], axis=1)  # channels x 2
        else:
            scale = np.tile(np.asarray(self.scale, dtype=np.float64), (landmarks.shape[1], 1))
        low, high = landmarks[:, :, :1], landmarks[:, :, -1:]
        width = np.where(high - low > 0, high - low, 1.0)
        mapped = scale[None, :, :1] + (landmarks - low) / width * (scale[None, :, 1:] - scale[None, :, :1])
        standard = mapped.mean(0)
        state = {"channels": int(landmarks.shape[1]), "percentiles": self.percentiles.tolist(),
                 "standard_landmarks": standard.tolist(), "n_images": len(per_image)}
        # every image constant: each maps onto one value, and so would every output
        self._fitted(state, np.ptp(landmarks, axis=2).max(axis=0) * np.ptp(standard, axis=1))
        return self

    def image_landmarks(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """The image's own landmark percentiles (channels x landmarks): what ``transform`` maps onto the scale."""
        array = as_channels(image)
        mask = self.mask_for(array, mask)
        return np.stack([np.percentile(channel_values(array, mask, c), self.percentiles)
                         for c in range(array.shape[-1])])

    def transform(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        state, array = self._fitted_channels(image)
        own = self.image_landmarks(array, mask)
        out = np.empty_like(array)
        for c in range(array.shape[-1]):
            out[..., c] = _piecewise_linear(array[..., c], own[c], np.asarray(state["standard_landmarks"][c]))
        return restore_shape(keep_non_finite(out, array), image)


def _piecewise_linear(values: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Map ``source`` landmarks onto ``target`` ones, linear between them and extrapolated beyond the ends.
    Tied source landmarks (a flat histogram segment) are merged so the map stays a function."""
    keep = np.concatenate([[True], np.diff(source) > 0])
    source, target = source[keep], target[keep]
    if len(source) < 2:  # a constant image: move it to the middle landmark
        return np.full_like(values, target[len(target) // 2] if len(target) else 0.0)
    out = np.interp(values, source, target)
    low_slope = (target[1] - target[0]) / (source[1] - source[0])
    high_slope = (target[-1] - target[-2]) / (source[-1] - source[-2])
    below, above = values < source[0], values > source[-1]
    out[below] = target[0] + (values[below] - source[0]) * low_slope
    out[above] = target[-1] + (values[above] - source[-1]) * high_slope
    return out


# ---------------------------------------------------------------------------------------------------- z-score

@register("zscore")
class ZScore(Harmonizer):
    """Per-image, per-channel z-score within the foreground, optionally after clipping to the image's own
    ``clip`` percentiles. ``scale="source"`` then maps mean 0 / sd 1 onto the source domain's typical image
    (the mean over source images of their per-image foreground mean and sd), so outputs stay in the source's
    units; ``scale="unit"`` leaves mean 0 / sd 1 (float outputs)."""

    SCALES = ("source", "unit")
    auto_channels = (1,)  # per-channel on RGB: --method auto tries Reinhard/labmatch there

    def __init__(self, scale: str = "source", clip: Sequence[float] | None = None, foreground: str = "none") -> None:
        super().__init__()
        if scale not in self.SCALES:
            raise ConfigError(f"unknown z-score scale '{scale}' (choose {', '.join(self.SCALES)})")
        self.foreground = foreground  # checked by the base, before the clip percentiles
        self.scale, self.clip = scale, _pair(clip, "z-score clip percentiles")

    def check_input(self, stored: str, channels: int, name: str) -> None:
        if self.scale == "unit" and stored in ("8bit", "16bit"):
            raise ConfigError(f"z-score with scale 'unit' gives negative values, which an {stored} PNG cannot "
                              "hold; use scale 'source' (the default)")

    def _clipped(self, array: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        if self.clip is None:
            return array
        out = np.empty_like(array)
        for c in range(array.shape[-1]):
            low, high = np.percentile(channel_values(array, mask, c), self.clip)
            out[..., c] = np.clip(array[..., c], low, high)
        return keep_non_finite(out, array)  # +-inf is missing, not the clip bound

    def _stats(self, array: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        values = [channel_values(array, mask, c) for c in range(array.shape[-1])]
        return np.array([v.mean() for v in values]), np.array([v.std() for v in values])

    def fit(self, images: Iterable[np.ndarray], masks: Iterable[np.ndarray | None] | None = None) -> "ZScore":
        means, sds = [], []
        for image, mask in self.fit_images(images, masks):
            mean, sd = self._stats(self._clipped(image, mask), mask)
            means.append(mean)
            sds.append(sd)
        state = {"channels": len(means[0]), "source_mean": np.mean(means, 0).tolist(),
                 "source_sd": np.mean(sds, 0).tolist(), "n_images": len(means)}
        # scale "unit" never uses the source's sd; "source" maps every output onto it
        self._fitted(state, np.ones(len(means[0])) if self.scale == "unit" else np.mean(sds, 0))
        return self

    def transform(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        state, array = self._fitted_channels(image)
        mask = self.mask_for(array, mask)
        array = self._clipped(array, mask)
        mean, sd = self._stats(array, mask)
        z = (array - mean) / np.where(sd > 0, sd, 1.0)
        if self.scale == "source":
            z = z * np.asarray(state["source_sd"]) + np.asarray(state["source_mean"])
        return restore_shape(keep_non_finite(z, array), image)
