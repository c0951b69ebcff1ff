"""What changed in the images: acquisition properties of each decoded image, compared source versus target.

A shift test says *that* two image sets differ; this module says *how*, in terms a user can act on (issue 15,
item 5): brightness, contrast, sharpness, noise, colour, size and pixel spacing, measured on each image as the
readers decode it (:func:`shiftkit.data.readers.read_image`: float in [0, 1] after the intensity window, the
middle slice of a volume), before the model's resize, crop and normalisation. Each property is then compared
between the domains with a two-sample test and two effect sizes, corrected across properties, and ranked.

Properties are computed during the one decode the embedding pass already does (the project's rule: never decode
an image twice): :class:`PropertyTap` is the raw tap passed as ``ImageDataset(..., on_raw=tap)``.

Cost is bounded per image whatever its size: the global statistics read a strided subsample of at most
:data:`GLOBAL_MAX_PIXELS` pixels, the local ones (sharpness, noise) a grid of at most 4 x 4 tiles of 64 x 64 pixels
spread over the image (the whole image when it is no larger), so a 4096 x 4096 radiograph costs what a 300 x 300
one does (a few milliseconds on one CPU core).
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from shiftkit.shift.corrections import CORRECTIONS, adjust_p_values
from shiftkit.errors import ConfigError

# Name -> definition and unit, in the order reports list them.
PROPERTIES: dict[str, str] = {
    "brightness": "mean luminance, 0..1 (0 black, 1 white)",
    "contrast": "RMS contrast: standard deviation of the luminance, 0..0.5",
    "sharpness": "noise-corrected variance of the Laplacian of the luminance over its variance (blur lowers it)",
    "noise": "Immerkaer (1996) noise standard deviation of the luminance (median over 8x8 blocks), 0..1 units",
    "mean_red": "mean red channel, 0..1 (RGB images only)",
    "mean_green": "mean green channel, 0..1 (RGB images only)",
    "mean_blue": "mean blue channel, 0..1 (RGB images only)",
    "chroma": "mean CIELAB chroma C*ab (0 grey, ~130 most saturated; RGB images only)",
    "height": "decoded height, pixels",
    "width": "decoded width, pixels",
    "aspect_ratio": "width / height",
    "spacing": "mean in-plane pixel spacing (manifest column, else the file header; mm in medical headers), NaN "
               "when unknown",
}
COLOUR_PROPERTIES = ("mean_red", "mean_green", "mean_blue", "chroma")

LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)  # Rec. 709 weights, on the stored (gamma) values
GLOBAL_MAX_PIXELS = 256 * 256
COLOUR_MAX_PIXELS = 48 * 48
TILE = 64
TILE_GRID = 4
NOISE_BLOCK = 8

# sRGB (D65) to CIE XYZ, IEC 61966-2-1, and the D65 white point.
_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]], dtype=np.float32)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float32)


# -- one image -----------------------------------------------------------------------------------------------------

def _channels_last(array: Any) -> np.ndarray:
    """``H x W`` or ``H x W x 3`` (a single channel squeezed, alpha dropped as the readers drop it)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"expected an H x W or H x W x 3 image, got shape {a.shape} (for a volume pass the 2-D "
                         "slice the readers decode)")
    if a.size == 0:
        raise ValueError("image has no pixels")
    return a


def _scale(array: np.ndarray, value_range: tuple[float, float] | None, probe: np.ndarray) -> tuple[float, float]:
    """The (low, high) that map ``array`` to 0..1: ``value_range`` when given, the dtype's range for integers,
    0..1 for floats that lie in it (what the readers return; checked on ``probe``, the global subsample), else the
    image's own minimum and maximum."""
    if value_range is not None:
        return float(value_range[0]), float(value_range[1])
    if array.dtype == np.bool_:
        return 0.0, 1.0
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        return (0.0 if info.min == 0 else float(info.min)), float(info.max)
    low, high = float(np.nanmin(probe)), float(np.nanmax(probe))
    if low >= 0.0 and high <= 1.0:
        return 0.0, 1.0
    return float(np.nanmin(array)), float(np.nanmax(array))


