"""``diagnose``: embed both domains once, run the covariate, label and concept shift measurements, and
assemble the :class:`ShiftProfile` (the CLI is a thin layer over :func:`run_diagnose`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shiftkit import __version__
from shiftkit.data.metadata import metadata_differences, table_metadata
from shiftkit.data.preprocess import check_image_size
from shiftkit.data.readers import ReadOptions
from shiftkit.data.paths import safe_resolve
from shiftkit.data.table import LABEL_SEPARATOR, ImageTable, check_label_spellings, load_table, subsample_table
from shiftkit.data.validate import SkippedImage, check_policy, require_images_left
from shiftkit.errors import ConfigError, DataError
from shiftkit.features import Representation, extract, fit_pca, load_finetuned
from shiftkit.hooks import StageHook, StepHook
from shiftkit.device import resolve_device
from shiftkit.models.registry import build_model
from shiftkit.privacy import shown_path
from shiftkit.shift import registry
from shiftkit.shift.profile import ALPHA, DatasetProfile, ShiftProfile

LABEL_METHODS = ("em_bcts", "bbse", "rlls")
MIN_IMAGES = 4  # per domain: below this no two-sample test means anything
CONCEPT_PERMUTATIONS = 200  # the concept test refits its models per permutation: capped here


@dataclass
class DiagnoseRequest:
    source: Path
    target: Path
    arch: str = "efficientnet_lite0"
    weights: str = "imagenet"
    checkpoint: Path | None = None  # a `shiftkit finetune` output folder: its model embeds and classifies
    target_prevalence: str | None = None  # with a checkpoint: the target's known class shares, CLASS=P,... (estimate)
    target_labels: Path | None = None
    tests: tuple[str, ...] = field(default_factory=lambda: registry.default_tests("diagnose"))
    permutations: int = 1000
    bootstrap: int = 200
    label_method: str = "em_bcts"
    max_images: int | None = None
    pca: int = 32
    seed: int = 0
    device: str = "auto"
    image_size: int | None = None
    batch_size: int = 128
    alpha: float = ALPHA
    cache_dir: Path | None = None
    read_options: ReadOptions = field(default_factory=ReadOptions)
    on_bad_image: str = "fail"  # or "skip": unreadable images leave the domain and are listed in the report
    anonymize_paths: bool = False  # input paths in the report become stable hashes (shiftkit.privacy)
    fingerprint: bool = False  # per-block shift, distance from pre-training, image properties (same pass)
    thumbnails: bool = True  # the report shows the most and least domain-typical images
    try_harmonizers: bool = False  # under covariate shift: which harmonizer reduces it (held-out, cheap subset)


@dataclass
class Embedded:
    """What the measurements work on, kept for the report's plots."""

    source: Representation
    target: Representation
    source_table: ImageTable
    target_table: ImageTable
    arch: str
    weights: str
    skipped: dict[str, list[SkippedImage]] = field(default_factory=dict)  # per domain, under --on-bad-image skip
    model_facts: dict = field(default_factory=dict)  # with the fingerprint: pretraining distance, gradient signal
    read_options: ReadOptions = field(default_factory=ReadOptions)  # how the images were read (thumbnails)
    harmonizer_trial: Any = None  # with --try-harmonizers: the MeasureSettings the trial embeds with


def _with_target_labels(target: ImageTable, labels_path: Path | None) -> ImageTable:
    """Attach the labels of ``labels_path`` (a path,label CSV covering some target images) to ``target``.

    Labels the target already has (class folders, a labelled manifest) are kept and merged with the file's: an
    image labelled in both must carry the same labels, or the run is refused naming both rows."""
    if labels_path is None:
        return target
    labelled = load_table(labels_path)
    by_path = {safe_resolve(r.path): r for r in labelled.records}  # errors name the labels file's row
    target_paths = {safe_resolve(r.path) for r in target.records}
    unknown = [p for p in by_path if p not in target_paths]
    if unknown:
        raise DataError(f"{labels_path}: {unknown[0]} is not one of the target images")
    records = []
    for record in target.records:
        given = by_path.get(safe_resolve(record.path))
        if given is None:
            records.append(record)
            continue
        if record.labels and set(record.labels) != set(given.labels):
            raise DataError(f"{given.origin}: --target-labels gives '{LABEL_SEPARATOR.join(given.labels)}' for "
                            f"{record.path.name}, which the target already labels "
                            f"'{LABEL_SEPARATOR.join(record.labels)}' ({record.origin}); remove one of the two")
        records.append(replace(record, labels=given.labels, origin=given.origin))
    check_label_spellings(records)
    classes = tuple(sorted({label for r in records for label in r.labels}))
    multilabel = target.multilabel or labelled.multilabel
    return replace(target, records=tuple(records), classes=classes, multilabel=multilabel, _index={})


