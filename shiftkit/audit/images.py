"""``audit`` for images: every site against every other from one embedding pass (the CLI is a thin layer over
:func:`run_audit`).

Steps: read the manifest (named site and label columns, extra columns kept), subsample each site (stratified by
label, seeded) when ``max_images_per_site`` is set, embed every image **once** (``shiftkit.features.extract``,
cached by content under ``cache_dir``), fit **one** PCA on the pooled embeddings, then slice per site for the
pairwise and leave-one-site-out covariate tests (:mod:`shiftkit.audit.matrix`), the label shift per site and pair
(:mod:`shiftkit.audit.priors`) and the acquisition metadata (:mod:`shiftkit.audit.site_metadata`). With
``harmonize``, every site's images are harmonized toward a reference (all sites pooled, or ``reference_site``) by
``shiftkit.harmonize.apply.harmonize_table``, embedded again and the matrix recomputed. With ``harmonize="auto"``
(or a comma list of candidates) each site's harmonizer is chosen on held-out images instead
(:mod:`shiftkit.audit.harmonize_auto`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shiftkit import __version__
from shiftkit.shift.corrections import CORRECTIONS
from shiftkit.audit.manifest import AuditTable, read_audit_manifest
from shiftkit.audit.matrix import MIN_PER_SITE, ShiftMatrix, shift_matrix
from shiftkit.data.preprocess import check_image_size
from shiftkit.data.readers import ReadOptions
from shiftkit.errors import ConfigError, DataError
from shiftkit.hooks import StageHook, StepHook

MIN_IMAGES_PER_SITE = 10


@dataclass
class AuditRequest:
    manifest: Path
    site_column: str = "site"
    label_column: str | None = None
    arch: str = "efficientnet_lite0"
    weights: str = "imagenet"
    image_size: int | None = None
    batch_size: int = 128
    device: str = "auto"
    cache_dir: Path | None = None
    read_options: ReadOptions = field(default_factory=ReadOptions)
    max_images_per_site: int | None = None
    min_images_per_site: int = MIN_IMAGES_PER_SITE
    pca: int = 32
    classifier_pca: int = 0  # 0: the domain classifier sees the full embedding; N: the first N components
    permutations: int = 1000
    ot_permutations: int = 200
    bootstrap: int = 100
    correction: str = "bh"
    alpha: float = 0.05
    leave_one_out: bool = True
    harmonize: str | None = None
    reference_site: str | None = None
    harmonized_dir: Path | None = None  # where harmonized images are written (default: a temporary folder)
    select_max_images: int = 100  # --harmonize auto / a,b,c: images per part of each side's held-out split
    select_permutations: int = 200  # --harmonize auto / a,b,c: MMD permutations when choosing (<= permutations)
    metadata_images: int = 200
    fingerprint: bool = False  # per-block shift and image properties per site pair, from the same pass
    seed: int = 0


@dataclass(frozen=True)
class HarmonizedAudit:
    method: str
    reference: str
    matrix: ShiftMatrix
    coordinates: np.ndarray  # 2-D PCA of the harmonized embeddings, for the plot
    images_dir: str
    selection: dict | None = None  # --harmonize auto: {site: choice} (shiftkit.audit.harmonize_auto.site_summary)
    selection_settings: dict | None = None  # --harmonize auto: how the choice was made


@dataclass(frozen=True)
class ImageAudit:
    """Everything the report needs: the audited rows, their 2-D coordinates, the matrix and the extras."""

    data: AuditTable
    coordinates: np.ndarray  # n x 2, the first two components of the pooled PCA
    explained_variance: list[float]
    matrix: ShiftMatrix
    labels: dict | None
    metadata: dict
    harmonized: HarmonizedAudit | None
    settings: dict
    fingerprint: dict | None = None  # shiftkit.audit.fingerprint.pair_fingerprints, with --fingerprint


    def to_dict(self) -> dict[str, Any]:
        out = {"kind": "images", "manifest": str(self.data.table.source), **self.matrix.to_dict(),
               "label_shift": self.labels, "metadata": self.metadata}
        out["settings"] = {**self.matrix.settings, **self.settings}
        if self.fingerprint is not None:
            out["fingerprint"] = self.fingerprint
        if self.harmonized is not None:
            h = self.harmonized
            out["harmonized"] = {"method": h.method, "reference": h.reference, "images_dir": h.images_dir,
                                 **h.matrix.to_dict()}
            if h.selection is not None:
                out["harmonized"].update(selection=h.selection, selection_settings=h.selection_settings)
        return out


def check_request(request: AuditRequest) -> None:
    if request.correction not in CORRECTIONS:
        raise ConfigError(f"--correction '{request.correction}' (choose from {', '.join(CORRECTIONS)})")
    if not 0 < request.alpha < 1:
        raise ConfigError(f"--alpha must be in (0, 1), got {request.alpha}")
    if request.min_images_per_site < MIN_PER_SITE:
        raise ConfigError(f"--min-images-per-site must be at least {MIN_PER_SITE}")
    if request.max_images_per_site is not None and request.max_images_per_site < request.min_images_per_site:
        raise ConfigError(f"--max-images-per-site ({request.max_images_per_site}) is below --min-images-per-site "
                          f"({request.min_images_per_site})")
    if request.permutations < 1 or request.ot_permutations < 1 or request.bootstrap < 1:
        raise ConfigError("--permutations, --ot-permutations and --bootstrap must be at least 1")
    if request.pca < 0 or request.classifier_pca < 0 or request.batch_size < 1:
        raise ConfigError("--pca and --classifier-pca must be 0 or more and --batch-size at least 1")
    check_image_size(request.image_size)
    if request.harmonize is not None:
        from shiftkit.harmonize.base import methods  # the harmonizer registry: every --method harmonize takes
        from shiftkit.harmonize.selection import is_selection

        if is_selection(request.harmonize):  # auto, or a list: chosen per site (shiftkit.audit.harmonize_auto)
            from shiftkit.audit.harmonize_auto import check_spec

            check_spec(request.harmonize)
            if request.select_max_images < 4 or request.select_permutations < 1:
                raise ConfigError("--harmonize auto needs select_max_images >= 4 and select_permutations >= 1")
        elif request.harmonize not in methods():
            raise ConfigError(f"--harmonize '{request.harmonize}' (choose from {', '.join(methods())})")
    if request.reference_site is not None and request.harmonize is None:
        raise ConfigError("--reference-site only applies with --harmonize METHOD")


def subsample_sites(data: AuditTable, limit: int | None, seed: int) -> AuditTable:
    """At most ``limit`` images per site: a seeded subset stratified by label (classes seen once: at random)."""
    if limit is None:
        return data
    from shiftkit.data.table import seeded_subset

    keep: list[int] = []
    for k, site in enumerate(data.site_names):
        idx = np.flatnonzero(data.sites == site)
        keep.extend(idx[seeded_subset(["|".join(data.table.records[i].labels) for i in idx], limit, seed + k)])
    return data.subset(sorted(int(i) for i in keep))


def load(request: AuditRequest) -> AuditTable:
    """Read, check site sizes, subsample."""
    data = read_audit_manifest(request.manifest, request.site_column, request.label_column)
    names, counts = np.unique(data.sites, return_counts=True)
    if len(names) < 2:
        raise DataError(f"{request.manifest}: column '{request.site_column}' holds a single site ('{names[0]}'); "
                        "an audit compares two or more")
    small = [(s, c) for s, c in zip(names, counts) if c < request.min_images_per_site]
    if small:
        raise DataError(f"{request.manifest}: site '{small[0][0]}' has {small[0][1]} image(s); each site needs at "
                        f"least {request.min_images_per_site} (--min-images-per-site)")
    if request.reference_site is not None and request.reference_site not in set(names):
        raise ConfigError(f"--reference-site '{request.reference_site}' is not a site ({', '.join(names)})")
    return subsample_sites(data, request.max_images_per_site, request.seed)


def _embed(request: AuditRequest, table, device, on_stage, blocks: bool = False):
    """One forward pass over ``table``: a :class:`shiftkit.features.Representation` (with block descriptors and
    image properties when ``blocks``)."""
    from shiftkit.features import extract
    from shiftkit.models.registry import build_model

    adapted = build_model(request.arch, 1, request.weights, request.image_size)
    tick = on_stage("embedding", -(-len(table) // request.batch_size)) if on_stage else None
    return extract(table, adapted, device, batch_size=request.batch_size, read_options=request.read_options,
                   cache_dir=request.cache_dir, on_batch=tick, blocks=blocks)


def _reduce(embeddings: np.ndarray, request: AuditRequest) -> tuple[np.ndarray, np.ndarray | None, np.ndarray,
                                                                      list[float]]:
    """One PCA on the pooled embeddings: its first ``pca`` components feed MMD and OT, its first
    ``classifier_pca`` the domain classifier (when set), its first two the plot."""
    from shiftkit.features import fit_pca

    components = max(request.pca, request.classifier_pca, 2)
    pca = fit_pca(embeddings, components, request.seed)
    projected = pca.transform(embeddings)
    reduced = projected[:, : request.pca] if request.pca else embeddings
    classifier = projected[:, : request.classifier_pca] if request.classifier_pca else None
    return reduced, classifier, projected[:, :2], [float(v) for v in pca.explained_variance_ratio_[:2]]


def _matrix(request: AuditRequest, embeddings: np.ndarray, reduced: np.ndarray, classifier: np.ndarray | None,
            sites: np.ndarray, on_step) -> ShiftMatrix:
    return shift_matrix(embeddings, sites, reduced=reduced, classifier_inputs=classifier,
                        permutations=request.permutations, ot_permutations=request.ot_permutations,
                        correction=request.correction, alpha=request.alpha, leave_one_out=request.leave_one_out,
                        seed=request.seed, device=request.device, on_step=on_step)


def _harmonize(request: AuditRequest, data: AuditTable, device, on_stage, on_step) -> HarmonizedAudit:
    try:
        from shiftkit.harmonize.apply import harmonize_table
    except ImportError as exc:
        raise ConfigError(f"--harmonize needs shiftkit.harmonize.apply, which is not available ({exc})") from None
    import tempfile

    from shiftkit.harmonize.selection import is_selection

    if is_selection(request.harmonize):
        return _harmonize_per_site(request, data, device, on_stage, on_step)
    if request.reference_site is not None:
        reference = data.table.subset(np.flatnonzero(data.sites == request.reference_site).tolist())
        reference_name = request.reference_site
    else:
        reference, reference_name = data.table, "all sites pooled"
    out_dir = request.harmonized_dir or Path(tempfile.mkdtemp(prefix="shiftkit-audit-harmonized-"))
    tick = (on_stage(f"harmonizing ({request.harmonize}) toward {reference_name}", len(reference) + len(data.table))
            if on_stage else None)
    harmonized, _ = harmonize_table(data.table, reference, request.harmonize, out_dir, on_image=tick)
    if len(harmonized) != len(data.table):
        raise DataError(f"harmonization returned {len(harmonized)} images for {len(data.table)}")
    embeddings = _embed(request, harmonized, device, on_stage).embeddings.astype(np.float64)
    reduced, classifier, coordinates, _ = _reduce(embeddings, request)
    matrix = _matrix(request, embeddings, reduced, classifier, data.sites, on_step)
    return HarmonizedAudit(request.harmonize, reference_name, matrix, coordinates, str(out_dir))


def _harmonize_per_site(request: AuditRequest, data: AuditTable, device, on_stage, on_step) -> HarmonizedAudit:
    """``--harmonize auto`` / ``a,b,c``: each site's harmonizer chosen on held-out images and applied
    (:mod:`shiftkit.audit.harmonize_auto`), then the matrix recomputed as for one method."""
    import tempfile

    from shiftkit.audit.harmonize_auto import POOLED, harmonize_sites
    from shiftkit.harmonize.measure import MeasureSettings

    settings = MeasureSettings(arch=request.arch, weights=request.weights, image_size=request.image_size,
                               max_images=request.select_max_images,
                               permutations=min(request.permutations, request.select_permutations), pca=request.pca,
                               seed=request.seed, device=request.device, batch_size=request.batch_size,
                               cache_dir=request.cache_dir, read_options=request.read_options)
    out_dir = request.harmonized_dir or Path(tempfile.mkdtemp(prefix="shiftkit-audit-harmonized-"))
    table, selection, choice = harmonize_sites(data, request.harmonize, settings, out_dir, request.reference_site,
                                               on_stage=on_stage)
    embeddings = _embed(request, table, device, on_stage).embeddings.astype(np.float64)
    reduced, classifier, coordinates, _ = _reduce(embeddings, request)
    matrix = _matrix(request, embeddings, reduced, classifier, data.sites, on_step)
    return HarmonizedAudit("auto", request.reference_site or POOLED, matrix, coordinates, str(out_dir),
                           selection, choice)


def run_audit(request: AuditRequest, on_stage: StageHook | None = None,
              on_step: StepHook | None = None) -> ImageAudit:
    """The whole image audit; ``on_stage`` gets (description, total) and returns a tick, ``on_step`` a description."""
    from shiftkit.audit.priors import label_shift
    from shiftkit.audit.site_metadata import column_metadata, header_metadata
    from shiftkit.finetune.trainer import resolve_device

    check_request(request)
    device = resolve_device(request.device)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    data = load(request)
    timings["load"] = time.perf_counter() - started

    mark = time.perf_counter()
    representation = _embed(request, data.table, device, on_stage, blocks=request.fingerprint)
    embeddings = representation.embeddings.astype(np.float64)
    timings["embed"] = time.perf_counter() - mark

    mark = time.perf_counter()
    reduced, classifier, coordinates, explained = _reduce(embeddings, request)
    matrix = _matrix(request, embeddings, reduced, classifier, data.sites, on_step)
    timings["matrix"] = time.perf_counter() - mark

    mark = time.perf_counter()
    labels = None
    if data.label_column is not None:
        if data.table.multilabel:
            labels = {"not_measured": "class priors need single-label rows"}
        else:
            per_row = np.asarray([r.labels[0] for r in data.table.records])
            labels = label_shift(per_row, data.sites, matrix.sites, list(data.table.classes), reduced,
                                 correction=request.correction, alpha=request.alpha, bootstrap=request.bootstrap,
                                 seed=request.seed, on_step=on_step)
    timings["label_shift"] = time.perf_counter() - mark

    mark = time.perf_counter()
    if on_step:
        on_step("acquisition metadata")
    metadata = {"headers": header_metadata(data.table, data.sites, matrix.sites, request.metadata_images,
                                           request.seed),
                "columns": column_metadata(data.extra, data.sites, matrix.sites)}
    timings["metadata"] = time.perf_counter() - mark

    fingerprint = None
    if request.fingerprint:
        from shiftkit.audit.fingerprint import pair_fingerprints

        mark = time.perf_counter()
        fingerprint = pair_fingerprints(representation.blocks, representation.properties, data.sites, matrix.sites,
                                        permutations=request.permutations, correction=request.correction,
                                        alpha=request.alpha, seed=request.seed, on_step=on_step)
        timings["fingerprint"] = time.perf_counter() - mark

    harmonized = None
    if request.harmonize is not None:
        mark = time.perf_counter()
        harmonized = _harmonize(request, data, device, on_stage, on_step)
        timings["harmonize"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    settings = {
        "manifest": str(request.manifest), "site_column": request.site_column, "label_column": request.label_column,
        "arch": request.arch, "weights": request.weights, "image_size": request.image_size,
        "device": str(device), "cache_dir": str(request.cache_dir) if request.cache_dir else None,
        "max_images_per_site": request.max_images_per_site, "min_images_per_site": request.min_images_per_site,
        "bootstrap": request.bootstrap, "pca_explained_variance_2d": explained,
        "harmonize": request.harmonize, "reference_site": request.reference_site,
        "fingerprint": request.fingerprint, "seconds": {k: round(v, 2) for k, v in timings.items()}, "shiftkit": __version__,
    }
    return ImageAudit(data, coordinates, explained, matrix, labels, metadata, harmonized, settings, fingerprint)
