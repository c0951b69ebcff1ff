"""The shift to the reference before and after harmonization: the same embedding and covariate tests as
``diagnose`` (tests from :mod:`shiftkit.shift.registry`), on a seeded subset of each side."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shiftkit.data.preprocess import check_image_size
from shiftkit.data.readers import ReadOptions
from shiftkit.data.table import ImageTable, subsample_table
from shiftkit.errors import ConfigError, DataError
from shiftkit.shift import registry

MIN_IMAGES = 4  # per domain for the before/after shift tests, as diagnose


@dataclass
class MeasureSettings:
    """How the shift to the reference is measured (the diagnose module's embedding and tests)."""

    arch: str = "efficientnet_lite0"
    weights: str = "imagenet"
    image_size: int | None = None
    max_images: int | None = None
    permutations: int = 1000
    pca: int = 32
    seed: int = 0
    device: str = "auto"
    batch_size: int = 128
    cache_dir: Path | None = None
    read_options: ReadOptions = field(default_factory=ReadOptions)
    tests: tuple[str, ...] | None = None  # registered covariate tests; None: those registered for "harmonize"


def check_settings(settings: MeasureSettings) -> None:
    """Refuse bad measurement options before any image is written."""
    if settings.max_images is not None and settings.max_images < MIN_IMAGES:
        raise ConfigError(f"--max-images must be at least {MIN_IMAGES}")
    if settings.permutations < 1 or settings.batch_size < 1 or settings.pca < 0:
        raise ConfigError("--permutations and --batch-size must be at least 1 and --pca 0 or more")
    check_image_size(settings.image_size)
    if settings.tests is not None:
        registry.check_names(settings.tests, noun="test")


def harmonize_tests(settings: MeasureSettings) -> tuple[str, ...]:
    """The covariate tests harmonize runs: ``settings.tests``, or those registered for "harmonize"."""
    return registry.default_tests("harmonize") if settings.tests is None else tuple(settings.tests)


class Embedder:
    """The network that embeds images for the shift tests, built once and reused for every table measured (the
    reference once, the input once, each harmonized output once), with the disk cache when ``cache_dir`` is set."""

    def __init__(self, settings: MeasureSettings) -> None:
        from shiftkit.finetune.trainer import resolve_device
        from shiftkit.models.registry import build_model

        self.settings = settings
        self.device = resolve_device(settings.device)
        self.adapted = build_model(settings.arch, 1, settings.weights, settings.image_size)

    def embed(self, table: ImageTable, name: str,
              on_stage: Callable[[str, int], Callable[[], None]] | None = None) -> np.ndarray:
        """The embeddings (images x features) of every image of ``table``; ``name`` labels the progress bar."""
        from shiftkit.features import extract

        settings = self.settings
        tick = on_stage(f"embedding {name}", -(-len(table) // settings.batch_size)) if on_stage else None
        return extract(table, self.adapted, self.device, batch_size=settings.batch_size,
                       read_options=settings.read_options, cache_dir=settings.cache_dir, on_batch=tick).embeddings


def compare_embeddings(reference: np.ndarray, other: np.ndarray, settings: MeasureSettings,
                       tests: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
    """``{test: result dict}``: the covariate tests between two embedded sets, MMD-type tests on ``pca``
    components fitted on the pooled pair (as ``diagnose``), the domain classifier on the full embedding."""
    from shiftkit.features import fit_pca

    tests = harmonize_tests(settings) if tests is None else tests
    test_settings = registry.TestSettings(seed=settings.seed, permutations=settings.permutations,
                                          device=settings.device)
    pca = fit_pca(np.vstack([reference, other]), settings.pca, settings.seed) if settings.pca else None
    ref_low, tgt_low = (pca.transform(reference), pca.transform(other)) if pca else (reference, other)
    inputs = registry.TestInputs(reduced=(ref_low, tgt_low), full=(reference, other))
    return {test: r.to_dict() for test, r in registry.run_tests(tests, inputs, test_settings).items()}


def measure_shift(reference: ImageTable, before: ImageTable, after: ImageTable, settings: MeasureSettings,
                  on_stage: Callable[[str, int], Callable[[], None]] | None = None) -> dict[str, Any]:
    """The covariate tests (default MMD on ``pca`` components fitted on each pooled pair, as ``diagnose``, and the
    domain classifier on the full embedding) between ``reference`` and ``before``, and between ``reference`` and
    ``after``. ``before`` and ``after`` must list the same images in the same order: the same subset of both is
    measured."""
    if len(before) != len(after):
        raise DataError("before and after tables differ in length")
    check_settings(settings)
    tests = harmonize_tests(settings)
    reference = subsample_table(reference, settings.max_images, settings.seed)
    before = subsample_table(before, settings.max_images, settings.seed + 1)
    after = subsample_table(after, settings.max_images, settings.seed + 1)
    for name, table in (("reference", reference), ("input", before)):
        if len(table) < MIN_IMAGES:
            raise DataError(f"{table.source}: the {name} has {len(table)} image(s); a shift test needs at least "
                            f"{MIN_IMAGES}")
    embedder = Embedder(settings)
    started = time.perf_counter()
    embeddings = {name: embedder.embed(table, name, on_stage)
                  for name, table in (("reference", reference), ("before", before), ("after", after))}
    result: dict[str, Any] = {name: compare_embeddings(embeddings["reference"], embeddings[name], settings, tests)
                              for name in ("before", "after")}
    result["settings"] = {
        "arch": embedder.adapted.arch, "weights": embedder.adapted.weights, "image_size": settings.image_size,
        "max_images": settings.max_images, "n_reference": len(reference), "n_input": len(before),
        "permutations": settings.permutations, "pca": settings.pca, "seed": settings.seed,
        "seconds": round(time.perf_counter() - started, 2),
        "note": "PCA and the MMD bandwidth (median heuristic) are fitted on each pooled pair, as diagnose does; "
                "compare p-values and the domain-classifier AUC across before/after, and MMD² as a guide",
    }
    return result