def _check(request: DiagnoseRequest) -> None:
    registry.check_names(request.tests, noun="test")
    if request.label_method not in LABEL_METHODS:
        raise ConfigError(f"unknown label-shift method '{request.label_method}' (choose {', '.join(LABEL_METHODS)})")
    if request.permutations < 1 or request.bootstrap < 1:
        raise ConfigError("--permutations and --bootstrap must be at least 1")
    if request.max_images is not None and request.max_images < MIN_IMAGES:
        raise ConfigError(f"--max-images must be at least {MIN_IMAGES}")
    if request.pca < 0 or request.batch_size < 1:
        raise ConfigError("--pca must be 0 or more and --batch-size at least 1")
    if request.target_prevalence is not None and request.checkpoint is None:
        raise ConfigError("--target-prevalence: the performance estimate it serves needs --checkpoint")
    check_image_size(request.image_size)
    check_policy(request.on_bad_image)
    resolve_device(request.device)


def load_domains(request: DiagnoseRequest) -> tuple[ImageTable, ImageTable]:
    source = subsample_table(load_table(request.source), request.max_images, request.seed)
    target = _with_target_labels(load_table(request.target), request.target_labels)  # label first, then subsample
    target = subsample_table(target, request.max_images, request.seed + 1)
    for name, table in (("source", source), ("target", target)):
        if len(table) < MIN_IMAGES:
            raise DataError(f"{table.source}: the {name} has {len(table)} image(s); a shift test needs at least {MIN_IMAGES}")
    if any(r.labels for r in target.records):  # fully or partly labelled: number classes as the source does
        if not source.labeled:
            raise DataError(f"{request.source}: the target has labels but the source has none")
        target = target.with_classes(source.classes, source.multilabel, role="source")
    return source, target


