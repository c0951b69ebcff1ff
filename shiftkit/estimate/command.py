"""``shiftkit estimate`` as a library call: a fine-tuned checkpoint's outputs on labelled source-validation images
and on the unlabelled target (one forward pass each, cached), then :func:`estimate_performance` with density ratios
from the checkpoint's own embeddings. When the target happens to carry labels, the metrics measured with them are
reported next to the estimates (a check, never an input)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shiftkit.data.readers import ReadOptions
from shiftkit.errors import ConfigError, DataError
from shiftkit.estimate.measured import labelling_plan, measured_metrics
from shiftkit.estimate.run import DEFAULT_METHODS

# The method the headline and the demo use: the lowest mean absolute error for accuracy on the real-data validation
# (benchmarks/estimate_real.py; the table is in the README).
DEFAULT_METHOD = "ac_dc"
PRIOR_CHOICES = ("em_bcts", "bbse", "none")
"""``--prior``'s estimators of the target prior (or none); ``CLASS=VALUE,...`` states the prevalence instead."""


@dataclass
class EstimateRequest:
    checkpoint: Path
    source_val: Path
    target: Path
    methods: tuple[str, ...] = DEFAULT_METHODS
    prior: str = "em_bcts"
    positive: str | None = None
    bootstrap: int = 1000
    level: float = 0.95
    seed: int = 0
    device: str = "auto"
    batch_size: int = 128
    cache_dir: Path | None = None
    read_options: ReadOptions = field(default_factory=ReadOptions)


@dataclass(frozen=True)
class Outputs:
    """One forward pass of the checkpoint over a table: softmax outputs and penultimate embeddings."""

    probabilities: np.ndarray
    embeddings: np.ndarray


