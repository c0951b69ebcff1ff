"""Resampling to a common pixel/voxel spacing with SimpleITK.

A :class:`Resampler` has a target spacing: given explicitly (``spacing``), or learned by ``fit`` as the source
domain's median spacing per axis. Images are resampled with linear (default) or B-spline interpolation, label maps
always with nearest neighbour (so no new label values appear). The physical extent is kept: the output covers the
same field of view (its first and last pixel edges coincide with the input's, up to rounding the size to whole
pixels), with the same direction.

Spacings are in SimpleITK order (x, y[, z]), as in the manifest's ``spacing`` column (``0.7x0.7x2.5``).

The output size is checked before anything is allocated: above :data:`MAX_RESAMPLED_VOXELS` pixels/voxels per image
(a typing slip such as ``--spacing 0.001`` for 0.5 mm images asks for 250,000 times the pixels) it is refused with
one line giving both sizes, instead of failing inside SimpleITK's allocation.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.base import Harmonizer, register

INTERPOLATORS = ("linear", "bspline")
# 2**27 = 134,217,728 pixels/voxels per resampled image: 512 MiB as float32 plus its float64 copy, about 1.5 GiB in
# all; a 512 x 512 x 512 CT volume is 2**27, so any real target spacing of a real scan fits.
MAX_RESAMPLED_VOXELS = 2**27


def _sitk_interpolator(name: str):
    import SimpleITK as sitk

    return {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}[name]


def output_size(size: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """Pixels per axis that cover the same extent (size x spacing) at ``new_spacing``."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(size, spacing, new_spacing))


def _spacing_text(spacing: Sequence[float]) -> str:
    return "x".join(f"{s:.6g}" for s in spacing)


def check_resampled_size(size: Sequence[int], spacing: Sequence[float],
                         new_spacing: Sequence[float]) -> tuple[int, ...]:
    """The output size of resampling ``size`` pixels at ``spacing`` to ``new_spacing``, refused (before anything
    is allocated) above :data:`MAX_RESAMPLED_VOXELS`."""
    out = output_size(size, spacing, new_spacing)
    count = math.prod(out)
    if count > MAX_RESAMPLED_VOXELS:
        unit = "voxels" if len(out) > 2 else "pixels"
        raise DataError(f"{'x'.join(map(str, size))} {unit} at spacing {_spacing_text(spacing)} resampled to spacing "
                        f"{_spacing_text(new_spacing)} would be {'x'.join(map(str, out))} {unit} ({count:,}), above "
                        f"the limit of {MAX_RESAMPLED_VOXELS:,} per image; choose a coarser --spacing")
    return out


def resample_image(image, spacing: Sequence[float], interpolator: str = "linear", label: bool = False):
    """Resample a SimpleITK image to ``spacing`` keeping its field of view; ``label=True`` uses nearest neighbour
    and keeps the pixel type (images become float32)."""
    import SimpleITK as sitk

    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != image.GetDimension():
        raise DataError(f"spacing {spacing} has {len(spacing)} value(s) but the image is {image.GetDimension()}-D")
    old_spacing = np.array(image.GetSpacing())
    size = check_resampled_size(image.GetSize(), old_spacing, spacing)
    direction = np.array(image.GetDirection()).reshape(image.GetDimension(), image.GetDimension())
    origin = np.array(image.GetOrigin()) + direction @ ((np.array(spacing) - old_spacing) / 2.0)
    method = "nearest" if label else interpolator

    def one(channel):
        if not label:
            channel = sitk.Cast(channel, sitk.sitkFloat32)
        return sitk.Resample(channel, size, sitk.Transform(), _sitk_interpolator(method), tuple(origin.tolist()),
                             spacing, image.GetDirection(), 0, channel.GetPixelID())

    if image.GetNumberOfComponentsPerPixel() > 1:  # per component: B-spline does not take vector images
        channels = [one(sitk.VectorIndexSelectionCast(image, c)) for c in range(image.GetNumberOfComponentsPerPixel())]
        return sitk.Compose(channels)
    return one(image)


@register("resample")
class Resampler(Harmonizer):
    """Resample to ``spacing``, or (``spacing=None``) to the source domain's median spacing learned by ``fit``."""

    geometric = True  # fits on spacings, transforms SimpleITK images (their grid changes)

    def __init__(self, spacing: Sequence[float] | None = None, interpolator: str = "linear") -> None:
        super().__init__()
        if interpolator not in INTERPOLATORS:
            raise ConfigError(f"unknown interpolator '{interpolator}' (choose {', '.join(INTERPOLATORS)}; label maps "
                              "always use nearest neighbour)")
        if spacing is not None:
            spacing = tuple(float(s) for s in spacing)
            if not spacing or any(not np.isfinite(s) or s <= 0 for s in spacing):
                raise ConfigError(f"--spacing {spacing} must be positive numbers")
        self.spacing, self.interpolator = spacing, interpolator

    @property
    def reads_reference(self) -> bool:
        return self.spacing is None  # a given spacing needs no reference

    def fit(self, spacings: Iterable[Sequence[float]] = ()) -> "Resampler":
        """Learn the target spacing: the explicit one, else the per-axis median of the source ``spacings``."""
        if self.spacing is not None:
            self.state = {"target_spacing": list(self.spacing), "rule": "given"}
            return self
        spacings = [tuple(float(v) for v in s) for s in spacings]
        if not spacings:
            raise DataError("the reference (source) domain has no images with a spacing to take the median of")
        dims = {len(s) for s in spacings}
        if len(dims) > 1:
            raise DataError(f"source spacings mix {sorted(dims)} dimensions; give --spacing explicitly")
        median = np.median(np.array(spacings), axis=0)
        self.state = {"target_spacing": median.tolist(), "rule": "source median", "n_images": len(spacings)}
        return self

    def check_geometry(self, size: Sequence[int], spacing: Sequence[float]) -> None:
        target = self.target_spacing
        if len(size) == len(target):  # a dimension mismatch is named by transform
            check_resampled_size(size, spacing, target)

    @property
    def target_spacing(self) -> tuple[float, ...]:
        return tuple(self._require_fitted()["target_spacing"])

    def transform(self, image, label: bool = False):
        """Resample a SimpleITK image (``label=True``: a label map, nearest neighbour)."""
        target = self.target_spacing
        if len(target) != image.GetDimension():
            raise DataError(f"the resampler's spacing {target} is {len(target)}-D but the image is "
                            f"{image.GetDimension()}-D")
        return resample_image(image, target, self.interpolator, label=label)
