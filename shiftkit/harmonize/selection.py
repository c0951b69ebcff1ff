"""Choose a harmonizer by measurement on held-out images (``harmonize --method auto`` / ``--method a,b,c``; the
library call that ``diagnose`` and ``audit`` can reuse).

Both sets are split with a seeded, label-stratified split into a *fit* part and a *held-out* part
(``holdout``, half by default; ``--max-images`` caps each part). Every candidate is fitted on the reference's fit
part only and transforms the input's held-out part, written to a temporary folder exactly as ``harmonize`` writes
(rounded and clipped to the file type). The shift is then measured on images no candidate was fitted on: the
reference's held-out part against the input's held-out part before (embedded once for all candidates) and against
each candidate's output (each embedded once), with the registered harmonize tests (domain-classifier AUC with its
Hanley-McNeil interval, MMD² with its permutation p-value).

The decision rule (:func:`reduces_shift`): a candidate *reduces the shift* when the 95 % interval of its held-out
domain-classifier AUC lies wholly below the AUC before (so the drop is larger than the AUC's own noise) **and** its
MMD² is lower than before (the two tests agree). Candidates are ranked: those that reduce the shift and pass the
content guard first, then the others that pass the guard, then the disqualified and the failed; within a group by
the AUC after (an AUC below 0.5 counts as 0.5: chance is the floor), then by MMD² after. The chosen harmonizer is the
first when it reduces the shift, else none.

The content guard: a harmonizer must change intensities or colours, not replace the image. Per held-out input image,
the luminance of the input and of its output is block-averaged onto one grid of at most :data:`CONTENT_GRID` pixels
per axis, its *detail* kept (the grid minus its Gaussian blur, sigma :data:`DETAIL_SIGMA` grid pixels: texture,
edges, hairs; what identifies this image rather than images like it), and the Spearman correlation of the two details
is taken; a candidate whose median over the held-out images is below :data:`MIN_CONTENT_CORRELATION` is disqualified.
The detail, not the whole luminance, because images of one kind share their layout: two different synthetic blobs
correlate 0.7-0.9 in luminance but about 0 in detail. A rank correlation barely moves under a monotone intensity map
(histogram matching, Nyúl, gamma), so it measures whether the content survived, not how far the intensities moved.
On HAM10000 dermoscopy (vienna_dias fitted to rosendahl, rosendahl to vidir_modern, vidir_molemax to vidir_modern)
the shipped harmonizers give medians 0.84 (Macenko, made for H&E; histogram matching 0.87) to 1.00; two different
images about 0 (the largest of 40 pairs 0.21). A harmonizer that outputs stored reference images would look perfect on every shift
test, held-out or not (its outputs *are* reference images); only this guard excludes it.
"""

from __future__ import annotations

import inspect
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from shiftkit.data.table import LABEL_SEPARATOR, ImageTable, seeded_subset
from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.base import Harmonizer, kinds_of, make_harmonizer, methods, registered
from shiftkit.harmonize.measure import MIN_IMAGES, Embedder, MeasureSettings, check_settings, compare_embeddings
from shiftkit.harmonize.measure import harmonize_tests
from shiftkit.hooks import StageHook

AUTO = "auto"
REQUIRED_TESTS = ("domain_classifier", "mmd")  # what the decision rule reads
MIN_CONTENT_CORRELATION = 0.5  # median detail correlation of input and output below this: the content was replaced
CONTENT_GRID = 32  # luminance block-averaged to at most this many pixels per axis before correlating
DETAIL_SIGMA = 2.0  # the detail: the grid minus its Gaussian blur of this sigma (grid pixels)
EXAMPLES = 4  # held-out images shown before/after per candidate (report.html)
CONFIDENCE = 0.95
RULE = ("reduces the shift: the held-out domain-classifier AUC before has its 95% interval above 0.5, and the 95% interval of the held-out domain-classifier AUC after lies wholly below the AUC "
        "before, and MMD² after is below MMD² before; ranked by AUC after (floored at 0.5), then MMD² after; "
        f"disqualified when the median Spearman correlation of input and output luminance detail ({CONTENT_GRID} px "
        f"grid minus its blur) is below {MIN_CONTENT_CORRELATION}")


