"""PyRadiomics feature extraction for one case, and for all cases in parallel worker processes.

One case: read the image (RGB -> luminance) and the mask, check the mask (:mod:`shiftkit.radiomics.masks`),
optionally resample both to a common spacing with :func:`shiftkit.harmonize.resample.resample_image` (the image
linear or B-spline, the mask nearest neighbour), then ``RadiomicsFeatureExtractor.execute``. Whatever goes wrong
with one case (an unreadable file, an empty mask, a mask off the image's grid, an absent label, PyRadiomics refusing
the region) becomes that case's one-line ``error``; the other cases go on.

All cases: a ``concurrent.futures.ProcessPoolExecutor`` of ``workers`` processes (each with one SimpleITK thread, so
that N processes use N cores), or a plain loop for ``workers=1``. Results come back in manifest order whatever the
completion order, and each process runs exactly the code of the serial loop, so serial and parallel runs write the
same table. Worker processes are forked on Linux (they start in milliseconds and inherit the imported modules;
spawned workers would each import torch through ``shiftkit.data``) and spawned elsewhere (macOS and Windows cannot
fork safely). A forked worker never writes to stderr, so a lock held by the parent's progress-bar thread at the
moment of the fork cannot block it.

PyRadiomics' log messages of level WARNING and above (a feature that failed and became NaN, a filter skipped) and
Python warnings (NumPy's RuntimeWarnings) are collected per case into ``warnings`` instead of being printed; the
summary counts them.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from shiftkit.radiomics.images import CaseError, read_image, read_mask
from shiftkit.radiomics.manifest import Case
from shiftkit.radiomics.masks import check_geometry, choose_label
from shiftkit.radiomics.params import RadiomicsParams, require_pyradiomics

SHAPE_CLASSES = ("shape", "shape2D")


@dataclass(frozen=True)
class ExtractionSettings:
    """Everything a worker needs besides the case: the PyRadiomics parameters and shiftkit's own options."""

    params: RadiomicsParams
    spacing: tuple[float, ...] | None = None  # --spacing, SimpleITK order (x, y[, z])
    interpolator: str = "linear"  # for the image; the mask is always nearest neighbour
    mask_label: int | None = None  # --mask-label
    diagnostics: bool = False  # keep PyRadiomics' diagnostics_* values

    def requested_label(self, case: Case) -> tuple[int | None, str]:
        """(label, where it came from): the case's mask_label, --mask-label, the parameter file's, or none."""
        if case.mask_label is not None:
            return case.mask_label, "mask_label column"
        if self.mask_label is not None:
            return self.mask_label, "--mask-label"
        if self.params.label is not None:
            return self.params.label, "label in the parameter file"
        return None, ""


@dataclass
class CaseResult:
    """One case's features (PyRadiomics names, floats) or its one-line ``error``."""

    index: int
    case_id: str
    features: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, str] = field(default_factory=dict)
    label: int | None = None  # the mask label used
    dimension: int | None = None
    error: str | None = None
    stage: str = "radiomics"  # where the error happened: radiomics or deep
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class _Collector(logging.Handler):
    """PyRadiomics' WARNING+ log records of one case, as one line each (a traceback's last line)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record must not fail the case
            text = str(record.msg)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            line = lines[0] if len(lines) == 1 else f"{lines[0].split(':')[0]}: {lines[-1]}"
            if line not in self.messages:
                self.messages.append(line[:300])


_STATE: dict[str, Any] = {}  # per process: the settings and the extractors built from them


def _quiet_radiomics() -> int:
    """Silence PyRadiomics' stderr handler (its messages are collected per case); returns the previous level."""
    radiomics = require_pyradiomics()
    handler = getattr(radiomics, "handler", None)
    previous = handler.level if handler is not None else logging.WARNING
    radiomics.setVerbosity(logging.CRITICAL + 10)
    return previous


def _init_worker(settings: ExtractionSettings, single_thread: bool) -> None:
    """A worker process's start: its settings, quiet PyRadiomics, and (in a pool) one SimpleITK thread."""
    import SimpleITK as sitk

    _STATE.clear()
    _STATE["settings"] = settings
    _quiet_radiomics()
    warnings.simplefilter("ignore")  # a worker never writes to stderr (see the module docstring)
    if single_thread:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _feature_classes(params: dict, dimension: int) -> dict:
    """The enabled feature classes for input of ``dimension``: all classes when the file names none (as
    PyRadiomics does), without the shape class PyRadiomics would skip with a warning (``shape`` for 2-D input,
    ``shape2D`` for 3-D input without force2D)."""
    import radiomics

    classes = dict(params.get("featureClass") or {name: None for name in radiomics.getFeatureClasses()})
    force2d = bool((params.get("setting") or {}).get("force2D"))
    skipped = "shape" if dimension == 2 else (None if force2d else "shape2D")
    if skipped in classes and len(classes) > 1:
        classes.pop(skipped)
    return classes


