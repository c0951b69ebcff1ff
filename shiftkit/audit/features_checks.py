"""The checks a radiomics paper reports, run on a loaded features table and its all-rows harmonized versions: the
in-fold site classifier, test-retest repeatability, biological-effect preservation and the downstream
leave-one-site-out model (one module each; this one decides what runs on which rows and with which covariates).

Covariates: the site classifier's in-fold harmonizers preserve every covariate the audit preserves (the site is
what is predicted, and the covariates are known for every row); the downstream model's harmonizers preserve only the
label-free ones, because the held-out rows' labels are what is predicted.

Leakage shortcuts compared with the in-fold fits: for the site classifier, the audit's all-rows fits (whole table);
for the downstream model, each harmonizer refitted on all the task's rows (same rows as the in-fold fits, held-out
sites included, with the audit's covariates re-encoded for those rows), so the comparison isolates who was seen.
"""

from __future__ import annotations

import numpy as np

from shiftkit.audit.biology import preservation
from shiftkit.audit.downstream import binary_task, downstream_loso
from shiftkit.audit.features_table import FeaturesAuditRequest, FeaturesTable
from shiftkit.audit.fold_harmonize import make_harmonizer
from shiftkit.audit.repeatability import repeatability
from shiftkit.audit.site_classifier import site_classifier_check
from shiftkit.errors import ConfigError, DataError
from shiftkit.data.feature_table import is_numeric
from shiftkit.hooks import StageHook, start_stage


def _label_free(table: FeaturesTable, label_column: str | None) -> np.ndarray | None:
    """The design columns that do not encode the label (None when none are left)."""
    if table.design is None:
        return None
    keep = [j for j, source in enumerate(table.design_sources) if source != label_column]
    return table.design[:, keep] if keep else None


def _effect_variable(table: FeaturesTable, options: FeaturesAuditRequest, rows: tuple | None) -> tuple | None:
    """(name, values, kind, description, rows) of the variable whose effect is tracked, or None."""
    if options.effect_of is not None:
        raw = np.asarray(table.extra[options.effect_of])
        if is_numeric(raw.tolist()):
            return options.effect_of, raw.astype(float), "numeric", "", np.arange(len(raw))
        levels = sorted(set(raw.tolist()))
        if len(levels) == 2:
            return (options.effect_of, (raw == levels[1]).astype(int), "binary",
                    f"{levels[1]} minus {levels[0]}", np.arange(len(raw)))
        return options.effect_of, raw, "groups", f"{len(levels)} groups", np.arange(len(raw))
    if options.label_column is None:
        return None
    labels = np.asarray(table.covariates[options.label_column])
    if rows is not None:
        task_rows, y, task = rows
        return (options.label_column, y, "binary",
                f"{task['positive']} minus {', '.join(task['negative'])}", task_rows)
    levels = sorted(set(labels.tolist()))
    if len(levels) == 2:
        return options.label_column, (labels == levels[1]).astype(int), "binary", f"{levels[1]} minus {levels[0]}", \
            np.arange(len(labels))
    return options.label_column, labels, "groups", f"{len(levels)} classes", np.arange(len(labels))


def _all_rows_fits(table: FeaturesTable, rows: np.ndarray, methods: tuple[str, ...], variance: float
                   ) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """The leakage check's shortcut: each harmonizer fitted once on **all** the task's rows (held-out sites
    included) with the audit's covariates (the label too when it is preserved), as a study that harmonizes before
    splitting would. Same rows as the in-fold fits, so the two differ only in who was seen. Returns (outputs,
    covariate columns used, notes for harmonizers that could not be fitted)."""
    x, sites = table.features[rows], table.sites[rows]
    cov, used = None, []
    if table.design is not None:  # on the task rows, one-hot columns may be all zero or sum to the intercept
        design = table.design[rows]
        basis = (sites[:, None] == np.unique(sites)[None, :]).astype(float)
        keep = []
        for j in range(design.shape[1]):
            candidate = np.hstack([basis, design[:, keep + [j]]])
            if np.linalg.matrix_rank(candidate) == candidate.shape[1]:
                keep.append(j)
        cov = design[:, keep] if keep else None
        used = [table.design_names[j] for j in keep]
    outputs, failed = {}, []
    for method in methods:
        if method == "none":
            continue
        try:
            outputs[method] = make_harmonizer(method, variance=variance).fit(x, sites, cov).transform(x, sites, cov)
        except DataError as exc:
            failed.append(f"leakage check ({method} fitted on all task rows): {exc}")
    return outputs, used, failed