def embed(request: DiagnoseRequest, source: ImageTable, target: ImageTable,
          on_stage: Callable[[str, int], Callable[[], None]] | None = None) -> Embedded:
    device = resolve_device(request.device)
    if request.checkpoint is not None:
        adapted, classes = load_finetuned(request.checkpoint)
        if source.labeled and list(source.classes) != classes:
            raise DataError(f"{request.checkpoint}: the model's classes {classes} differ from the source's "
                            f"{list(source.classes)}")
        if request.target_prevalence is not None:
            from shiftkit.estimate.command import target_prior_option

            if not source.labeled or source.multilabel:
                raise ConfigError("--target-prevalence: the performance estimate it serves needs a labelled, "
                                  "single-label source")
            # a typo fails here, before the forward passes
            target_prior_option(request.target_prevalence, classes, "--target-prevalence", known_only=True)
    else:
        adapted = build_model(request.arch, 1, request.weights, request.image_size)
    batches = lambda table: -(-len(table) // request.batch_size)  # noqa: E731
    # the block statistics also serve the source classifier of the prior estimates (see prior_representations)
    blocks = request.fingerprint or (source.labeled and not source.multilabel and request.checkpoint is None)
    reps, tables, skipped = [], [], {}
    for name, table in (("source", source), ("target", target)):
        tick = on_stage(f"embedding {name}", batches(table)) if on_stage else None
        rep = extract(table, adapted, device, trained_head=request.checkpoint is not None,
                      batch_size=request.batch_size, read_options=request.read_options,
                      cache_dir=request.cache_dir, on_batch=tick, on_bad_image=request.on_bad_image,
                      blocks=blocks)
        if rep.skipped:  # rows of the representation are the readable images, in table order
            bad = {s.index for s in rep.skipped}
            table = table.subset([i for i in range(len(table)) if i not in bad])
            require_images_left(table, list(rep.skipped), name, MIN_IMAGES, all_classes=name == "source")
        reps.append(rep)
        tables.append(table)
        skipped[name] = list(rep.skipped)
    facts = model_facts(request, adapted, reps, tables[0], device, on_stage) if request.fingerprint else {}
    return Embedded(reps[0], reps[1], tables[0], tables[1], adapted.arch, adapted.weights, skipped, facts,
                    request.read_options, harmonizer_trial(request, adapted) if request.try_harmonizers else None)


TRIAL_IMAGES = 100  # per part (fit / held out) of each domain when diagnose tries harmonizers
TRIAL_PERMUTATIONS = 200


def harmonizer_trial(request: DiagnoseRequest, adapted):
    """How ``--try-harmonizers`` measures (:func:`shiftkit.harmonize.selection.select_harmonizer`): diagnose's
    backbone on a cheap subset. With ``--checkpoint`` the same architecture with ImageNet weights embeds (a
    harmonizer is judged on the images, not on one fine-tuned model)."""
    from shiftkit.harmonize.measure import MeasureSettings

    weights = "imagenet" if request.checkpoint is not None else request.weights
    return MeasureSettings(arch=adapted.arch, weights=weights, image_size=request.image_size,
                           max_images=TRIAL_IMAGES, permutations=min(request.permutations, TRIAL_PERMUTATIONS),
                           seed=request.seed, device=request.device, batch_size=request.batch_size,
                           cache_dir=request.cache_dir, read_options=request.read_options)


GRADIENT_BATCHES = 5  # the gradient signal's labelled source batches (the only images read a second time)


def model_facts(request: DiagnoseRequest, adapted, reps: list, source: ImageTable, device,
                on_stage: Callable[[str, int], Callable[[], None]] | None = None) -> dict:
    """What the fingerprint needs from the network itself: each domain's distance from the pre-training
    statistics (BatchNorm running statistics; only with pre-trained or fine-tuned weights) and, when the source is
    labelled, the relative gradient norm per block over at most :data:`GRADIENT_BATCHES` source batches (a new
    head of the source's classes on the pre-trained backbone, as fine-tuning would start; the fine-tuned head with
    --checkpoint)."""
    from shiftkit.data.cache import ImageCache
    from shiftkit.data.dataset import ImageDataset, collate
    from shiftkit.data.validate import iter_batches
    from shiftkit.shift.fingerprint import pretraining_distance
    from shiftkit.shift.transferability import gradient_signal

    facts: dict = {}
    if request.checkpoint is not None or request.weights != "none":
        facts["pretraining"] = {name: pretraining_distance(adapted, rep.bn_moments or {})
                                for name, rep in zip(("source", "target"), reps)}
    if source.labeled and len(source.classes) >= 2:
        model = adapted if request.checkpoint is not None else build_model(
            request.arch, len(source.classes), request.weights, request.image_size)
        model.model.to(device)
        batch_size = min(request.batch_size, 32)
        dataset = ImageDataset(source, ImageCache(model.preprocessing, request.read_options, max_memory_bytes=0))
        tick = on_stage("gradient signal", min(GRADIENT_BATCHES, -(-len(source) // batch_size))) if on_stage else None

        def batches():
            for batch in iter_batches(dataset, batch_size, "skip", [], collate):
                yield batch
                if tick:
                    tick()

        task = "multilabel" if source.multilabel else "multiclass"
        facts["gradient_signal"] = gradient_signal(model, batches(), device, max_batches=GRADIENT_BATCHES, task=task)
    return facts


def _dataset_profile(source: ImageTable, target: ImageTable) -> DatasetProfile:
    counts = source.class_counts() if source.labeled else {}
    nonzero = [c for c in counts.values() if c > 0]
    return DatasetProfile(
        n_source=len(source), n_target=len(target), classes=list(source.classes), source_counts=counts,
        target_counts=target.class_counts() if any(r.labels for r in target.records) else None,  # labelled ones
        imbalance_ratio=(max(nonzero) / min(nonzero)) if nonzero else None,
        multilabel=source.multilabel,
        target_labelled=sum(1 for r in target.records if r.labels),
    )


def prior_representations(rep) -> dict[str, np.ndarray]:
    """What the source classifier of the prior estimates may read (the data choose, by cross-validated log-loss):
    the embedding and, when the pass collected block descriptors, the channel statistics of every block but the
    last (colour and texture at several depths; the network's end is what the embedding summarises)."""
    candidates = {"embedding": rep.embeddings}
    if rep.blocks and len(rep.blocks) > 1:
        candidates["early-block statistics"] = np.hstack(list(rep.blocks.values())[:-1])
    return candidates


def measure(request: DiagnoseRequest, data: Embedded, on_step: Callable[[str], None] | None = None) -> ShiftProfile:
    """All measurements on embedded domains; ``on_step`` is told what runs next (for progress)."""
    from shiftkit.shift.concept import concept_shift_test
    from shiftkit.shift.label import SourceClassifier, estimate_label_shift
    from shiftkit.shift.stats import ShiftInputError

    step = on_step or (lambda text: None)
    started = time.perf_counter()
    source, target = data.source_table, data.target_table
    src_emb, tgt_emb = data.source.embeddings, data.target.embeddings
    # PCA on both domains pooled: it uses no domain labels, so source and target stay exchangeable under "no
    # shift" and the permutation tests stay exact (a source-only fit made MMD reject far above alpha).
    pca = fit_pca(np.vstack([src_emb, tgt_emb]), request.pca, request.seed) if request.pca else None
    src_low, tgt_low = (pca.transform(src_emb), pca.transform(tgt_emb)) if pca else (src_emb, tgt_emb)

    classifier, target_logits, label, label_methods, true_prior = None, None, None, {}, None
    single_label = source.labeled and not source.multilabel
    not_measured: dict[str, str] = {}
    if source.multilabel:
        not_measured["label"] = not_measured["concept"] = "prior estimation needs single-label classes"
    if single_label:
        step("fitting the source classifier")
        source_y = source.targets()
        try:
            if data.source.probabilities is not None:  # a fine-tuned model: its outputs on the source images
                logits = np.log(np.clip(data.source.probabilities, 1e-12, None))
                classifier = SourceClassifier.from_logits(logits, source_y, list(source.classes))
                target_logits = np.log(np.clip(data.target.probabilities, 1e-12, None))
            else:
                classifier = SourceClassifier.fit_best(prior_representations(data.source), source_y,
                                                       list(source.classes), seed=request.seed)
                chosen = classifier.details["representation"]
                target_logits = classifier.log_probabilities(prior_representations(data.target)[chosen])
        except ShiftInputError as exc:  # e.g. a class with a single source image: report the rest
            not_measured["label"] = not_measured["concept"] = str(exc)
            single_label = False
    # Tests reading "outputs" (BBSD) compare the classifier's outputs on held-out source images with its outputs on
    # the target.
    if classifier is not None:
        src_out, tgt_out = np.exp(classifier.held_out_logits), np.exp(target_logits)  # log-softmax -> softmax
    elif data.source.probabilities is not None:  # a fine-tuned model's outputs: the black box BBSD is made for
        src_out, tgt_out = data.source.probabilities, data.target.probabilities
    else:
        src_out, tgt_out = src_low, tgt_low
    step("covariate shift tests")
    inputs = registry.TestInputs(reduced=(src_low, tgt_low), full=(src_emb, tgt_emb), outputs=(src_out, tgt_out))
    test_settings = registry.TestSettings(seed=request.seed, permutations=request.permutations, device=request.device)
    covariate = registry.run_tests(request.tests, inputs, test_settings, noun="test")
    if classifier is not None:
        for method in LABEL_METHODS:
            step(f"label shift ({method})")
            label_methods[method] = estimate_label_shift(
                classifier, target_logits, method=method, bootstrap=request.bootstrap, seed=request.seed,
                alpha=request.alpha,
            )
        label = label_methods[request.label_method]
        if target.labeled:
            counts = target.class_counts()
            true_prior = {c: counts[c] / len(target) for c in source.classes}
    concept = None
    labelled_target = [i for i, r in enumerate(target.records) if r.labels]
    if single_label and len(labelled_target) >= MIN_IMAGES:
        step("concept shift test")
        sub = target.subset(labelled_target)
        concept = concept_shift_test(src_emb, source.targets(), tgt_emb[labelled_target], sub.targets(),
                                     list(source.classes), permutations=min(request.permutations, CONCEPT_PERMUTATIONS),
                                     bootstrap=request.bootstrap, alpha=request.alpha, seed=request.seed)
    step("acquisition metadata")
    metadata = metadata_differences(table_metadata(source), table_metadata(target))
    settings = {
        "source": shown_path(request.source, request.anonymize_paths),
        "target": shown_path(request.target, request.anonymize_paths),
        "arch": data.arch,
        "weights": shown_path(data.weights, request.anonymize_paths and data.weights not in ("imagenet", "none")),
        "checkpoint": shown_path(request.checkpoint, request.anonymize_paths),
        "target_prevalence": request.target_prevalence,
        "on_bad_image": request.on_bad_image, "anonymize_paths": request.anonymize_paths,
        "embedding_dim": int(src_emb.shape[1]), "pca": int(src_low.shape[1]) if pca else None,
        "tests": list(request.tests),
        "permutations": {**{t.name: t.permutations(test_settings) for t in map(registry.get, registry.names())
                            if t.permutes}, "concept": min(request.permutations, CONCEPT_PERMUTATIONS)},
        "bootstrap": request.bootstrap,
        "label_method": request.label_method, "alpha": request.alpha, "seed": request.seed,
        "max_images": request.max_images, "measure_seconds": round(time.perf_counter() - started, 2),
        "not_measured": not_measured, "fingerprint": request.fingerprint, "thumbnails": request.thumbnails,
        "try_harmonizers": request.try_harmonizers,
        "shiftkit": __version__,
    }
    return ShiftProfile.build(
        alpha=request.alpha, covariate=covariate, label=label, label_methods=label_methods,
        true_target_prior=true_prior, concept=concept, dataset=_dataset_profile(source, target),
        metadata=metadata, settings=settings,
    )


def run_diagnose(request: DiagnoseRequest, on_stage: StageHook | None = None,
                 on_step: StepHook | None = None) -> tuple[ShiftProfile, Embedded]:
    _check(request)
    source, target = load_domains(request)
    data = embed(request, source, target, on_stage)
    return measure(request, data, on_step), data