def _extractor(settings: ExtractionSettings, dimension: int):
    """One ``RadiomicsFeatureExtractor`` per process and input dimension (building one validates the parameters
    again, which would cost more than a small 2-D case's extraction)."""
    from radiomics import featureextractor

    if _STATE.get("settings") is not settings:
        _STATE.clear()
        _STATE["settings"] = settings
    extractors = _STATE.setdefault("extractors", {})
    if dimension not in extractors:
        params = copy.deepcopy(settings.params.params)
        params["featureClass"] = _feature_classes(params, dimension)
        with warnings.catch_warnings():  # pykwalify loads PyRadiomics' schema extension with a deprecated importer
            warnings.simplefilter("ignore", DeprecationWarning)
            extractors[dimension] = featureextractor.RadiomicsFeatureExtractor(params)
    return extractors[dimension]


def _spacing_text(spacing: Sequence[float]) -> str:
    return "x".join(f"{s:g}" for s in spacing)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:400]


def load_case(case: Case, settings: ExtractionSettings, *, colour: bool = False):
    """(image, mask, label) of ``case`` after the checks and the optional resampling; raises :class:`CaseError`.
    ``colour=True`` keeps an RGB image in colour (the deep features' crop) instead of its luminance."""
    from shiftkit.harmonize.resample import resample_image

    image = read_image(case.path, colour=colour)
    mask = read_mask(case.mask)
    setting = settings.params.settings
    check_geometry(image, mask, setting.get("geometryTolerance"), bool(setting.get("correctMask")))
    requested, source = settings.requested_label(case)
    label = choose_label(mask, requested, source)
    if settings.spacing is not None:
        try:
            image = resample_image(image, settings.spacing, settings.interpolator)
            mask = resample_image(mask, settings.spacing, label=True)
        except Exception as exc:  # a spacing of the wrong dimension, a size over the limit
            raise CaseError(f"cannot resample to spacing {_spacing_text(settings.spacing)}: {_one_line(exc)}") from None
        label = choose_label(mask, requested, source, when=f"after resampling to spacing "
                                                          f"{_spacing_text(settings.spacing)}")
    return image, mask, label


def extract_case(index: int, case: Case, settings: ExtractionSettings) -> CaseResult:
    """PyRadiomics features of one case; never raises for a problem of the case (it becomes ``error``)."""
    start = time.perf_counter()
    result = CaseResult(index, case.case_id)
    collector = _Collector()
    logger = logging.getLogger("radiomics")
    logger.addHandler(collector)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:  # NumPy's RuntimeWarnings inside PyRadiomics
            warnings.simplefilter("always")
            _extract_into(result, case, settings)
    except CaseError as exc:
        result.error = _one_line(exc)
    except ValueError as exc:  # PyRadiomics' checkMask: too few voxels, a one-dimensional region, ...
        result.error = f"PyRadiomics refused the region of interest: {_one_line(exc)}"
    except Exception as exc:  # anything else in one case must not lose the other cases
        result.error = f"{type(exc).__name__}: {_one_line(exc)}"
    finally:
        logger.removeHandler(collector)
    if result.error is not None:
        result.features, result.diagnostics = {}, {}
    result.warnings = collector.messages + list(dict.fromkeys(f"{w.category.__name__}: {w.message}"[:300]
                                                              for w in caught))
    result.seconds = time.perf_counter() - start
    return result


def _extract_into(result: CaseResult, case: Case, settings: ExtractionSettings) -> None:
    """Fill ``result`` with the features of ``case``; raises on any problem (``extract_case`` words it)."""
    image, mask, label = load_case(case, settings)
    result.label, result.dimension = label, image.GetDimension()
    values = _extractor(settings, image.GetDimension()).execute(image, mask, label=label)
    for name, value in values.items():
        if name.startswith("diagnostics_"):
            if settings.diagnostics:
                result.diagnostics[name] = str(value)
        else:
            result.features[name] = float(value)
    if not result.features:
        raise CaseError("PyRadiomics computed no features (check featureClass and imageType in the parameters)")


def _work(index: int, case: Case) -> CaseResult:
    return extract_case(index, case, _STATE["settings"])


def start_method() -> str:
    """``fork`` on Linux (fast, inherits imports), ``spawn`` elsewhere."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def extract_cases(cases: Sequence[Case], settings: ExtractionSettings, workers: int = 1,
                  on_done: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """Every case's :class:`CaseResult`, in the order of ``cases``; ``on_done`` is called as each one finishes
    (in completion order). ``workers`` > 1 runs the cases in that many processes."""
    require_pyradiomics()
    results: list[CaseResult | None] = [None] * len(cases)
    if workers <= 1 or len(cases) <= 1:
        previous = _quiet_radiomics()
        try:
            for index, case in enumerate(cases):
                results[index] = extract_case(index, case, settings)
                if on_done is not None:
                    on_done(results[index])
        finally:
            import radiomics

            radiomics.setVerbosity(previous)
        return results  # type: ignore[return-value]
    context = multiprocessing.get_context(start_method())
    with ProcessPoolExecutor(max_workers=min(workers, len(cases)), mp_context=context, initializer=_init_worker,
                             initargs=(settings, True)) as pool:
        futures = {pool.submit(_work, index, case): index for index, case in enumerate(cases)}
        try:
            for future in as_completed(futures):
                index = futures[future]
                try:
                    result = future.result()
                except BrokenProcessPool:
                    result = CaseResult(index, cases[index].case_id,
                                        error="the worker process died (out of memory, or a crash inside PyRadiomics "
                                              "or SimpleITK); rerun with --workers 1 to find the case that crashes")
                results[index] = result
                if on_done is not None:
                    on_done(result)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results  # type: ignore[return-value]