def run_checks(table: FeaturesTable, harmonized: dict[str, np.ndarray], options: FeaturesAuditRequest,
               on_stage: StageHook | None = None) -> dict:
    """``site_classifier``, ``test_retest``, ``biology`` and ``downstream`` for the report (None: not run, with the
    reason in ``notes``). ``harmonized``: each method's all-rows output (``none``: the raw features); the options
    are the audit request's."""
    methods = tuple(harmonized)
    groups = None
    patient_column = table.patient_column
    if patient_column is not None:
        groups = np.asarray(table.extra[patient_column]).astype(str)
    out: dict = {"notes": []}

    sites = table.sites
    _, counts = np.unique(sites, return_counts=True)
    k = int(min(options.folds, counts.min()))
    tick = start_stage(on_stage, "site classifier (harmonizers fitted in the training folds)", len(methods) * k)
    out["site_classifier"] = site_classifier_check(
        table.features, sites, cov=table.design, groups=groups, all_rows=harmonized, methods=methods,
        folds=options.folds, seed=options.seed, bootstrap=options.resamples, variance=options.covbat_variance,
        on_tick=tick)

    if patient_column is not None:
        out["test_retest"] = repeatability(harmonized, list(table.names), groups, patient_column)
    else:
        out["test_retest"] = None
        out["notes"].append("test-retest: no patient column (name one with --patient-column, or call it 'patient')")

    task = None
    if options.label_column is not None and (options.positive_label is not None or options.downstream):
        labels = np.asarray(table.covariates[options.label_column])
        try:
            task = binary_task(labels, options.positive_label, options.negative_labels)
        except ConfigError as exc:
            if options.positive_label is not None:
                raise
            out["notes"].append(f"downstream model: {exc}")

    variable = _effect_variable(table, options, task)
    if variable is None:
        out["biology"] = None
        out["notes"].append("biological effect: no --label-column or --effect-of")
    else:
        name, values, kind, description, rows = variable
        preserved = name in set(table.design_sources)
        out["biology"] = preservation({m: harmonized[m][rows] for m in methods}, list(table.names), values,
                                      kind=kind, variable=name, sites=sites[rows], alpha=options.alpha,
                                      correction=options.correction,
                                      description=description, preserved_by_harmonizer=preserved)

    out["downstream"] = None
    if not options.downstream:
        out["notes"].append("downstream model: not requested (--no-downstream)")
    elif options.label_column is None:
        out["notes"].append("downstream model: no --label-column")
    elif task is not None:
        rows, y, description = task
        cov = _label_free(table, options.label_column)
        shortcut, used, failed = _all_rows_fits(table, rows, methods, options.covbat_variance)
        out["notes"] += failed
        tick = start_stage(on_stage, "leave-one-site-out model", len(methods) * len(np.unique(sites[rows])))
        result = downstream_loso(
            table.features[rows], sites[rows], y, cov=None if cov is None else cov[rows],
            groups=None if groups is None else groups[rows], all_rows=shortcut, methods=methods,
            policy=options.unseen_site, c=options.downstream_c, seed=options.seed, bootstrap=options.resamples,
            variance=options.covbat_variance, on_tick=tick)
        result["task"] = {"label_column": options.label_column, **description}
        result["all_rows_covariates"] = used
        out["downstream"] = result
    return out