# ------------------------------------------------------------------------------------------------- candidates

@dataclass(frozen=True)
class Candidate:
    """One harmonizer to try: ``name`` as listed (``histmatch``, ``colour:shades_of_gray``), the ``method`` and
    ``options`` that ``make_harmonizer`` (and ``harmonize --method``) take to build it."""

    name: str
    method: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)

    def make(self) -> Harmonizer:
        return make_harmonizer(self.method, **self.options)


def is_selection(method: str | None) -> bool:
    """Whether ``--method`` asks for a choice by measurement: ``auto``, or a comma list of several candidates."""
    if method is None:
        return False
    names = [n.strip() for n in method.split(",") if n.strip()]
    return AUTO in names or len(names) > 1


def candidate_name(kind: str) -> str:
    """How a registered kind is listed: ``histmatch``, or ``colour:reinhard`` for a sub-method of a shared one."""
    cls = registered()[kind]
    return kind if cls.method == kind else f"{cls.method}:{kind}"


def all_candidate_names() -> tuple[str, ...]:
    """Every name ``--method a,b,c`` accepts (the registry's, so a newly registered harmonizer is one)."""
    return tuple(candidate_name(kind) for kind in registered())


def _kind_of(name: str) -> str:
    """The registered kind a listed name means: ``histmatch``, ``colour:macenko`` or ``macenko``, ``colour`` (its
    default sub-method); an unknown name is refused with the list."""
    method, _, sub = name.partition(":")
    known = registered()
    if sub:
        if method in methods() and sub in kinds_of(method) and kinds_of(method) != (method,):
            return sub
    elif name in known:
        return name
    elif name in methods():
        return kinds_of(name)[0]
    raise ConfigError(f"unknown harmonizer candidate '{name}' in --method (choose {AUTO}, or a comma list of: "
                      f"{', '.join(all_candidate_names())})")


