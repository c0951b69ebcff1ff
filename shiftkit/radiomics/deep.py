"""Deep radiomics features: a CNN's penultimate-layer embedding of a crop around the region of interest.

Per case, after the same checks and ``--spacing`` resampling as the PyRadiomics features
(:func:`shiftkit.radiomics.extract.load_case`):

1. **Slice**: a 2-D image is used whole; for a 3-D volume, the axial slice (SimpleITK's last axis, z) where the
   mask's region of interest has the most voxels.
2. **Crop**: a square box centred on the region's bounding box, of side ``max(height, width) x (1 + 2 margin)``
   pixels (``--deep-margin``, 0.1 by default: a tenth of the region's size on each side), extended with edge pixels
   where it leaves the image. The image keeps its colour (RGB PNG/JPEG stay RGB; the PyRadiomics features use their
   luminance). The crop is in pixels; the mask only places it.
3. **Intensities**: 8-bit images divided by 255; anything else windowed to ``--window LOW,HIGH`` when given, else to
   the slice's 0.5th-99.5th percentiles (the rule of :mod:`shiftkit.data.readers`).
4. **The architecture's preprocessing** (:class:`shiftkit.data.preprocess.Preprocessing`: resize, centre crop,
   normalisation) and the embedding the network's final layer receives (:func:`shiftkit.features.head_inputs_and_outputs`),
   with ImageNet weights (``--deep ARCH``, any shiftkit backbone) or a ``shiftkit finetune`` output
   (``--checkpoint``). The columns are ``deep_0 .. deep_{d-1}``.
5. Optionally ``--deep-pca N``: the first N principal components of the embeddings of all extracted cases (one PCA
   on all rows, unsupervised: it sees neither labels nor sites; like any transform fitted on all rows, refit it
   inside the folds if a downstream model's cross-validation must be strictly held out).

The network runs in eval mode without gradient; on the CPU the features are deterministic (the same cases give the
same numbers, bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from shiftkit.errors import ConfigError
from shiftkit.radiomics.extract import CaseResult, ExtractionSettings, load_case
from shiftkit.radiomics.images import CaseError
from shiftkit.radiomics.manifest import Case

DEFAULT_MARGIN = 0.1
MIN_CROP = 8  # pixels: a one-pixel region still gets a crop with some context


@dataclass(frozen=True)
class DeepOptions:
    arch: str | None = None  # --deep
    checkpoint: Path | None = None  # --checkpoint (a finetune run folder or a .pt checkpoint)
    weights: str = "imagenet"
    image_size: int | None = None  # the network's input crop (default: the architecture's 224, or the checkpoint's)
    margin: float = DEFAULT_MARGIN
    pca: int | None = None
    batch_size: int = 32
    device: str = "auto"
    window: tuple[float, float] | None = None
    seed: int = 0

    def check(self) -> None:
        if (self.arch is None) == (self.checkpoint is None):
            raise ConfigError("deep features need --deep ARCH or --checkpoint DIR (one of them)")
        if not 0 <= self.margin <= 5:
            raise ConfigError(f"--deep-margin {self.margin:g}: must be between 0 and 5 (a fraction of the region's size)")
        if self.pca is not None and self.pca < 1:
            raise ConfigError(f"--deep-pca {self.pca}: must be at least 1")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: must be at least 1")


def build_deep_model(options: DeepOptions):
    """The network (an :class:`~shiftkit.models.registry.AdaptedModel`): ``options.arch`` with its weights, or the
    fine-tuned checkpoint. Built before any extraction, so a wrong name or missing weights fail at once."""
    from shiftkit.features import load_finetuned
    from shiftkit.models.registry import build_model

    options.check()
    if options.checkpoint is not None:
        if options.image_size is not None:
            raise ConfigError("--deep-image-size applies to --deep; a --checkpoint keeps the image size it was "
                              "trained with")
        adapted, _ = load_finetuned(Path(options.checkpoint))
        return adapted
    return build_model(options.arch, 1, options.weights, options.image_size)


def largest_slice(mask: np.ndarray) -> int:
    """Index (first axis, z in NumPy order) of the slice of a 3-D boolean mask with the most voxels."""
    return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))


def roi_crop(image: np.ndarray, mask: np.ndarray, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The square crop of ``image`` (``H x W`` or ``H x W x C``) around the non-zero part of the 2-D boolean
    ``mask`` (step 2 of the module docstring); edge pixels extend the image where the box leaves it."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise CaseError("the mask is empty on the slice used for the deep features")
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = max(MIN_CROP, int(np.ceil(max(bottom - top, right - left) * (1 + 2 * margin))))
    centre_y, centre_x = (top + bottom) / 2.0, (left + right) / 2.0
    y0, x0 = int(np.floor(centre_y - side / 2.0)), int(np.floor(centre_x - side / 2.0))
    pad = [(side, side), (side, side)] + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image, pad, mode="edge")
    return padded[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side]


def _scaled(array: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Step 3: 8-bit values / 255, others windowed (given window, else robust percentiles of the slice)."""
    from shiftkit.data.readers import _window  # the one windowing rule of shiftkit's readers

    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return _window(array, window)  # a colour image that is not 8-bit: one window over all channels


