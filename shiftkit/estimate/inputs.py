"""Checked inputs of label-free performance estimation: one model's outputs on labelled source validation images and
on unlabelled target images.

Every mistake (no labels, an empty target, a class count that differs between the model and the labels) raises a
:class:`shiftkit.errors.DataError` whose message is one line naming the input, so the CLI can print it and exit 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy.special import log_softmax

from shiftkit.errors import DataError
from shiftkit.shift.stats import ShiftInputError, encode_labels

__all__ = ["EstimationData", "prepare"]


@dataclass(frozen=True)
class EstimationData:
    """The model's outputs, validated.

    ``source_log_probs`` (n_s x K) and ``target_log_probs`` (n_t x K) are log-softmax rows of the logits (a softmax
    ignores a constant per row, so logits and log-probabilities are the same input); ``source_labels`` are class
    indices 0..K-1 in the order of ``classes``.
    """

    classes: tuple
    source_log_probs: np.ndarray
    source_labels: np.ndarray
    target_log_probs: np.ndarray

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_source(self) -> int:
        return len(self.source_labels)

    @property
    def n_target(self) -> int:
        return len(self.target_log_probs)

    @property
    def source_pred(self) -> np.ndarray:
        return self.source_log_probs.argmax(axis=1)

    @property
    def target_pred(self) -> np.ndarray:
        return self.target_log_probs.argmax(axis=1)

    @property
    def source_correct(self) -> np.ndarray:
        return (self.source_pred == self.source_labels).astype(np.float64)

    @property
    def source_prior(self) -> np.ndarray:
        """Class frequencies of the source validation labels."""
        counts = np.bincount(self.source_labels, minlength=self.n_classes).astype(np.float64)
        return counts / counts.sum()


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _logits(values: Any, name: str) -> np.ndarray:
    if values is None:
        raise DataError(f"{name}: none given")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name}: not a numeric array") from None
    if array.ndim != 2:
        raise DataError(f"{name}: expected an (images x classes) array, got shape {array.shape}")
    if len(array) == 0:
        raise DataError(f"{name}: no images (0 rows); there is nothing to estimate on")
    if array.shape[1] < 2:
        raise DataError(f"{name}: need outputs for at least 2 classes, got {array.shape[1]} column(s)")
    if not np.all(np.isfinite(array)):
        raise DataError(f"{name}: contains NaN or infinite values")
    return log_softmax(array, axis=1)


def prepare(source_logits: Any, source_labels: Any, target_logits: Any,
            classes: Sequence | None = None) -> EstimationData:
    """Validate the model's outputs and the source labels.

    ``source_labels`` are class names (members of ``classes``) or indices 0..K-1; ``classes`` defaults to
    ``range(K)``. The source validation set must be labelled (that is what calibrates every estimator) and must
    show every class the model outputs (a threshold or calibration cannot be fitted for a class never seen).
    """
    if source_labels is None:
        raise DataError("source labels: none given; label-free estimation needs a labelled source validation set "
                        "(only the target may be unlabelled)")
    src = _logits(source_logits, "source logits")
    tgt = _logits(target_logits, "target logits")
    k = src.shape[1]
    if tgt.shape[1] != k:
        raise DataError(f"target logits: {tgt.shape[1]} classes but the source logits have {k}; both must come "
                        f"from the same model")
    classes = tuple(range(k)) if classes is None else tuple(_native(c) for c in classes)
    if len(classes) != k:
        raise DataError(f"classes: the model outputs {k} classes but {len(classes)} class names were given "
                        f"({list(classes)!r}); the checkpoint and the source labels must have the same classes")
    labels = np.asarray(source_labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise DataError(f"source labels: expected one label per source image, got shape {labels.shape}; the "
                        f"source validation set must be labelled")
    if labels.dtype.kind == "O" and any(v is None for v in labels.tolist()):
        raise DataError("source labels: some images have no label; the source validation set must be fully labelled")
    try:
        y = encode_labels(labels, list(classes), "source labels")
    except ShiftInputError as error:
        raise DataError(str(error).replace("\n", " ")) from None
    if len(y) != len(src):
        raise DataError(f"source labels: {len(y)} labels for {len(src)} rows of source logits")
    missing = [classes[i] for i in np.flatnonzero(np.bincount(y, minlength=k) == 0)]
    if missing:
        raise DataError(f"source labels: class(es) {missing!r} have no source validation images; the model's classes "
                        f"{list(classes)!r} must all appear in the labelled source set")
    return EstimationData(classes=classes, source_log_probs=src, source_labels=y, target_log_probs=tgt)