def _accepted(cls: type[Harmonizer]) -> set[str]:
    return {name for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _candidate(kind: str, options: dict[str, Any], seed: int) -> Candidate:
    """The candidate for ``kind`` with the ``options`` its constructor takes (and ``seed`` when it uses one)."""
    cls = registered()[kind]
    own = {k: v for k, v in options.items() if k in _accepted(cls)}
    if cls.uses_seed(own):
        own["seed"] = seed
    if cls.method != kind:
        own[f"{cls.method}_method"] = kind
    return Candidate(candidate_name(kind), cls.method, kind, own)


def _probe(candidate: Candidate, images: Sequence[tuple[str, int, str]]) -> None:
    """Build ``candidate`` and let it refuse (ConfigError/DataError) the images' kind and channel count."""
    harmonizer = candidate.make()
    for stored, channels, name in images:
        harmonizer.check_input(stored, channels, name)


def resolve_candidates(spec: str | Sequence[str], options: dict[str, Any] | None = None, *, seed: int = 0,
                       images: Sequence[tuple[str, int, str]] = ()) -> tuple[list[Candidate], list[dict[str, str]]]:
    """The candidates ``spec`` names (``"auto"``, ``"histmatch,colour:macenko"`` or a list of names) and, for
    ``auto``, the registered harmonizers it left out with the reason.

    ``options`` (constructor names: ``foreground``, ``p``, ...) go to every candidate that takes them.
    ``images``: ``(stored kind, channels, name)`` of a first input and reference image. ``auto`` keeps every
    registered, non-geometric harmonizer whose ``auto_channels`` (when declared) holds the channel count and that
    accepts these images and options; a name listed explicitly that refuses them is an error, as ``--method`` is."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    shared = [f"{m}_method" for m in methods() if kinds_of(m) != (m,)]
    given_sub = [k for k in options if k in shared]
    if given_sub:
        raise ConfigError(f"--{given_sub[0].replace('_', '-')} does not apply to a list of candidates: name "
                          f"sub-methods in --method, e.g. {given_sub[0][:-7]}:{kinds_of(given_sub[0][:-7])[-1]}")
    listed = [spec] if isinstance(spec, str) else list(spec)
    names = [name.strip() for text in listed for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--method lists no candidate (choose {AUTO} or names such as histmatch,zscore)")
    kinds: list[str] = []
    explicit: set[str] = set()
    auto = AUTO in names
    for name in names:
        if name == AUTO:
            kinds.extend(k for k, cls in registered().items() if not cls.geometric)
        else:
            kind = _kind_of(name)
            kinds.append(kind)
            explicit.add(kind)
    channels = {c for _, c, _ in images}
    chosen, skipped = [], []
    for kind in dict.fromkeys(kinds):
        candidate = _candidate(kind, options, seed)
        declared = registered()[kind].auto_channels
        if kind not in explicit and declared is not None and not channels <= set(declared):
            skipped.append({"name": candidate.name, "reason": f"not tried on {'/'.join(map(str, sorted(channels)))}"
                            f"-channel images by --method auto (name it to try it)"})
            continue
        try:
            _probe(candidate, images)
        except (ConfigError, DataError) as exc:
            if kind in explicit:
                raise type(exc)(f"candidate {candidate.name}: {exc}") from None
            skipped.append({"name": candidate.name, "reason": str(exc)})
            continue
        chosen.append(candidate)
    if not chosen:
        raise ConfigError(f"--method {','.join(names)}: no registered harmonizer applies to these images "
                          f"({'; '.join(s['name'] + ': ' + s['reason'] for s in skipped) or 'none registered'})")
    used = set().union(*(_accepted(registered()[c.kind]) for c in chosen))
    unused = [k for k in options if k not in used]
    if unused:
        raise ConfigError(f"option '{unused[0]}' applies to none of the candidates "
                          f"({', '.join(c.name for c in chosen)})" + (" tried by auto" if auto else ""))
    return chosen, skipped


# -------------------------------------------------------------------------------------------------- the split

def holdout_split(table: ImageTable, holdout: float, seed: int, limit: int | None = None,
                  name: str = "input") -> tuple[ImageTable, ImageTable]:
    """``(fit part, held-out part)`` of ``table``: a seeded split stratified by labels (as ``--max-images``
    subsets), each part then capped at ``limit`` images. Refused when the held-out part would be too small for a
    shift test or the fit part empty."""
    n = len(table)
    held = min(n - 1, max(1, round(n * holdout)))
    if n < 2 or held < MIN_IMAGES:
        need = math.ceil(MIN_IMAGES / holdout) if holdout > 0 else MIN_IMAGES + 1
        raise DataError(f"{table.source or name}: the {name} has {n} image(s); choosing a harmonizer holds out "
                        f"{holdout:.0%} of them to measure on and a shift test needs {MIN_IMAGES}: give at least "
                        f"{max(need, MIN_IMAGES + 1)} images, or choose one --method")
    fit = seeded_subset(_strata(table), n - held, seed)
    fit_table, held_table = table.subset(fit), table.subset(sorted(set(range(n)) - set(fit)))
    if limit is not None:  # --max-images: the measured (and the fitted) part, seeded and stratified as well
        fit_table = fit_table.subset(seeded_subset(_strata(fit_table), limit, seed))
        held_table = held_table.subset(seeded_subset(_strata(held_table), limit, seed))
    return fit_table, held_table


def _strata(table: ImageTable) -> list[str]:
    return [LABEL_SEPARATOR.join(r.labels) for r in table.records]


# ------------------------------------------------------------------------------------------ the content guard

def _luminance(array: np.ndarray) -> np.ndarray:
    """Luminance of a channel-last image: Rec. 601 luma for RGB, the channel mean otherwise; 3-D volumes keep
    their three spatial axes."""
    array = np.asarray(array, dtype=np.float64)
    if array.shape[-1] == 3:
        return array @ np.array([0.299, 0.587, 0.114])
    return array.mean(axis=-1)


def _on_grid(luminance: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Block-average (a box filter of the reduction factor) and resample onto ``shape``; non-finite pixels take
    the finite median first."""
    from scipy import ndimage

    finite = np.isfinite(luminance)
    if not finite.all():
        luminance = np.where(finite, luminance, np.median(luminance[finite]) if finite.any() else 0.0)
    factors = [max(1, int(round(s / g))) for s, g in zip(luminance.shape, shape)]
    smoothed = ndimage.uniform_filter(luminance, size=factors, mode="nearest")
    return ndimage.zoom(smoothed, [g / s for g, s in zip(shape, luminance.shape)], order=1, grid_mode=True,
                        mode="nearest")


def _detail(grid: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return grid - ndimage.gaussian_filter(grid, DETAIL_SIGMA, mode="nearest")


def content_correlation(before: np.ndarray, after: np.ndarray, grid: int = CONTENT_GRID) -> float:
    """Spearman correlation between the luminance detail of an image and of its harmonized output (channel-last
    stored arrays, any size: both are block-averaged onto one grid of at most ``grid`` pixels per axis, then the
    grid's Gaussian blur is subtracted). About 1 for a monotone intensity or a colour map, about 0 for another image;
    NaN when either has no detail."""
    from scipy.stats import spearmanr

    a, b = _luminance(before), _luminance(after)
    if a.ndim != b.ndim:
        return float("nan")
    shape = tuple(max(1, min(grid, sa, sb)) for sa, sb in zip(a.shape, b.shape))
    x, y = _detail(_on_grid(a, shape)).ravel(), _detail(_on_grid(b, shape)).ravel()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


# ------------------------------------------------------------------------------------------------- the result

def auc_with_interval(result: dict[str, Any]) -> tuple[float, float, float]:
    """``(AUC, low, high)`` of a domain-classifier result dict: the Hanley-McNeil 95 % interval
    (:func:`shiftkit.shift.fingerprint.auc_interval`) for its balanced classes."""
    from shiftkit.shift.fingerprint import auc_interval

    auc = float(result["statistic"])
    per_class = max(1, int(result.get("details", {}).get("n_used", 2 * min(result["n_source"],
                                                                              result["n_target"]))) // 2)
    low, high = auc_interval(auc, per_class, per_class, CONFIDENCE)
    return auc, float(low), float(high)


def reduces_shift(before: dict[str, dict], after: dict[str, dict]) -> bool:
    """The decision rule: there is a shift to reduce (the before AUC's 95 % interval lies above chance), the after
    AUC's 95 % interval lies wholly below the before AUC, and MMD² fell. Without the first condition a domain with
    no measurable shift could "reduce" it by a chance dip of the after AUC below 0.5: seen in an audit, where
    z-scoring a site that matched its twin toward a pooled reference holding an outlier created a shift to the twin."""
    auc_before, low_before, _ = auc_with_interval(before["domain_classifier"])
    _, _, high_after = auc_with_interval(after["domain_classifier"])
    return (low_before > 0.5 and high_after < auc_before
            and after["mmd"]["statistic"] < before["mmd"]["statistic"])


@dataclass
class CandidateResult:
    candidate: Candidate
    params: dict[str, Any] | None = None
    after: dict[str, dict] | None = None  # {test: result dict} on the held-out images
    correlation: float | None = None  # median content correlation
    reduces: bool = False
    disqualified: str | None = None
    error: str | None = None
    rank: int = 0
    seconds: float = 0.0
    examples: list[tuple[str, bytes]] = field(default_factory=list)  # (image name, before|after PNG): HTML only

    @property
    def eligible(self) -> bool:
        return self.error is None and self.disqualified is None

    def sort_key(self) -> tuple:
        group = 3 if self.error else 2 if self.disqualified else 0 if self.reduces else 1
        if self.after is None:
            return (group, math.inf, math.inf)
        return (group, max(float(self.after["domain_classifier"]["statistic"]), 0.5),
                float(self.after["mmd"]["statistic"]))

    def to_dict(self, before: dict[str, dict]) -> dict[str, Any]:
        row: dict[str, Any] = {"name": self.candidate.name, "method": self.candidate.method,
                               "kind": self.candidate.kind, "params": self.params, "rank": self.rank}
        auc_b, lo_b, hi_b = auc_with_interval(before["domain_classifier"])
        row.update({"auc_before": auc_b, "auc_before_ci": [lo_b, hi_b],
                    "mmd_before": before["mmd"]["statistic"], "mmd_before_p": before["mmd"]["p_value"]})
        if self.after is not None:
            auc_a, lo_a, hi_a = auc_with_interval(self.after["domain_classifier"])
            row.update({"auc_after": auc_a, "auc_after_ci": [lo_a, hi_a],
                        "mmd_after": self.after["mmd"]["statistic"], "mmd_after_p": self.after["mmd"]["p_value"]})
        else:
            row.update({"auc_after": None, "auc_after_ci": None, "mmd_after": None, "mmd_after_p": None})
        row.update({"reduces": self.reduces, "content_correlation": self.correlation,
                    "disqualified": self.disqualified, "error": self.error, "seconds": round(self.seconds, 2),
                    "after": self.after})
        return row


@dataclass
class Selection:
    """The comparison: the shift before, every candidate's after (ranked), the choice (``chosen``: the first
    when it reduces the shift, else None) and ``best`` (the first that was measured and passed the content guard,
    what ``--force`` writes)."""

    spec: str
    before: dict[str, dict]
    results: list[CandidateResult]
    skipped: list[dict[str, str]]
    split: dict[str, Any]
    measure: dict[str, Any]
    holdout: float
    min_correlation: float | None

    @property
    def chosen(self) -> Candidate | None:
        first = self.results[0] if self.results else None
        return first.candidate if first is not None and first.eligible and first.reduces else None

    @property
    def best(self) -> Candidate | None:
        first = self.results[0] if self.results else None
        return first.candidate if first is not None and first.eligible else None

    def result(self, name: str) -> CandidateResult:
        return next(r for r in self.results if r.candidate.name == name)

    @property
    def examples(self) -> list[tuple[str, bytes]]:
        """Before|after thumbnails of the chosen (else best-ranked) candidate's held-out outputs."""
        return self.results[0].examples if self.results else []

    @property
    def verdict(self) -> str:
        auc, low, high = auc_with_interval(self.before["domain_classifier"])
        before = f"held-out domain AUC {auc:.3f} ({low:.3f}–{high:.3f}), MMD² {self.before['mmd']['statistic']:.4g}"
        reducing = sum(1 for r in self.results if r.reduces and r.eligible)
        chosen = self.chosen
        if chosen is not None:
            after = self.results[0].after
            a_auc, a_low, a_high = auc_with_interval(after["domain_classifier"])
            return (f"chose {chosen.name}: {before} → AUC {a_auc:.3f} ({a_low:.3f}–{a_high:.3f}), MMD² "
                    f"{after['mmd']['statistic']:.4g} ({reducing} of {len(self.results)} candidates reduced "
                    "the shift)")
        if low <= 0.5:
            why = f"{before}: no shift to reduce (the AUC's interval reaches chance)"
        else:
            measured = [r for r in self.results if r.after is not None]
            best = self.results[0] if self.results and self.results[0].after is not None else None
            if best is None and measured:
                best = measured[0]
            why = before
            if best is not None:
                b_auc, b_low, b_high = auc_with_interval(best.after["domain_classifier"])
                why += (f"; best after: {best.candidate.name} AUC {b_auc:.3f} ({b_low:.3f}–{b_high:.3f}), MMD² "
                        f"{best.after['mmd']['statistic']:.4g}")
                if best.disqualified:
                    why += f" (disqualified: {best.disqualified})"
        guarded = [r.candidate.name for r in self.results if r.reduces and r.disqualified]
        if guarded:
            why += f"; {', '.join(guarded)} lowered the shift but replaced the images' content (disqualified)"
        return f"no harmonizer reduced the shift: {why}"

    def to_dict(self) -> dict[str, Any]:
        auc, low, high = auc_with_interval(self.before["domain_classifier"])
        return {
            "spec": self.spec, "rule": RULE, "holdout": self.holdout, "split": self.split,
            "content_guard": {"min_correlation": self.min_correlation, "grid": CONTENT_GRID,
                              "detail_sigma": DETAIL_SIGMA,
                              "statistic": "median over held-out input images of the Spearman correlation of "
                                           "input and output luminance detail (block-averaged grid minus its "
                                           "Gaussian blur)"},
            "before": {"auc": auc, "auc_ci": [low, high], "mmd": self.before["mmd"]["statistic"],
                       "mmd_p": self.before["mmd"]["p_value"], "tests": self.before},
            "candidates": [r.to_dict(self.before) for r in self.results],
            "skipped": self.skipped,
            "chosen": self.chosen.name if self.chosen else None,
            "best": self.best.name if self.best else None,
            "verdict": self.verdict,
            "measure": self.measure,
        }


# ----------------------------------------------------------------------------------------------- the selection

def _first_image(table: ImageTable, name: str) -> tuple[str, int, str]:
    from shiftkit.harmonize.raw import read_raw

    if len(table) == 0:
        raise DataError(f"{table.source or name}: the {name} has no images")
    raw = read_raw(table.records[0])
    return raw.kind, int(raw.array.shape[-1]), table.records[0].path.name


def _pair_png(before: np.ndarray, after: np.ndarray) -> bytes | None:
    """One thumbnail of an image and its output side by side, on one intensity scale (so the change shows)."""
    from shiftkit.shift.image_properties import thumbnail_png

    if before.ndim == 4:  # a volume: its middle axial slice
        before, after = before[before.shape[0] // 2], after[after.shape[0] // 2]
    if before.shape != after.shape or before.shape[-1] not in (1, 3):
        return None
    gap = np.full((before.shape[0], max(2, before.shape[1] // 16), before.shape[2]), np.nan)
    joined = np.concatenate([before, gap, after], axis=1)
    return thumbnail_png(joined[..., 0] if joined.shape[-1] == 1 else joined, size=192)


def _try(candidate: Candidate, reference_fit: ImageTable, input_held: ImageTable, folder: Path,
         embedder: Embedder, reference_embedding: np.ndarray, before: dict[str, dict],
         settings: MeasureSettings, tests: tuple[str, ...], min_correlation: float | None,
         stage: StageHook) -> CandidateResult:
    """Fit one candidate on the reference's fit part, write its held-out outputs under ``folder``, check the
    content and measure the shift to the reference's held-out part."""
    from shiftkit.harmonize.apply import fit_harmonizer, harmonize_table
    from shiftkit.harmonize.raw import read_raw

    started = time.perf_counter()
    result = CandidateResult(candidate)
    try:
        harmonizer = candidate.make()
        result.params = harmonizer.params()
        total = len(reference_fit) if harmonizer.reads_reference else 0
        fit_harmonizer(harmonizer, reference_fit, stage(f"{candidate.name}: fitting on the reference's fit part",
                                                        total))
        outputs, _ = harmonize_table(input_held, reference_fit, candidate.method, folder, harmonizer=harmonizer,
                                     on_image=stage(f"{candidate.name}: harmonizing held-out input",
                                                    len(input_held)))
    except (ConfigError, DataError) as exc:
        result.error = str(exc)
        result.seconds = time.perf_counter() - started
        return result
    correlations = []
    for index, (source, output) in enumerate(zip(input_held.records, outputs.records)):
        a, b = read_raw(source).array, read_raw(output).array
        correlations.append(content_correlation(a, b))
        if index < EXAMPLES:
            png = _pair_png(a, b)
            if png is not None:
                result.examples.append((source.path.name, png))
    finite = [c for c in correlations if np.isfinite(c)]
    result.correlation = float(np.median(finite)) if finite else None
    if min_correlation is not None and result.correlation is not None and result.correlation < min_correlation:
        result.disqualified = (f"content replaced: median correlation of input and output detail "
                               f"{result.correlation:.2f} < {min_correlation}")
    embedding = embedder.embed(outputs, f"{candidate.name} output", stage)
    result.after = compare_embeddings(reference_embedding, embedding, settings, tests)
    result.reduces = reduces_shift(before, result.after)
    result.seconds = time.perf_counter() - started
    return result


def select_harmonizer(input_table: ImageTable, reference_table: ImageTable,
                      candidates: str | Sequence[str | Candidate], settings: MeasureSettings,
                      holdout: float = 0.5, on_stage: StageHook | None = None, *,
                      options: dict[str, Any] | None = None,
                      min_correlation: float | None = MIN_CONTENT_CORRELATION) -> Selection:
    """Try each candidate on held-out images and rank them (the module docstring has the rule).

    ``candidates``: ``"auto"``, a comma list, or a list of names / :class:`Candidate`. ``options``: constructor
    options given to the named candidates that take them. ``settings``: the embedding and tests (as ``harmonize``'s
    before/after measurement); ``max_images`` caps each part of the split. ``holdout``: the fraction of each set
    measured on (0 < holdout < 1). ``min_correlation``: the content guard (None turns it off). Nothing is written
    outside a temporary folder."""
    if not 0 < holdout < 1:
        raise ConfigError(f"holdout {holdout} must lie strictly between 0 and 1")
    check_settings(settings)
    tests = harmonize_tests(settings)
    missing = [t for t in REQUIRED_TESTS if t not in tests]
    if missing:
        raise ConfigError(f"choosing a harmonizer ranks by {' and '.join(REQUIRED_TESTS)}; the tests "
                          f"{', '.join(tests)} leave out {missing[0]}")
    images = [_first_image(input_table, "input"), _first_image(reference_table, "reference")]
    named = [c for c in ([candidates] if isinstance(candidates, str) else candidates)]
    given = [c for c in named if isinstance(c, Candidate)]
    texts = [c for c in named if not isinstance(c, Candidate)]
    skipped: list[dict[str, str]] = []
    chosen = list(given)
    if texts:
        resolved, skipped = resolve_candidates(texts, options, seed=settings.seed, images=images)
        chosen += [c for c in resolved if c.name not in {g.name for g in given}]
    spec = ",".join(c if isinstance(c, str) else c.name for c in named)
    started = time.perf_counter()
    reference_fit, reference_held = holdout_split(reference_table, holdout, settings.seed,
                                                  settings.max_images, "reference")
    input_fit, input_held = holdout_split(input_table, holdout, settings.seed + 1, settings.max_images, "input")
    stage = on_stage or (lambda description, total: (lambda: None))
    embedder = Embedder(settings)
    reference_embedding = embedder.embed(reference_held, "reference (held out)", on_stage)
    before = compare_embeddings(reference_embedding, embedder.embed(input_held, "input before (held out)",
                                                                    on_stage), settings, tests)
    results = []
    for candidate in chosen:  # each candidate's held-out outputs are deleted once measured
        with tempfile.TemporaryDirectory(prefix="shiftkit-select-") as temporary:
            results.append(_try(candidate, reference_fit, input_held, Path(temporary), embedder,
                                reference_embedding, before, settings, tests, min_correlation, stage))
    results.sort(key=CandidateResult.sort_key)
    for rank, result in enumerate(results, 1):
        result.rank = rank
    split = {"seed": settings.seed,
             "reference": {"fit": len(reference_fit), "held_out": len(reference_held)},
             "input": {"fit": len(input_fit), "held_out": len(input_held),
                       "note": "the input's fit part is not used: the registered harmonizers fit on the reference "
                               "only"}}
    measure = {"arch": embedder.adapted.arch, "weights": embedder.adapted.weights, "image_size": settings.image_size,
               "max_images": settings.max_images, "permutations": settings.permutations, "pca": settings.pca,
               "tests": list(tests), "seconds": round(time.perf_counter() - started, 2)}
    return Selection(spec=spec, before=before, results=results, skipped=skipped, split=split, measure=measure,
                     holdout=holdout, min_correlation=min_correlation)


def candidate_of(name: str, options: Optional[dict[str, Any]] = None, seed: int = 0) -> Candidate:
    """The :class:`Candidate` a listed name means (``"colour:macenko"``), with the ``options`` it takes."""
    return _candidate(_kind_of(name), options or {}, seed)


__all__ = ["AUTO", "CONTENT_GRID", "Candidate", "CandidateResult", "MIN_CONTENT_CORRELATION", "RULE", "Selection",
           "all_candidate_names", "auc_with_interval", "candidate_name", "candidate_of", "content_correlation",
           "holdout_split", "is_selection", "reduces_shift", "resolve_candidates",
           "select_harmonizer"]