def case_crop(case: Case, settings: ExtractionSettings, options: DeepOptions) -> np.ndarray:
    """The float crop (values in [0, 1]) of one case: steps 1-3 of the module docstring."""
    import SimpleITK as sitk

    image, mask, label = load_case(case, settings, colour=True)
    pixels = sitk.GetArrayFromImage(image)  # (z,) y, x (, channels)
    region = sitk.GetArrayViewFromImage(mask) == label
    colour = image.GetNumberOfComponentsPerPixel() > 1
    if image.GetDimension() == 3:
        index = largest_slice(region)
        pixels, region = pixels[index], region[index]
    if colour and pixels.shape[-1] > 3:
        pixels = pixels[..., :3]
    elif colour and pixels.shape[-1] < 3:
        pixels = pixels[..., 0]
    try:
        scaled = _scaled(pixels, options.window)
    except Exception as exc:  # a slice without a single finite value
        raise CaseError(f"the image has no finite pixel values on the slice used for the deep features "
                        f"({type(exc).__name__})") from None
    return roi_crop(scaled, region, options.margin).astype(np.float32)


def deep_features(cases: Sequence[Case], results: Sequence[CaseResult], settings: ExtractionSettings,
                  options: DeepOptions, adapted, on_tick: Callable[[], None] | None = None
                  ) -> tuple[np.ndarray, list[str], dict[int, str], dict]:
    """Embeddings of the extracted cases (``results`` that are ok, in order): (matrix with one row per case that
    worked, column names, {result index: one-line reason} for the cases whose crop failed, info for the summary).
    ``on_tick`` is called once per case."""
    import torch

    from shiftkit.device import resolve_device
    from shiftkit.features import head_inputs_and_outputs, pca_model

    device = resolve_device(options.device)
    kept = [r for r in results if r.ok]
    crops, failures, used = [], {}, []
    for result in kept:
        try:
            crop = case_crop(cases[result.index], settings, options)
            crops.append(adapted.preprocessing.geometric(crop))
            used.append(result.index)
        except Exception as exc:  # one case's crop must not lose the others
            failures[result.index] = f"deep features: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        if on_tick is not None:
            on_tick()
    dimension = adapted.head.in_features
    if not crops:
        return np.zeros((0, dimension), np.float32), [], failures, {}

    def batches():
        for start in range(0, len(crops), options.batch_size):
            chunk = crops[start:start + options.batch_size]
            yield torch.stack([c if c.shape[0] == 3 else c.expand(3, -1, -1) for c in chunk]), torch.zeros(len(chunk))

    adapted.model.to(device)
    embeddings, _, _ = head_inputs_and_outputs(adapted, batches(), device)
    matrix = embeddings.cpu().numpy().astype(np.float64)
    info = {"arch": adapted.arch, "weights": str(adapted.weights), "embedding_dimension": int(dimension),
            "input": adapted.preprocessing.key(), "margin": options.margin, "window": options.window,
            "device": str(device), "slice": "2-D images whole; 3-D: the axial slice with the largest region"}
    if options.pca is not None:
        pca = pca_model(matrix, options.pca, options.seed).fit(matrix)
        matrix = pca.transform(matrix)
        info["pca"] = {"components": int(pca.n_components_),
                       "explained_variance_ratio": float(np.sum(pca.explained_variance_ratio_))}
    names = [f"deep_{j}" for j in range(matrix.shape[1])]
    return matrix, names, failures, info
