"""``shiftkit radiomics extract`` as a library call: manifest -> parameters -> PyRadiomics features of every case
(in parallel) -> optional deep features -> one features table, the failures and a summary.

The outputs (:mod:`shiftkit.radiomics.outputs`) are written by the caller; this module computes. A user mistake
that concerns the whole run (the manifest, the parameters, the network) is a one-line error before any extraction;
a problem with one case is that case's failure, and the others are kept.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shiftkit.errors import ConfigError
from shiftkit.hooks import StageHook, start_stage
from shiftkit.radiomics.deep import DeepOptions, build_deep_model, deep_features
from shiftkit.radiomics.extract import CaseResult, ExtractionSettings, extract_cases, start_method
from shiftkit.radiomics.images import is_pil_path
from shiftkit.radiomics.manifest import RadiomicsManifest, read_radiomics_manifest
from shiftkit.radiomics.params import load_params, require_pyradiomics
from shiftkit.radiomics.table import FeaturesTable, build_table

INTERPOLATORS = ("linear", "bspline")
IMAGE_CONVERSION = ("PNG/JPEG/TIFF/BMP: 2-D, spacing 1 (pixels); RGB -> luminance Y = 0.299 R + 0.587 G + 0.114 B "
                    "(float, BT.601); NRRD/NIfTI/DICOM/MHA: values as stored, with their geometry")


def default_workers() -> int:
    """The CPU cores this process may use (at most 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


@dataclass(frozen=True)
class ExtractRequest:
    manifest: Path
    params: Path | None = None
    filters: tuple[str, ...] = ()
    bin_width: float | None = None
    spacing: tuple[float, ...] | None = None
    interpolator: str = "linear"
    mask_label: int | None = None
    workers: int = 1
    diagnostics: bool = False
    deep: DeepOptions | None = None


@dataclass
class Extraction:
    manifest: RadiomicsManifest
    results: list[CaseResult]
    table: FeaturesTable
    settings: ExtractionSettings
    workers: int
    seconds: dict[str, float]
    deep: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.ok]

    @property
    def extracted(self) -> list[CaseResult]:
        return [r for r in self.results if r.ok]

    def failures(self) -> list[dict[str, Any]]:
        """One record per failed case: case_id, path, mask, site, row, stage, reason."""
        out = []
        for result in self.failed:
            case = self.manifest.cases[result.index]
            out.append({"case_id": case.case_id, "path": case.path_text, "mask": case.mask_text, "site": case.site,
                        "row": case.row, "stage": result.stage, "reason": result.error})
        return out

    def summary(self) -> dict[str, Any]:
        """The JSON twin of the run (see the notes: shape of features.json)."""
        import SimpleITK as sitk

        radiomics = require_pyradiomics()
        warnings = Counter(message for r in self.results for message in r.warnings)
        n_deep = len([c for c in self.table.feature_columns if c.startswith("deep_")]) if self.deep else 0
        times = [r.seconds for r in self.results]
        return {
            "kind": "radiomics_features",
            "manifest": str(self.manifest.path),
            "n_cases": len(self.results),
            "n_extracted": len(self.extracted),
            "n_failed": len(self.failed),
            "failures": self.failures(),
            "metadata_columns": self.table.metadata_columns,
            "feature_columns": self.table.feature_columns,
            "n_features": len(self.table.feature_columns),
            "n_radiomics_features": len(self.table.feature_columns) - n_deep,
            "n_deep_features": n_deep,
            "dropped_features": self.table.dropped,
            "radiomics": {
                "pyradiomics_version": getattr(radiomics, "__version__", None),
                **self.settings.params.to_dict(),
                "spacing": list(self.settings.spacing) if self.settings.spacing else None,
                "interpolator": self.settings.interpolator if self.settings.spacing else None,
                "mask_label": self.settings.mask_label,
                "image_conversion": IMAGE_CONVERSION,
                "dimensions": sorted({r.dimension for r in self.extracted if r.dimension}),
            },
            "deep": self.deep or None,
            "warnings": dict(warnings.most_common()),
            "workers": self.workers,
            "start_method": start_method() if self.workers > 1 else None,
            "seconds": {**self.seconds, "per_case_median": float(np.median(times)) if times else None},
            "versions": {"pyradiomics": getattr(radiomics, "__version__", None), "SimpleITK": sitk.Version_VersionString(),
                         "numpy": np.__version__},
        }


def _check_request(request: ExtractRequest) -> None:
    if request.interpolator not in INTERPOLATORS:
        raise ConfigError(f"--interpolator '{request.interpolator}': choose {' or '.join(INTERPOLATORS)} (masks "
                          "always use nearest neighbour)")
    if request.spacing is not None and (not request.spacing or any(not np.isfinite(s) or s <= 0
                                                                     for s in request.spacing)):
        raise ConfigError(f"--spacing {request.spacing}: must be positive numbers, X,Y or X,Y,Z")
    if request.workers < 1:
        raise ConfigError(f"--workers {request.workers}: must be at least 1")
    if request.mask_label is not None and request.mask_label <= 0:
        raise ConfigError(f"--mask-label {request.mask_label}: must be a positive integer (0 is background)")


def _eight_bit(manifest: RadiomicsManifest, request: ExtractRequest) -> bool:
    """True when every image is a PNG/JPEG/TIFF/BMP file; a mix is refused when the bundled parameters would
    choose the bin width (it would differ between the two kinds)."""
    kinds = {is_pil_path(case.path) for case in manifest.cases}
    if len(kinds) > 1 and request.params is None and request.bin_width is None:
        raise ConfigError(f"{manifest.path}: the manifest mixes 8-bit PNG/JPEG images and other formats, for which "
                          "the default bin widths differ (5 and 25); give --bin-width or --params")
    return kinds == {True}


def run_extraction(request: ExtractRequest, on_stage: StageHook | None = None) -> Extraction:
    """Extract every case of the manifest (module docstring)."""
    start = time.perf_counter()
    _check_request(request)
    require_pyradiomics()
    manifest = read_radiomics_manifest(request.manifest)
    params = load_params(request.params, filters=request.filters, bin_width=request.bin_width,
                         eight_bit=_eight_bit(manifest, request), spacing=request.spacing)
    settings = ExtractionSettings(params, request.spacing, request.interpolator, request.mask_label,
                                  request.diagnostics)
    adapted = build_deep_model(request.deep) if request.deep is not None else None
    workers = min(request.workers, len(manifest.cases))
    tick = start_stage(on_stage, f"PyRadiomics features ({workers} process{'es' if workers > 1 else ''})",
                       len(manifest.cases))
    results = extract_cases(manifest.cases, settings, workers, on_done=(lambda _: tick()) if tick else None)
    seconds = {"radiomics": time.perf_counter() - start}
    matrix, names, info = None, [], {}
    if adapted is not None and any(r.ok for r in results):
        deep_start = time.perf_counter()
        tick = start_stage(on_stage, f"deep features ({adapted.arch})", sum(r.ok for r in results))
        matrix, names, failures, info = deep_features(manifest.cases, results, settings, request.deep, adapted, tick)
        for index, reason in failures.items():
            results[index].error, results[index].stage = reason, "deep"
            results[index].features, results[index].diagnostics = {}, {}
        seconds["deep"] = time.perf_counter() - deep_start
    table = build_table(manifest, results, matrix, names)
    seconds["total"] = time.perf_counter() - start
    return Extraction(manifest, results, table, settings, workers, seconds, info)
