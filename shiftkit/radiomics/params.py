"""PyRadiomics parameters for ``shiftkit radiomics extract``: the bundled ``params.yaml`` or the user's ``--params``
file, checked with PyRadiomics' own schema, plus the few options shiftkit adds (``--filters``, ``--bin-width``).

The parameters travel to the worker processes as the validated dictionary (``imageType``, ``featureClass``,
``setting``), so every process extracts with exactly the same settings, and the summary JSON records them.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from shiftkit.data.paths import path_problem
from shiftkit.errors import ConfigError

EXTRA = "pip install 'shiftkit[radiomics]'"
DEFAULT_PARAMS = Path(__file__).with_name("params.yaml")
DEFAULT_BIN_WIDTH = 25  # PyRadiomics' default (CT, Hounsfield units); written in params.yaml
EIGHT_BIT_BIN_WIDTH = 5  # 8-bit display values 0..255: about 50 grey levels over the full range
# --filters NAME -> PyRadiomics image type and its settings. LoG sigmas are in mm (pixels for PNG/JPEG, spacing 1).
FILTERS: dict[str, tuple[str, dict]] = {
    "log": ("LoG", {"sigma": [1.0, 3.0]}),
    "wavelet": ("Wavelet", {}),
    "square": ("Square", {}),
    "squareroot": ("SquareRoot", {}),
    "logarithm": ("Logarithm", {}),
    "exponential": ("Exponential", {}),
    "gradient": ("Gradient", {}),
    "lbp2d": ("LBP2D", {}),
    "lbp3d": ("LBP3D", {}),
}


def require_pyradiomics():
    """The ``radiomics`` module, or one line naming the extra that installs it."""
    try:
        import radiomics
    except ImportError:
        raise ConfigError(f"PyRadiomics is not installed; {EXTRA} (it installs pyradiomics-bhklab 3.1.4, which "
                          "builds on Python 3.11+)") from None
    return radiomics


@dataclass(frozen=True)
class RadiomicsParams:
    """Validated PyRadiomics parameters and how they were decided."""

    params: dict[str, Any]  # imageType, featureClass, setting (and voxelSetting if given)
    source: str  # the parameter file
    bin_width: str  # how the discretisation was decided, in words
    label: int | None  # the mask label the file sets (None: not set, shiftkit's label rule applies)

    @property
    def settings(self) -> dict[str, Any]:
        return self.params.get("setting") or {}

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "bin_width": self.bin_width, "params": self.params}


def _reason(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (" ".join(lines[:3]) or type(exc).__name__)[:400]


def validate(data: dict | None = None, path: Path | None = None) -> dict[str, Any]:
    """A parameter dictionary (or file) checked against PyRadiomics' schema (pykwalify), as PyRadiomics' own
    extractor checks it; a bad name or value is a one-line :class:`ConfigError`."""
    require_pyradiomics()
    import pykwalify.core
    from radiomics import getParameterValidationFiles

    schema_file, schema_funcs = getParameterValidationFiles()
    where = str(path) if path is not None else "radiomics parameters"
    quiet = [logging.getLogger(name) for name in ("pykwalify", "pykwalify.core", "pykwalify.rule")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.CRITICAL + 1)  # the one-line error below says it; no pykwalify log lines
    try:
        with warnings.catch_warnings():  # pykwalify loads PyRadiomics' schema extension with a deprecated importer
            warnings.simplefilter("ignore", DeprecationWarning)
            core = pykwalify.core.Core(source_file=str(path) if path is not None else None,
                                       source_data=copy.deepcopy(data) if data is not None else None,
                                       schema_files=[schema_file], extensions=[schema_funcs])
            params = core.validate(raise_exception=True)
    except Exception as exc:  # pykwalify's SchemaError, CoreError, YAML parse errors
        raise ConfigError(f"{where}: not a valid PyRadiomics parameter file ({_reason(exc)})") from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: not a valid PyRadiomics parameter file (expected a mapping)")
    return {k: copy.deepcopy(v) for k, v in params.items()}


def parse_filters(text: str | None) -> tuple[str, ...]:
    """``log,wavelet`` -> ("log", "wavelet"); an unknown name is refused with the list."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in (text or "").split(",") if n.strip()))
    unknown = [n for n in names if n not in FILTERS]
    if unknown:
        raise ConfigError(f"--filters '{unknown[0]}' is not a filter (choose from {', '.join(FILTERS)})")
    return names


def load_params(path: Path | None = None, *, filters: Sequence[str] = (), bin_width: float | None = None,
                eight_bit: bool = False, spacing: Sequence[float] | None = None) -> RadiomicsParams:
    """The parameters of one extraction: ``path`` (a PyRadiomics YAML/JSON file) or the bundled defaults, with
    ``filters`` added to its image types and ``bin_width`` replacing its ``binWidth``. ``eight_bit`` (every image
    a PNG/JPEG): the bundled defaults use :data:`EIGHT_BIT_BIN_WIDTH` instead of 25 (see params.yaml).
    ``spacing`` (``--spacing``, shiftkit's resampling) may not be combined with PyRadiomics' own
    ``resampledPixelSpacing``: the images would be resampled twice."""
    if path is not None:
        problem = path_problem(path, missing="file not found")
        if problem is not None:
            raise ConfigError(f"--params {path}: {problem}")
    params = validate(path=path if path is not None else DEFAULT_PARAMS)
    setting = params.setdefault("setting", {}) or {}
    params["setting"] = setting
    if path is None and bin_width is None:
        value = EIGHT_BIT_BIN_WIDTH if eight_bit else DEFAULT_BIN_WIDTH
        setting["binWidth"] = value
        rule = (f"binWidth {value} (default for 8-bit PNG/JPEG images)" if eight_bit
                else f"binWidth {value} (PyRadiomics' default)")
    elif bin_width is not None:
        if not bin_width > 0:
            raise ConfigError(f"--bin-width {bin_width:g}: must be above 0")
        if setting.get("binCount") is not None:
            raise ConfigError(f"--bin-width and the parameter file's binCount ({setting['binCount']}) both set the "
                              "discretisation; give one")
        setting["binWidth"] = float(bin_width)
        rule = f"binWidth {bin_width:g} (--bin-width)"
    elif setting.get("binCount") is not None:
        rule = f"binCount {setting['binCount']} (parameter file)"
    else:
        rule = f"binWidth {setting.get('binWidth', DEFAULT_BIN_WIDTH)} (parameter file)"
    if spacing is not None and setting.get("resampledPixelSpacing"):
        raise ConfigError("--spacing and the parameter file's resampledPixelSpacing both resample the images; "
                          "give one")
    image_types = params.get("imageType") or {"Original": {}}
    for name in filters:
        kind, options = FILTERS[name]
        image_types.setdefault(kind, dict(options))
    params["imageType"] = image_types
    params = validate(data=params)  # the combined parameters are PyRadiomics-valid too
    label = params["setting"].get("label")
    return RadiomicsParams(params, str(path if path is not None else DEFAULT_PARAMS), rule,
                           int(label) if label is not None else None)
