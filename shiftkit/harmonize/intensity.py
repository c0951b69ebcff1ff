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

import json
from pathlib import Path
from typing import Any, ClassVar, Iterable, Optional, Sequence

import numpy as np

from shiftkit.errors import ConfigError, DataError
from shiftkit.io import write_json

FORMAT = "shiftkit-harmonizer"
FORMAT_VERSION = 1
FOREGROUND_METHODS = ("none", "otsu")
FIT_PIXELS_PER_IMAGE = 20000  # seeded per-image pixel sample for pooled quantiles (memory stays flat)
Masks = Optional[Iterable[Optional[np.ndarray]]]  # per-image foreground masks aligned with the images, or None


# ------------------------------------------------------------------------------------------------ base class

class Harmonizer:
    """What every image harmonizer offers: ``fit`` on source images, ``transform`` target images, and a JSON
    state (``params`` set at construction, ``state`` learned by ``fit``) that :meth:`save` writes and
    :func:`shiftkit.harmonize.apply.load_harmonizer` reads back (never pickle)."""

    kind: ClassVar[str] = ""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    @property
    def fitted(self) -> bool:
        return self.state is not None

    def params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _require_fitted(self) -> dict[str, Any]:
        if self.state is None:
            raise ConfigError(f"the {self.kind} harmonizer is not fitted: call fit() on source images first")
        return self.state

    def _fitted(self, state: dict[str, Any], spread: np.ndarray) -> dict[str, Any]:
        """Keep ``state`` as the fit, refusing a reference that gives constant outputs (``spread``: per channel, the
        range of what the reference's images are mapped onto) or numbers JSON cannot hold (NaN, infinity)."""
        flat = [v for v in np.ravel(np.asarray(_numbers(state), dtype=np.float64))]
        if not np.isfinite(flat).all():
            raise DataError(f"{self.kind}: the reference's intensities give non-finite statistics (values beyond "
                            "float64's range?); rescale the images")
        constant = [c for c, value in enumerate(np.ravel(spread)) if not value > 0]
        if constant:
            raise DataError(f"{self.kind}: every reference image is constant in channel {constant[0]} (one value "
                            f"per image); there is no intensity distribution to map onto, so every output would be "
                            f"constant; use a reference with contrast")
        self.state = state
        return state

    def _fitted_channels(self, image: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        """The fitted state and ``image`` as H x W x C, refused when its channels differ from the source's."""
        state = self._require_fitted()
        array = as_channels(image)
        _check_channels(state, array, self.kind)
        return state, array

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind, "params": self.params(),
                "state": self._require_fitted()}

    def save(self, path: str | Path) -> Path:
        """Write the fitted harmonizer as JSON (atomically); floats round-trip exactly."""
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Harmonizer":
        harmonizer = cls(**data.get("params", {}))
        harmonizer.state = data["state"]
        return harmonizer


def read_harmonizer_dict(path: str | Path) -> dict[str, Any]:
    """The JSON of a saved harmonizer, checked to be one (a report or a model is refused with one line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: harmonizer file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path}: not a shiftkit harmonizer (not a JSON file)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "kind" not in data or "state" not in data:
        raise DataError(f"{path}: not a shiftkit harmonizer (no '\"format\": \"{FORMAT}\"' with kind and state)")
    if data.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: harmonizer format version {data.get('version')} is not supported "
                        f"(this shiftkit reads version {FORMAT_VERSION})")
    return data


# -------------------------------------------------------------------------------------------------- helpers

def _numbers(value: Any) -> list[float]:
    """Every number in a (JSON-like) state, flattened; ``None`` (JSON null) counts as NaN."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    if value is None:
        return [float("nan")]
    return [float(value)] if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) else []


def check_state(state: Any) -> None:
    """Refuse a saved state holding null, NaN or infinity (a harmonizer.json written before non-finite pixels were
    left out of the fit)."""
    if not np.isfinite(np.asarray(_numbers(state), dtype=np.float64)).all():
        raise DataError("its state holds null, NaN or infinite numbers (fitted on images with non-finite pixels by "
                        "an older shiftkit?); fit it again")


def keep_non_finite(out: np.ndarray, array: np.ndarray) -> np.ndarray:
    """Write ``array``'s non-finite pixels back into ``out`` unchanged (they stay missing)."""
    bad = ~np.isfinite(array)
    if bad.any():
        out[bad] = array[bad]
    return out


def as_channels(image: np.ndarray) -> np.ndarray:
    """``H x W`` -> ``H x W x 1``; arrays that already carry a channel axis are returned as float64."""
    image = np.asarray(image, dtype=np.float64)
    return image[..., None] if image.ndim == 2 else image


def _restore_shape(result: np.ndarray, original: np.ndarray) -> np.ndarray:
    return result[..., 0] if np.ndim(original) == 2 else result


