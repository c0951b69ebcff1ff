"""Result objects of label-free performance estimation, each with a JSON-plain ``to_dict``.

An estimate never travels without its method, its interval and what it assumes: :class:`EstimateResult` holds all
three; a withheld estimate has ``estimate = None`` and says why in ``withheld``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from shiftkit.estimate.flags import Flag

__all__ = ["EstimateResult", "PerformanceEstimate"]


def _plain(value: Any) -> Any:
    """numpy scalars/arrays, tuples and non-finite floats to JSON-plain values (NaN/inf -> None)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {(_plain(k) if not isinstance(k, str) else k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class EstimateResult:
    """One metric estimated by one method.

    ``class_name`` names the class of a per-class metric (sensitivity, specificity; the positive class of PPV, NPV
    and AUROC), None for accuracy and balanced accuracy. ``interval`` is the percentile-bootstrap interval at ``level``.
    """

    method: str
    metric: str
    estimate: float | None
    interval: tuple[float | None, float | None] | None
    level: float
    assumes: str
    class_name: Any = None
    withheld: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "metric": self.metric,
            "class": _plain(self.class_name),
            "estimate": _plain(self.estimate),
            "interval": None if self.interval is None else [_plain(self.interval[0]), _plain(self.interval[1])],
            "level": self.level,
            "assumes": self.assumes,
            "withheld": self.withheld,
            "details": _plain(self.details),
        }

    def describe(self) -> str:
        """One line: ``accuracy (atc): 0.812 [0.790, 0.833]``, or the reason it is withheld."""
        label = self.metric + (f"[{self.class_name}]" if self.class_name is not None else "")
        if self.estimate is None:
            return f"{label} ({self.method}): withheld: {self.withheld}"
        lo, hi = self.interval if self.interval is not None else (None, None)
        span = f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "[no interval]"
        return f"{label} ({self.method}): {self.estimate:.3f} {span}"


@dataclass(frozen=True)
class PerformanceEstimate:
    """All estimates of one source/target pair with the flags that qualify them."""

    classes: tuple
    positive_class: Any
    n_source: int
    n_target: int
    level: float
    bootstrap: int
    seed: int
    results: tuple[EstimateResult, ...]
    flags: tuple[Flag, ...]
    methods: dict[str, dict[str, Any]]
    target_prior: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def get(self, method: str, metric: str = "accuracy", class_name: Any = None) -> EstimateResult:
        """The result of ``method`` for ``metric`` (and ``class_name`` for per-class metrics); KeyError if absent."""
        for r in self.results:
            if r.method == method and r.metric == metric and (class_name is None or r.class_name == class_name):
                return r
        raise KeyError(f"no {metric!r} estimate from method {method!r}" +
                       (f" for class {class_name!r}" if class_name is not None else ""))

    def flag(self, code: str) -> Flag:
        for f in self.flags:
            if f.code == code:
                return f
        raise KeyError(f"no flag {code!r}")

    @property
    def raised(self) -> list[Flag]:
        return [f for f in self.flags if f.raised]

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": _plain(list(self.classes)),
            "positive_class": _plain(self.positive_class),
            "n_source": self.n_source,
            "n_target": self.n_target,
            "level": self.level,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "methods": _plain(self.methods),
            "target_prior": _plain(self.target_prior),
            "estimates": [r.to_dict() for r in self.results],
            "flags": [f.to_dict() for f in self.flags],
            "assumptions": ["no concept shift: P(y|x) is the same at the source and the target; label-free methods "
                            "cannot detect a violation"],
            "details": _plain(self.details),
        }