def check_request(request: EstimateRequest) -> None:
    from shiftkit.estimate.estimators import METHODS

    unknown = [m for m in request.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown method '{unknown[0]}' (choose from {', '.join(METHODS)})")
    if request.prior not in PRIOR_CHOICES and "=" not in request.prior:
        raise ConfigError(f"--prior '{request.prior}' (choose from {', '.join(PRIOR_CHOICES)}, or state the "
                          f"target prevalence as CLASS=VALUE,...)")
    if request.bootstrap < 2:
        raise ConfigError("--bootstrap must be at least 2")


def target_prior_option(text: str, classes: list, option: str = "--prior",
                        known_only: bool = False) -> str | dict[str, float] | None:
    """``--prior``: an estimator's name, None for "none", or the known target prevalence ``CLASS=VALUE,...`` as a
    dict (every class once; proportions or counts, normalised, e.g. ``mel=35,nv=170``: a site's case mix).
    ``known_only``: only the latter is accepted (``diagnose --target-prevalence``); errors name ``option``."""
    if "=" not in text:
        if known_only:
            raise ConfigError(f"{option}: '{text}' is not CLASS=VALUE,... (give every class: "
                              f"{','.join(c + '=...' for c in classes)})")
        return None if text == "none" else text
    known: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in classes:
            raise ConfigError(f"{option}: '{name}' is not one of the model's classes ({', '.join(classes)})")
        if name in known:
            raise ConfigError(f"{option}: class '{name}' given twice")
        try:
            known[name] = float(value)
        except ValueError:
            raise ConfigError(f"{option}: '{item}' is not CLASS=NUMBER") from None
        if not np.isfinite(known[name]) or known[name] < 0:
            raise ConfigError(f"{option}: '{item}': a prevalence is a non-negative number")
    missing = [c for c in classes if c not in known]
    if missing:
        raise ConfigError(f"{option}: no value for class(es) {', '.join(missing)} (give every class: "
                          f"{','.join(c + '=...' for c in classes)})")
    if sum(known.values()) <= 0:
        raise ConfigError(f"{option}: the prevalences are all zero")
    return known


def model_outputs(table, adapted, device, request: EstimateRequest, on_batch: Callable[[], None] | None) -> Outputs:
    from shiftkit.features import extract

    rep = extract(table, adapted, device, trained_head=True, batch_size=request.batch_size,
                  read_options=request.read_options, cache_dir=request.cache_dir, on_batch=on_batch)
    return Outputs(rep.probabilities.astype(np.float64), rep.embeddings.astype(np.float64))


def _labels(table, classes: list, role: str) -> np.ndarray:
    if table.multilabel:
        raise DataError(f"{table.source}: {role} is multi-label; estimation needs one class per image")
    names = [r.labels[0] if r.labels else None for r in table.records]
    unknown = sorted({n for n in names if n is not None and n not in classes})
    if unknown:
        raise DataError(f"{table.source}: {role} label '{unknown[0]}' is not one of the model's classes "
                        f"({', '.join(classes)})")
    return np.array([classes.index(n) if n is not None else -1 for n in names])


def run_estimate(request: EstimateRequest, on_stage=None) -> dict[str, Any]:
    """Estimate, with the flags, and the measured metrics when the target is labelled; returns estimate.json's
    content."""
    from shiftkit import __version__
    from shiftkit.data.table import load_table
    from shiftkit.estimate import embedding_inputs, estimate_performance
    from shiftkit.features import load_finetuned
    from shiftkit.finetune.trainer import resolve_device

    started = time.perf_counter()
    check_request(request)
    adapted, classes = load_finetuned(request.checkpoint)
    if request.positive is not None and request.positive not in classes:
        raise ConfigError(f"--positive '{request.positive}' is not one of the model's classes ({', '.join(classes)})")
    target_prior = target_prior_option(request.prior, classes)
    source, target = load_table(request.source_val), load_table(request.target)
    if not source.labeled or any(not r.labels for r in source.records):
        raise DataError(f"{request.source_val}: --source-val needs a label for every image (the estimates are "
                        "calibrated on them)")
    if len(target) == 0:
        raise DataError(f"{request.target}: the target has no images")
    source_y = _labels(source, classes, "--source-val")
    target_y = _labels(target, classes, "target") if target.labeled else None
    device = resolve_device(request.device)
    outputs = {}
    for name, table in (("source-val", source), ("target", target)):
        tick = on_stage(f"model outputs on {name}", -(-len(table) // request.batch_size)) if on_stage else None
        outputs[name] = model_outputs(table, adapted, device, request, tick)
    src, tgt = outputs["source-val"], outputs["target"]
    positive = request.positive if request.positive is not None else (classes[1] if len(classes) == 2 else None)
    estimate = estimate_performance(
        np.log(np.clip(src.probabilities, 1e-12, None)), source_y, np.log(np.clip(tgt.probabilities, 1e-12, None)),
        classes=classes, methods=request.methods, target_prior=target_prior,
        positive=positive, bootstrap=request.bootstrap, level=request.level, seed=request.seed,
        **embedding_inputs(src.embeddings, source_y, tgt.embeddings, tgt.probabilities.argmax(1), seed=request.seed))
    result = {
        "checkpoint": str(request.checkpoint), "source_val": str(request.source_val), "target": str(request.target),
        "default_method": DEFAULT_METHOD if DEFAULT_METHOD in request.methods else request.methods[0],
        **estimate.to_dict(),
        "measured": None,
        "measured_note": "the target carries no labels" if target_y is None else None,
    }
    labelled = np.zeros(len(target), dtype=bool) if target_y is None else target_y >= 0
    if target_y is not None:
        if labelled.sum() == 0:
            result["measured_note"] = "the target carries no labels"
        else:
            result["measured"] = measured_metrics(tgt.probabilities[labelled], target_y[labelled], classes, positive,
                                                  request.level)
            if labelled.sum() < len(target_y):
                result["measured_note"] = f"measured on the {int(labelled.sum())} labelled target images"
    result["labelling_plan"] = labelling_plan(result, len(target), int(labelled.sum()))
    result["settings"] = {"arch": adapted.arch, "weights": adapted.weights, "device": str(device),
                          "bootstrap": request.bootstrap, "level": request.level, "prior": request.prior,
                          "seed": request.seed, "seconds": round(time.perf_counter() - started, 2),
                          "shiftkit": __version__}
    return result