def _to_unit(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    pixels = pixels.astype(np.float32, copy=False)
    if (low, high) == (0.0, 1.0):
        return pixels
    if not high > low:
        return np.zeros_like(pixels)
    return (pixels - np.float32(low)) / np.float32(high - low)


def _luminance(unit: np.ndarray) -> np.ndarray:
    return unit @ LUMA if unit.ndim >= 3 and unit.shape[-1] == 3 else unit


def _strided(array: np.ndarray, max_pixels: int) -> np.ndarray:
    height, width = array.shape[:2]
    step = max(1, math.ceil(math.sqrt(height * width / max_pixels)))
    return array[::step, ::step]


def _starts(length: int, tile: int, count: int) -> list[int]:
    """``count`` tile origins, each centred in one of ``count`` equal strips of ``length``."""
    return [min(length - tile, max(0, round((k + 0.5) * length / count - tile / 2))) for k in range(count)]


def _tiles(array: np.ndarray) -> np.ndarray:
    """``T x h x w [x 3]``: the whole image when it has at most ``(TILE * TILE_GRID)**2`` pixels, else up to
    ``TILE_GRID**2`` tiles of ``TILE`` pixels spread over it (local statistics keep the pixel scale, unlike a
    resize, and the cost stays bounded)."""
    height, width = array.shape[:2]
    if height * width <= (TILE * TILE_GRID) ** 2:
        return array[None]
    th, tw = min(TILE, height), min(TILE, width)
    rows = _starts(height, th, min(TILE_GRID, height // th))
    cols = _starts(width, tw, min(TILE_GRID, width // tw))
    return np.stack([array[y:y + th, x:x + tw] for y in rows for x in cols])


def laplacian_valid(tiles: np.ndarray) -> np.ndarray:
    """The 5-point Laplacian (``scipy.ndimage.laplace``'s stencil) of each ``T x h x w`` tile on its valid interior
    (``T x h-2 x w-2``). Written with array slicing because only the interior is used (the rim is where a boundary
    mode would have to guess), and on 64-pixel tiles this is 3x faster than ``ndimage.laplace``'s full passes
    (measured); the test checks it against ``ndimage.laplace``."""
    return (tiles[:, :-2, 1:-1] + tiles[:, 2:, 1:-1] + tiles[:, 1:-1, :-2] + tiles[:, 1:-1, 2:]
            - 4.0 * tiles[:, 1:-1, 1:-1])


def immerkaer_valid(tiles: np.ndarray) -> np.ndarray:
    """Each tile convolved with Immerkaer's N = [[1,-2,1],[-2,4,-2],[1,-2,1]] = [1,-2,1]^T [1,-2,1] on its valid
    interior, as two separable second differences by slicing (same reason as :func:`laplacian_valid`; the test
    checks it against ``scipy.ndimage.convolve``)."""
    rows = tiles[:, :-2] - 2.0 * tiles[:, 1:-1] + tiles[:, 2:]
    return rows[:, :, :-2] - 2.0 * rows[:, :, 1:-1] + rows[:, :, 2:]


def _noise(tiles: np.ndarray) -> float:
    """Immerkaer (1996), "Fast noise variance estimation", CVIU 64(2): sigma = sqrt(pi/2) / 6 * mean |I * N|.
    N is the difference of two Laplacians, so it cancels smooth image structure and keeps white noise (scaled by
    sqrt(36) = 6; the mean absolute value of a Gaussian is sigma * sqrt(2/pi)). The estimate is taken per 8 x 8
    block of valid pixels and the median over blocks is reported: on real images N also answers to edges and
    texture, which sit in a minority of blocks, and the median ignores them (on pure noise it equals Immerkaer's
    global mean). Written here because scikit-image is not a dependency (and its ``estimate_sigma`` is a wavelet
    estimator, not this one)."""
    if tiles.shape[1] < 3 or tiles.shape[2] < 3:
        return math.nan
    response = np.abs(immerkaer_valid(tiles))
    count, height, width = response.shape
    bh, bw = min(NOISE_BLOCK, height), min(NOISE_BLOCK, width)
    blocks = response[:, : height // bh * bh, : width // bw * bw].reshape(count, height // bh, bh, width // bw, bw)
    return float(np.median(blocks.mean(axis=(2, 4)))) * math.sqrt(math.pi / 2.0) / 6.0


def _sharpness(tiles: np.ndarray, noise: float) -> float:
    """Noise-corrected variance of the Laplacian over the luminance variance: (var(lap L) - 20 sigma^2) / var(L),
    0 at least. The variance of the Laplacian is the usual focus / blur measure (Pech-Pacheco et al. 2000), but
    white noise of standard deviation sigma adds exactly 20 sigma^2 to it (the 5-point stencil's squared weights
    sum to 20), so added noise would read as "sharper" and hide a blur; subtracting the :func:`_noise` estimate
    leaves the image's own detail. Dividing by the intensity variance makes it independent of brightness and
    contrast, so a contrast change is reported as contrast. Only each tile's valid interior is used."""
    if tiles.shape[1] < 3 or tiles.shape[2] < 3 or not math.isfinite(noise):
        return math.nan
    variance = float(tiles[:, 1:-1, 1:-1].var())
    if variance <= 1e-12:
        return math.nan
    return max(float(laplacian_valid(tiles).var()) - 20.0 * noise**2, 0.0) / variance


def _chroma(rgb: np.ndarray) -> float:
    """Mean CIELAB chroma sqrt(a*^2 + b*^2) of sRGB values in [0, 1] (CIE 15:2004; sRGB per IEC 61966-2-1, D65):
    a perceptual measure of colourfulness, unlike HSV saturation, which calls a near-black pixel fully saturated.
    Written out because neither scikit-image nor OpenCV is a dependency."""
    rgb = np.clip(rgb.reshape(-1, 3), 0.0, 1.0)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = (linear @ _SRGB_TO_XYZ.T) / _D65_WHITE
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    a_star = 500.0 * (f[:, 0] - f[:, 1])
    b_star = 200.0 * (f[:, 1] - f[:, 2])
    return float(np.hypot(a_star, b_star).mean())


def _mean_spacing(spacing: Sequence[float] | float | None) -> float:
    if spacing is None:
        return math.nan
    values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))[:2]  # (x, y[, z]): in-plane only
    values = values[np.isfinite(values) & (values > 0)]
    return float(values.mean()) if len(values) else math.nan


def image_properties(
    array: Any,
    spacing: Sequence[float] | float | None = None,
    *,
    value_range: tuple[float, float] | None = None,
) -> dict[str, float]:
    """The properties of one decoded image (keys and definitions: :data:`PROPERTIES`, always all of them).

    ``array`` is ``H x W`` or ``H x W x 3`` as :func:`~shiftkit.data.readers.read_image` returns it (float in
    [0, 1], after the intensity window and, for a volume, already the slice the readers take; a 3-D volume itself
    is refused). Intensities are put on 0..1 by ``value_range`` when given (e.g. a CT window), else by the dtype's
    range (uint8 / 255, uint16 / 65535), else floats are taken as 0..1 when they lie in it and otherwise scaled by
    their own minimum and maximum. Brightness and contrast are therefore those of the image as the model receives
    it: for 16-bit and medical files the readers' per-image percentile window has already removed most global
    intensity differences, and what is left is what the network sees.

    - ``brightness``: mean luminance; ``contrast``: its standard deviation (RMS contrast). Michelson contrast is not
      reported: it depends on the two extreme pixels, and after a percentile window it is 1 for almost every image.
      Luminance is Rec. 709 luma of RGB (the stored, gamma-encoded values); a grayscale image is its own luminance.
    - ``sharpness``: see :func:`_sharpness` (brightness-, contrast- and, to first order, noise-invariant).
    - ``noise``: see :func:`_noise` (in intensity units, so a contrast reduction lowers it in proportion; on images
      with little noise it reads fine detail, so a blur lowers it too: :func:`compare_properties` says so).
    - ``mean_red`` / ``mean_green`` / ``mean_blue`` and ``chroma`` (:func:`_chroma`): NaN for grayscale images,
      explicitly, so every image has the same keys and :func:`compare_properties` calls them "not measured".
    - ``height``, ``width`` (of the decoded 2-D image), ``aspect_ratio`` (width / height).
    - ``spacing``: the mean of the first two values of ``spacing`` (in-plane x, y), NaN when unknown.

    Global statistics use a strided subsample (<= :data:`GLOBAL_MAX_PIXELS`), local ones a grid of tiles (see the
    module docstring), so the cost is bounded. Raises ValueError for an array that is not a 2-D image.
    """
    a = _channels_last(array)
    height, width = a.shape[:2]
    sample = _strided(a, GLOBAL_MAX_PIXELS)
    low, high = _scale(a, value_range, sample)
    unit_sample = _to_unit(sample, low, high)
    luminance = _luminance(unit_sample)
    whole = sample.shape[:2] == a.shape[:2] and height * width <= (TILE * TILE_GRID) ** 2
    tiles = luminance[None] if whole else _luminance(_to_unit(_tiles(a), low, high))
    result = {
        "brightness": float(luminance.mean()),
        "contrast": float(luminance.std()),
    }
    result["noise"] = _noise(tiles)
    result["sharpness"] = _sharpness(tiles, result["noise"])
    if a.ndim == 3:
        means = [unit_sample[..., c].mean() for c in range(3)]  # per plane: 10x faster than mean(axis=(0, 1))
        result.update(mean_red=float(means[0]), mean_green=float(means[1]), mean_blue=float(means[2]),
                      chroma=_chroma(_strided(unit_sample, COLOUR_MAX_PIXELS)))
    else:
        result.update({name: math.nan for name in COLOUR_PROPERTIES})
    result.update(height=float(height), width=float(width), aspect_ratio=width / height,
                  spacing=_mean_spacing(spacing))
    return {name: result[name] for name in PROPERTIES}


# -- the raw tap -----------------------------------------------------------------------------------------------------

class PropertyTap:
    """The raw tap for ``ImageDataset(table, cache, on_raw=PropertyTap())``: computes :func:`image_properties`
    once per decoded image, during the decode the embedding pass does anyway, and keeps only the numbers.

    Spacing is the manifest's ``spacing`` column when present (it overrides a header, as everywhere in shiftkit),
    else the header's (medical formats). A cache hit decodes nothing, so nothing is recorded for that row:
    :meth:`missing` lists such rows (the embedding pass uses an image cache that holds nothing, so it has none).

    ``workers=0`` measures inline. ``workers >= 1`` measures in that many background threads (numpy releases the
    GIL in its loops, PIL while decoding), so on a machine with spare cores the measurement overlaps the next
    decode and the forward pass instead of adding to them; at most ``4 * workers`` decoded arrays wait at a time.
    The arrays are only read (the cache makes the model's input from the same array without writing to it).
    :meth:`rows`, :meth:`missing` and :meth:`close` wait for pending measurements; use it as a context manager or
    call :meth:`close`. ``calls`` counts calls, ``seconds`` the time spent measuring (summed over threads, for the
    cost ratio), ``errors`` the rows whose image could not be measured (their properties are NaN)."""

    def __init__(self, workers: int = 0) -> None:
        self.properties: dict[int, dict[str, float]] = {}
        self.errors: dict[int, str] = {}
        self.calls = 0
        self.seconds = 0.0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="properties") if workers > 0 else None
        self._pending: deque[Future] = deque()
        self._max_pending = 4 * max(1, workers)

    def __call__(self, index: int, array: np.ndarray, record: Any = None, header: Mapping | None = None) -> None:
        spacing = getattr(record, "spacing", None)
        if spacing is None and header:
            spacing = header.get("spacing")
        with self._lock:
            self.calls += 1
        if self._pool is None:
            self._measure(int(index), array, spacing)
            return
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._measure, int(index), array, spacing))

    def _measure(self, index: int, array: np.ndarray, spacing: Any) -> None:
        start = time.perf_counter()
        error = None
        try:
            values = image_properties(array, spacing)
        except ValueError as exc:
            values, error = empty_properties(), str(exc)
        with self._lock:
            self.properties[index] = values
            if error is not None:
                self.errors[index] = error
            self.seconds += time.perf_counter() - start

    def wait(self) -> None:
        """Finish every pending measurement (re-raising an unexpected error from one)."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Wait for pending measurements and stop the threads (also when one of them failed)."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def __enter__(self) -> "PropertyTap":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def missing(self, indices: Iterable[int]) -> list[int]:
        """The rows of ``indices`` never measured (a cache hit, or not read yet)."""
        self.wait()
        return [int(i) for i in indices if int(i) not in self.properties]

    def rows(self, indices: Iterable[int]) -> list[dict[str, float]]:
        """Properties for ``indices`` in that order (e.g. the rows an embedding pass kept); a row never measured is
        all NaN (check :meth:`missing` first when that matters)."""
        self.wait()
        return [self.properties.get(int(i)) or empty_properties() for i in indices]


def empty_properties() -> dict[str, float]:
    """A row of NaN: an image that was not measured."""
    return {name: math.nan for name in PROPERTIES}


def properties_to_arrays(rows: Sequence[Mapping[str, float]], prefix: str = "property_") -> dict[str, np.ndarray]:
    """Columns for ``np.savez`` next to the embeddings: ``{prefix + name: float64 array (one value per row, NaN for
    missing)}``, names in :data:`PROPERTIES` order then any others sorted."""
    names = _names([rows])
    return {prefix + name: np.array([_number(row.get(name)) for row in rows], dtype=np.float64) for name in names}


def arrays_to_properties(arrays: Mapping[str, np.ndarray], prefix: str = "property_") -> list[dict[str, float]] | None:
    """The rows :func:`properties_to_arrays` stored (``arrays`` may be an open ``NpzFile``), or None when there is
    no property column (an entry written without properties: recompute it if they are needed)."""
    keys = list(arrays.files) if hasattr(arrays, "files") else list(arrays)
    columns = {key[len(prefix):]: np.asarray(arrays[key], dtype=np.float64) for key in keys if key.startswith(prefix)}
    if not columns:
        return None
    lengths = {len(column) for column in columns.values()}
    if len(lengths) != 1:
        return None
    return [{name: float(column[i]) for name, column in columns.items()} for i in range(lengths.pop())]


# -- source versus target ------------------------------------------------------------------------------------------

def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _names(groups: Iterable[Sequence[Mapping[str, Any]]]) -> list[str]:
    seen = {name for rows in groups for row in rows for name in row}
    return [name for name in PROPERTIES if name in seen] + sorted(seen - set(PROPERTIES))


def _json_float(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _summary(values: np.ndarray) -> dict[str, float]:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1)}


def _cohens_d(source: np.ndarray, target: np.ndarray) -> float:
    """(mean target - mean source) / pooled SD (n - 1 weights); +-inf when neither domain varies but the means
    differ."""
    n_s, n_t = len(source), len(target)
    pooled = ((n_s - 1) * source.var(ddof=1) + (n_t - 1) * target.var(ddof=1)) / (n_s + n_t - 2)
    difference = float(target.mean() - source.mean())
    if pooled <= 0:
        return math.copysign(math.inf, difference) if difference else 0.0
    return difference / math.sqrt(pooled)


def _untestable(name: str, source: np.ndarray, target: np.ndarray, reason: str) -> dict:
    row = {"property": name, "definition": PROPERTIES.get(name, ""), "testable": False, "reason": reason,
           "n_source": int(len(source)), "n_target": int(len(target))}
    for side, values in (("source", source), ("target", target)):
        summary = _summary(values) if len(values) else {}
        for key in ("median", "q1", "q3", "iqr"):
            row[f"{side}_{key}"] = _json_float(summary.get(key))
    row.update(test=None, statistic=None, p_value=None, p_adjusted=None, cohens_d=None, rank_biserial=None,
               direction=None, significant=False, rank=None, explained_by=None, explanation=None)
    return row


def compare_properties(
    source: Sequence[Mapping[str, Any]],
    target: Sequence[Mapping[str, Any]],
    *,
    correction: str = "bh",
    alpha: float = 0.05,
) -> list[dict]:
    """Compare each property between the domains; JSON-able rows, most changed first.

    ``source`` and ``target`` are per-image dicts (:func:`image_properties` rows; NaN or None is a missing value).
    Per property: ``n_source``/``n_target`` (values present), ``source_median``, ``source_q1``, ``source_q3``,
    ``source_iqr`` (and ``target_*``), ``test`` ("mann-whitney-u"), ``statistic`` (U of the target sample),
    ``p_value`` (two-sided), ``p_adjusted`` (``correction`` across the testable properties: "bh" =
    Benjamini-Hochberg via ``scipy.stats.false_discovery_control``, "holm", "bonferroni", or "none"),
    ``significant`` (``p_adjusted < alpha``), ``cohens_d`` (target minus source over the pooled SD; None when
    infinite, i.e. neither domain varies), ``rank_biserial`` (2U / (n_s n_t) - 1, in [-1, 1], > 0: target
    higher), ``direction`` ("higher in target", "lower in target", "no change"), ``rank`` (1 = most changed) and
    ``testable``/``reason``, and ``explained_by``/``explanation`` (see below).

    Why Mann-Whitney U: properties are skewed and heavy-tailed (noise, sharpness) or discrete (size, spacing); a
    rank test needs no distributional assumption, is unaffected by outliers and by monotone re-scaling (sharpness
    as a variance or a standard deviation gives the same answer), handles ties with the tie-corrected normal
    approximation, and its own effect size is the rank-biserial correlation. Kolmogorov-Smirnov would also detect
    spread-only changes but has less power for the location shifts that acquisition changes cause, and is
    conservative on discrete values.

    Ranking: by |rank-biserial| (bounded, outlier-proof, the quantity the test tests), then by |Cohen's d| (which
    still orders properties that separate the domains completely, where rank-biserial is +-1 for all), then by
    p-value. Cohen's d is the familiar size for a summary line ("contrast, d = 1.4"). One acquisition change can
    move two properties: when :data:`EXPLANATIONS` accounts for a significant change (a lower noise estimate beside
    a lower sharpness: a blur; noise following contrast), that row keeps its numbers and its significance, gets
    ``explained_by`` (the cause) and ``explanation``, and is ranked right after its cause. A property missing in a
    domain (colour of grayscale images, spacing of PNGs), with fewer than 2 values in one, or with one value in
    every image of both domains, is listed last with ``testable: false`` and the ``reason``; it never raises.
    """
    if correction != "none" and correction not in CORRECTIONS:
        raise ConfigError(f"unknown correction '{correction}' (choose from {', '.join(CORRECTIONS + ('none',))})")
    rows, tested = [], []
    for name in _names([source, target]):
        s = np.array([_number(row.get(name)) for row in source], dtype=np.float64)
        t = np.array([_number(row.get(name)) for row in target], dtype=np.float64)
        s, t = s[np.isfinite(s)], t[np.isfinite(t)]
        if not len(s) and not len(t):
            rows.append(_untestable(name, s, t, "not measured in either domain"))
            continue
        short = [side for side, values in (("source", s), ("target", t)) if len(values) < 2]
        if short:
            rows.append(_untestable(name, s, t, f"fewer than 2 values in {' and '.join(short)}"))
            continue
        if np.all(np.concatenate([s, t]) == s[0]):
            rows.append(_untestable(name, s, t, "the same value in every image of both domains"))
            continue
        result = stats.mannwhitneyu(t, s, alternative="two-sided", method="auto")
        rank_biserial = 2.0 * float(result.statistic) / (len(s) * len(t)) - 1.0
        d = _cohens_d(s, t)
        row = _untestable(name, s, t, "")
        row.update(testable=True, reason=None, test="mann-whitney-u", statistic=float(result.statistic),
                   p_value=float(result.pvalue), cohens_d=_json_float(d), rank_biserial=rank_biserial,
                   direction="higher in target" if rank_biserial > 0 else "lower in target" if rank_biserial < 0
                   else "no change")
        rows.append(row)
        tested.append((row, d))
    p_values = [row["p_value"] for row, _ in tested]
    adjusted = p_values if correction == "none" else adjust_p_values(p_values, correction).tolist()
    for (row, _), p in zip(tested, adjusted):
        row["p_adjusted"] = float(p)
        row["significant"] = bool(p < alpha)
    tested.sort(key=lambda item: (-abs(item[0]["rank_biserial"]), -abs(item[1]), item[0]["p_value"]))
    ordered = _explain([row for row, _ in tested])
    for rank, row in enumerate(ordered, start=1):
        row["rank"] = rank
    return ordered + [row for row in rows if not row["testable"]]


# (cause, consequence, both lower / same direction, why): one acquisition change moves two properties; the
# consequence is kept and flagged, and ranked right after its cause, so "what changed" names the cause.
EXPLANATIONS = (
    ("sharpness", "noise", "lower", "a blur lowers the noise estimate too (it reads fine image detail as well as "
                                    "noise)"),
    ("contrast", "noise", "same", "noise is measured in intensity units, so it follows a contrast change"),
)


def _explain(ordered: list[dict]) -> list[dict]:
    """Set ``explained_by``/``explanation`` on rows that :data:`EXPLANATIONS` accounts for (both properties
    significant, in the stated directions) and move each just after its cause; other rows keep their order."""
    by_name = {row["property"]: row for row in ordered}
    for row in ordered:
        row.setdefault("explained_by", None)
        row.setdefault("explanation", None)
    for cause, consequence, relation, why in EXPLANATIONS:
        a, b = by_name.get(cause), by_name.get(consequence)
        if a is None or b is None or not (a["significant"] and b["significant"]) or b["explained_by"]:
            continue
        ra, rb = a["rank_biserial"], b["rank_biserial"]
        if (relation == "lower" and ra < 0 and rb < 0) or (relation == "same" and ra * rb > 0):
            b["explained_by"], b["explanation"] = cause, why
    result: list[dict] = []
    placed: set[str] = set()
    for row in ordered:
        if row["property"] in placed or (row["explained_by"] is not None and row["explained_by"] not in placed):
            continue  # already placed, or placed when its cause is
        followers = [r for r in ordered if r["explained_by"] == row["property"] and r["property"] not in placed]
        for item in [row] + followers:
            result.append(item)
            placed.add(item["property"])
    return result


def summary_line(rows: Sequence[Mapping[str, Any]], k: int = 2) -> str:
    """"images differ most in contrast (d = 1.4) and sharpness (d = -0.9)" from :func:`compare_properties` rows
    (the first ``k`` significant ones that no other change explains), or "no image property differs
    significantly"."""
    top = [row for row in rows if row.get("significant") and not row.get("explained_by")][:k]
    if not top:
        return "no image property differs significantly"
    parts = []
    for row in top:
        d = row.get("cohens_d")
        size = f"d = {d:.2g}" if d is not None else f"r = {row['rank_biserial']:.2f}"
        parts.append(f"{row['property'].replace('_', ' ')} ({size})")
    return "images differ most in " + (" and ".join(parts) if len(parts) < 3 else ", ".join(parts))


