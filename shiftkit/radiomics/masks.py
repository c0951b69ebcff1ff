"""The checks a mask must pass before PyRadiomics sees it, each failing with one line that says what is wrong.

- **Geometry**: the mask must lie on the image's grid: same dimension and size, and the same spacing, origin and
  direction within a tolerance (PyRadiomics' ``geometryTolerance`` setting when the parameters give one, else
  :data:`GEOMETRY_TOLERANCE`, ITK's own default, so nothing PyRadiomics itself would refuse passes here). With
  PyRadiomics' ``correctMask: true`` only the dimension is checked and PyRadiomics resamples the mask itself.
- **Empty**: a mask without any non-zero voxel (before or after ``--spacing`` resampling).
- **Label**: which label value is the region of interest. Given explicitly (a ``mask_label`` column, then
  ``--mask-label``, then the parameter file's ``label``) it must be present. Otherwise label 1 when the mask has it
  (PyRadiomics' default), else the mask's single non-zero value (a 0/255 PNG mask); a mask with several labels and
  no 1 is refused, asking which.
"""

from __future__ import annotations

import numpy as np

from shiftkit.radiomics.images import CaseError

GEOMETRY_TOLERANCE = 1e-6  # ITK's default coordinate and direction tolerance (relative to the spacing)
MAX_LISTED_LABELS = 8


def _shape(values) -> str:
    return "x".join(str(int(v)) for v in values)


def _numbers(values) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def check_geometry(image, mask, tolerance: float | None = None, correct_mask: bool = False) -> None:
    """Refuse a mask that does not lie on the image's grid (module docstring)."""
    if image.GetDimension() != mask.GetDimension():
        raise CaseError(f"the mask is {mask.GetDimension()}-D but the image is {image.GetDimension()}-D")
    if correct_mask:
        return
    if image.GetSize() != mask.GetSize():
        raise CaseError(f"mask geometry does not match the image: the mask is {_shape(mask.GetSize())} voxels, the "
                        f"image {_shape(image.GetSize())}")
    tolerance = GEOMETRY_TOLERANCE if tolerance is None else float(tolerance)
    spacing = np.array(image.GetSpacing())
    scale = tolerance * float(np.max(spacing))
    if not np.allclose(mask.GetSpacing(), spacing, rtol=0, atol=scale):
        raise CaseError(f"mask geometry does not match the image: spacing {_numbers(mask.GetSpacing())} vs "
                        f"{_numbers(spacing)} (set geometryTolerance in --params to accept small differences)")
    if not np.allclose(mask.GetOrigin(), image.GetOrigin(), rtol=0, atol=scale):
        raise CaseError(f"mask geometry does not match the image: origin {_numbers(mask.GetOrigin())} vs "
                        f"{_numbers(image.GetOrigin())} (set geometryTolerance in --params to accept small "
                        "differences)")
    if not np.allclose(mask.GetDirection(), image.GetDirection(), rtol=0, atol=max(tolerance, 1e-12)):
        raise CaseError("mask geometry does not match the image: the direction cosines differ (set "
                        "geometryTolerance in --params to accept small differences)")


def labels_present(mask) -> np.ndarray:
    """The sorted non-zero label values of a SimpleITK label map (only the non-zero voxels are sorted)."""
    import SimpleITK as sitk

    values = sitk.GetArrayViewFromImage(mask).ravel()
    return np.unique(values[np.flatnonzero(values)])


def _listed(labels: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in labels[:MAX_LISTED_LABELS])
    return shown + (f", ... ({len(labels)} labels)" if len(labels) > MAX_LISTED_LABELS else "")


def choose_label(mask, requested: int | None, source: str = "", when: str = "") -> int:
    """The label value whose voxels are the region of interest (module docstring). ``source`` names where
    ``requested`` came from (``mask_label column``), ``when`` qualifies the messages (``after resampling to ...``).
    Raises :class:`CaseError` for an empty mask, an absent label, or an ambiguous one."""
    labels = labels_present(mask)
    suffix = f" {when}" if when else ""
    if labels.size == 0:
        raise CaseError(f"the mask is empty (no non-zero voxel){suffix}")
    if requested is not None:
        if requested not in labels:
            named = f" ({source})" if source else ""
            raise CaseError(f"the mask has no voxel with label {requested}{named}{suffix}; labels present: "
                            f"{_listed(labels)}")
        return int(requested)
    if 1 in labels:
        return 1
    if labels.size == 1:
        return int(labels[0])
    raise CaseError(f"the mask has several labels ({_listed(labels)}) and no label 1; say which one is the region "
                    "of interest with a mask_label column or --mask-label")
