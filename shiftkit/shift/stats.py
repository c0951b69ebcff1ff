"""Shared result type and helpers for the shift tests.

Every test returns a frozen :class:`TestResult` that says what was computed, on how many samples, with which
seed and how many permutations, and the p-value or interval that goes with it (DESIGN.md: statistics carry
their uncertainty).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from shiftkit.errors import DataError


class PValueResult:
    """What every shift result offers: a JSON-able dict, and whether it rejects at ``alpha``."""

    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rejects(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


@dataclass(frozen=True)
class TestResult(PValueResult):
    """One two-sample test.

    ``statistic`` is the test's own statistic (MMD², AUC, Wasserstein distance, KS D...), ``p_value`` the
    probability of a statistic at least as extreme under "no shift"; ``details`` holds the rest (bandwidth,
    intervals, per-dimension values) as plain JSON-able values.
    """

    __test__ = False  # a result, not a pytest test class (its name starts with "Test")

    test: str
    statistic: float
    p_value: float
    n_source: int
    n_target: int
    method: str = ""
    permutations: int | None = None
    seed: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    """(1 + #{null >= observed}) / (1 + B): never 0, valid at any number of permutations (Phipson & Smyth 2010)."""
    null = np.asarray(null, dtype=np.float64)
    return float((1 + np.sum(null >= observed)) / (1 + len(null)))


def as_float_array(x: Any, name: str) -> np.ndarray:
    """A 2-D float array with finite values, or a ValueError naming ``name``."""
    array = np.asarray(x, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


class ShiftInputError(DataError, ValueError):
    """Inputs to a shift estimator that cannot be used as given (a ``ShiftkitError`` and a ``ValueError``)."""


def encode_labels(labels: Any, classes: Any, name: str) -> np.ndarray:
    """Class indices ``0..C-1`` for ``labels`` given as class names (members of ``classes``) or as indices.

    Labels that are all members of ``classes`` are read as names; otherwise integer labels in ``range(C)`` are read
    as indices. Anything else raises :class:`ShiftInputError` naming ``name`` and the first offending value.
    """
    classes = list(classes)
    if len(classes) < 2:
        raise ShiftInputError(f"classes: need at least 2 classes, got {classes!r}")
    if len(set(map(repr, classes))) != len(classes):
        raise ShiftInputError(f"classes: duplicate class names in {classes!r}")
    values = np.asarray(labels)
    if values.ndim != 1 or len(values) == 0:
        raise ShiftInputError(f"{name}: expected a non-empty 1-D array of labels, got shape {values.shape}")
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise ShiftInputError(f"{name}: contains NaN or infinite values")
    lookup = {}
    for index, label in enumerate(classes):
        try:
            lookup[label] = index
        except TypeError:  # unhashable class names: compare by repr
            lookup[repr(label)] = index
    as_list = values.tolist()
    try:
        if all(v in lookup for v in as_list):
            return np.array([lookup[v] for v in as_list], dtype=np.int64)
    except TypeError:
        pass
    if values.dtype.kind in "iu" or (values.dtype.kind == "f" and np.all(values == np.round(values))):
        indices = values.astype(np.int64)
        bad = (indices < 0) | (indices >= len(classes))
        if not bad.any():
            return indices
        raise ShiftInputError(
            f"{name}: label {as_list[int(np.argmax(bad))]!r} is neither one of the classes {classes!r} "
            f"nor a class index in 0..{len(classes) - 1}"
        )
    missing = next(v for v in as_list if v not in lookup)
    raise ShiftInputError(f"{name}: label {missing!r} is not one of the classes {classes!r}")