# -- thumbnails ----------------------------------------------------------------------------------------------------

def thumbnail_png(array: Any, size: int = 96) -> bytes:
    """A small PNG of a decoded image (grayscale or RGB), its longer side ``size`` pixels, intensities mapped to
    0..255 from the image's own 1st..99th percentiles (all channels together, so colour balance is kept).

    Only pixels are drawn: no text, no header field, no PNG text chunk (DICOM pixel data itself can hold
    burned-in text; the report says so). Downscaling is antialiased (Lanczos), upscaling a tiny image is nearest
    neighbour so its pixels stay visible as pixels."""
    from PIL import Image

    if size < 1:
        raise ValueError(f"size must be at least 1 (got {size})")
    a = _channels_last(array).astype(np.float32, copy=False)
    finite = _strided(a, GLOBAL_MAX_PIXELS)
    finite = finite[np.isfinite(finite)]
    low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 0.0)
    scaled = np.zeros(a.shape, dtype=np.float32) if not high > low else (a - low) * (255.0 / (high - low))
    pixels = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0).clip(0, 255).round().astype(np.uint8)
    image = Image.fromarray(pixels)  # uint8 H x W: "L", H x W x 3: "RGB"
    height, width = pixels.shape[:2]
    scale = size / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if new_size != (width, height):
        resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST
        image = image.resize(new_size, resample)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