def foreground_mask(image: np.ndarray, method: str = "otsu") -> np.ndarray | None:
    """A boolean foreground mask of the spatial shape (``None`` for ``method="none"``): Otsu's threshold on
    the channel mean, via SimpleITK. An image whose Otsu foreground is empty falls back to all pixels."""
    if method == "none":
        return None
    if method != "otsu":
        raise ConfigError(f"unknown foreground method '{method}' (choose {', '.join(FOREGROUND_METHODS)})")
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


def _mask_for(image: np.ndarray, mask: np.ndarray | None, foreground: str) -> np.ndarray | None:
    if mask is None:
        return foreground_mask(image, foreground)
    mask = np.asarray(mask, dtype=bool)
    spatial = as_channels(image).shape[:-1]
    if mask.shape != spatial:
        raise DataError(f"mask shape {mask.shape} does not match the image's spatial shape {spatial}")
    if not mask.any():
        raise DataError("the foreground mask is empty")
    return mask


def _valid(image: np.ndarray, mask: np.ndarray | None, channel: int) -> np.ndarray:
    """The pixels a channel's statistics use: finite, and in the foreground ``mask`` when there is one."""
    valid = np.isfinite(image[..., channel])
    if mask is not None:
        valid &= mask
    if not valid.any():
        where = "in the foreground mask" if mask is not None else "in the image"
        raise DataError(f"no finite pixel {where} (channel {channel} is all NaN or infinite): nothing to harmonize")
    return valid


def _channel_values(image: np.ndarray, mask: np.ndarray | None, channel: int) -> np.ndarray:
    """A channel's finite pixels (within ``mask``): non-finite ones are left out of every statistic."""
    return image[..., channel][_valid(image, mask, channel)]


def _check_channels(state: dict, image: np.ndarray, kind: str) -> None:
    if image.shape[-1] != state["channels"]:
        raise DataError(f"the {kind} harmonizer was fitted on {state['channels']}-channel images; "
                        f"this image has {image.shape[-1]} channel(s)")


def _pair(values: Sequence[float] | None, name: str) -> tuple[float, float] | None:
    if values is None:
        return None
    low, high = (float(v) for v in values)
    if not 0 <= low < high <= 100:
        raise ConfigError(f"{name} ({low}, {high}) must satisfy 0 <= low < high <= 100")
    return low, high


def _fit_images(images: Iterable[np.ndarray], masks: Iterable[np.ndarray | None] | None, foreground: str):
    """Yield (channel-last image, mask) pairs, checking that all source images have one channel count."""
    masks_iter = iter(masks) if masks is not None else None
    channels = None
    count = 0
    for image in images:
        array = as_channels(image)
        mask = _mask_for(array, next(masks_iter) if masks_iter is not None else None, foreground)
        if channels is None:
            channels = array.shape[-1]
        elif array.shape[-1] != channels:
            raise DataError(f"source images mix {channels}-channel and {array.shape[-1]}-channel images")
        count += 1
        yield array, mask
    if count == 0:
        raise DataError("the reference (source) domain has no images to fit on")


# ------------------------------------------------------------------------------------------ histogram matching

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

    kind = "histmatch"
    REFERENCES = ("average", "pooled")

    def __init__(self, match_points: int = 100, histogram_levels: int = 1024, reference_points: int = 1025,
                 reference: str = "average", foreground: str = "none", seed: int = 0) -> None:
        super().__init__()
        if match_points < 1 or histogram_levels < 2 or reference_points < 2:
            raise ConfigError("histogram matching needs match_points >= 1, histogram_levels >= 2, "
                              "reference_points >= 2")
        if foreground not in FOREGROUND_METHODS:
            raise ConfigError(f"unknown foreground method '{foreground}' (choose {', '.join(FOREGROUND_METHODS)})")
        self.match_points, self.histogram_levels = int(match_points), int(histogram_levels)
        if reference not in self.REFERENCES:
            raise ConfigError(f"unknown histogram reference '{reference}' (choose {', '.join(self.REFERENCES)})")
        self.reference_points, self.foreground, self.seed = int(reference_points), foreground, int(seed)
        self.reference = reference

    def params(self) -> dict[str, Any]:
        return {"match_points": self.match_points, "histogram_levels": self.histogram_levels,
                "reference_points": self.reference_points, "reference": self.reference,
                "foreground": self.foreground, "seed": self.seed}

    def fit(self, images: Iterable[np.ndarray], masks: Masks = None) -> "HistogramMatching":
        rng = np.random.default_rng(self.seed)
        levels = np.linspace(0.0, 1.0, self.reference_points)
        samples: list[list[np.ndarray]] = []
        for image, mask in _fit_images(images, masks, self.foreground):
            if not samples:
                samples = [[] for _ in range(image.shape[-1])]
            for c in range(image.shape[-1]):
                values = _channel_values(image, mask, c)
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
        mask = _mask_for(array, mask, self.foreground)
        matcher = sitk.HistogramMatchingImageFilter()
        matcher.SetNumberOfHistogramLevels(self.histogram_levels)
        matcher.SetNumberOfMatchPoints(self.match_points)
        matcher.ThresholdAtMeanIntensityOff()
        out = np.empty_like(array)
        for c in range(array.shape[-1]):
            reference = sitk.GetImageFromArray(np.asarray(state["quantiles"][c], dtype=np.float64)[None, :])
            valid = _valid(array, mask, c)
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
        return _restore_shape(keep_non_finite(out, array), image)


# ------------------------------------------------------------------------------------- Nyúl-Udupa standardization

NYUL_LANDMARKS = (10, 20, 30, 40, 50, 60, 70, 80, 90)


class NyulStandardization(Harmonizer):
    """Nyúl & Udupa (2000) histogram standardization, as TorchIO's ``HistogramStandardization``.

    Per source image and channel: the percentiles ``cutoff[0], 10, ..., 90, cutoff[1]`` are mapped linearly so that
    the cutoffs land on ``scale``; the standard landmarks are their mean over the source images. ``transform`` maps
    a target image's own percentiles piecewise-linearly onto the standard landmarks (linear extrapolation beyond the
    cutoffs). ``scale=None`` (default) uses the source's mean cutoff percentiles, so the output keeps the source's
    intensity units (8-bit images stay 8-bit); TorchIO uses ``(0, 100)``.
    """

    kind = "nyul"

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
        if foreground not in FOREGROUND_METHODS:
            raise ConfigError(f"unknown foreground method '{foreground}' (choose {', '.join(FOREGROUND_METHODS)})")
        self.scale, self.foreground = scale, foreground

    @property
    def percentiles(self) -> np.ndarray:
        return np.array([self.cutoff[0], *NYUL_LANDMARKS, self.cutoff[1]], dtype=np.float64)

    def params(self) -> dict[str, Any]:
        return {"cutoff": list(self.cutoff), "scale": list(self.scale) if self.scale else None,
                "foreground": self.foreground}

    def fit(self, images: Iterable[np.ndarray], masks: Masks = None) -> "NyulStandardization":
        per_image: list[np.ndarray] = []  # images x channels x landmarks
        for image, mask in _fit_images(images, masks, self.foreground):
            per_image.append(np.stack([np.percentile(_channel_values(image, mask, c), self.percentiles)
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
        mask = _mask_for(array, mask, self.foreground)
        return np.stack([np.percentile(_channel_values(array, mask, c), self.percentiles)
                         for c in range(array.shape[-1])])

    def transform(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        state, array = self._fitted_channels(image)
        own = self.image_landmarks(array, mask)
        out = np.empty_like(array)
        for c in range(array.shape[-1]):
            out[..., c] = _piecewise_linear(array[..., c], own[c], np.asarray(state["standard_landmarks"][c]))
        return _restore_shape(keep_non_finite(out, array), image)


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

class ZScore(Harmonizer):
    """Per-image, per-channel z-score within the foreground, optionally after clipping to the image's own
    ``clip`` percentiles. ``scale="source"`` then maps mean 0 / sd 1 onto the source domain's typical image
    (the mean over source images of their per-image foreground mean and sd), so outputs stay in the source's
    units; ``scale="unit"`` leaves mean 0 / sd 1 (float outputs)."""

    kind = "zscore"
    SCALES = ("source", "unit")

    def __init__(self, scale: str = "source", clip: Sequence[float] | None = None, foreground: str = "none") -> None:
        super().__init__()
        if scale not in self.SCALES:
            raise ConfigError(f"unknown z-score scale '{scale}' (choose {', '.join(self.SCALES)})")
        if foreground not in FOREGROUND_METHODS:
            raise ConfigError(f"unknown foreground method '{foreground}' (choose {', '.join(FOREGROUND_METHODS)})")
        self.scale, self.clip, self.foreground = scale, _pair(clip, "z-score clip percentiles"), foreground

    def params(self) -> dict[str, Any]:
        return {"scale": self.scale, "clip": list(self.clip) if self.clip else None, "foreground": self.foreground}

    def _clipped(self, array: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        if self.clip is None:
            return array
        out = np.empty_like(array)
        for c in range(array.shape[-1]):
            low, high = np.percentile(_channel_values(array, mask, c), self.clip)
            out[..., c] = np.clip(array[..., c], low, high)
        return keep_non_finite(out, array)  # +-inf is missing, not the clip bound

    def _stats(self, array: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        values = [_channel_values(array, mask, c) for c in range(array.shape[-1])]
        return np.array([v.mean() for v in values]), np.array([v.std() for v in values])

    def fit(self, images: Iterable[np.ndarray], masks: Iterable[np.ndarray | None] | None = None) -> "ZScore":
        means, sds = [], []
        for image, mask in _fit_images(images, masks, self.foreground):
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
        mask = _mask_for(array, mask, self.foreground)
        array = self._clipped(array, mask)
        mean, sd = self._stats(array, mask)
        z = (array - mean) / np.where(sd > 0, sd, 1.0)
        if self.scale == "source":
            z = z * np.asarray(state["source_sd"]) + np.asarray(state["source_mean"])
        return _restore_shape(keep_non_finite(z, array), image)
