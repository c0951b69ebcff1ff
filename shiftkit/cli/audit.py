"""``shiftkit audit``: a multi-center audit of images (MANIFEST.csv) or of a radiomics table (--features-table)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from shiftkit.cli.common import check_number, console, err_console, output_folder, parse_window, user_errors
from shiftkit.cli.progress import StageProgress, make_progress
from shiftkit.data.readers import ReadOptions
from shiftkit.errors import ConfigError
from shiftkit.harmonize.base import methods
from shiftkit.overwrite import refuse_overwriting_inputs


def _significance(significance: float | None, alpha: float | None) -> float:
    """--significance, or its deprecated name --alpha (which means a penalty weight in finetune and compare)."""
    if alpha is not None and significance is not None:
        raise ConfigError("give --significance only (--alpha is its deprecated name)")
    if alpha is not None:
        check_number(alpha, "--alpha", above=0, below=1)
        err_console.print("note: audit --alpha is deprecated; use --significance", highlight=False)
        return alpha
    check_number(significance, "--significance", above=0, below=1)
    return 0.05 if significance is None else significance


@user_errors
def audit(
    table: Path = typer.Argument(..., help="Image manifest CSV (path + site column), or a features CSV with --features-table."),
    out: Path = typer.Option(..., "--out", help="Output folder: audit.json, audit.html."),
    site_column: str = typer.Option("site", help="Column naming the site (hospital, scanner) of each row."),
    label_column: Optional[str] = typer.Option(None, help="Column with the class label: label shift per site (images); a covariate ComBat preserves (features)."),
    features_table: bool = typer.Option(False, "--features-table", help="TABLE holds per-patient features (pyradiomics CSV), not images."),
    covariates: Optional[str] = typer.Option(None, help="Features table: comma-separated columns whose effects ComBat preserves (e.g. age,sex)."),
    id_column: Optional[str] = typer.Option(None, help="Features table: an id column to ignore (numeric ids would otherwise count as features)."),
    combat: bool = typer.Option(True, "--combat/--no-combat", help="Features table: rerun the analysis after ComBat."),
    dominance: float = typer.Option(0.26, help="Features table: epsilon² at which a site-affected feature is site-dominated."),
    covbat: bool = typer.Option(True, "--covbat/--no-covbat", help="Features table: also CovBat (ComBat + ComBat on the residuals' principal components)."),
    covbat_variance: float = typer.Option(0.95, help="Features table: CovBat harmonizes the components explaining this share of the residual variance."),
    patient_column: Optional[str] = typer.Option(None, help="Features table: column naming each row's patient; repeated rows = test-retest scans (ICC, CCC). Default: a column named 'patient'."),
    effect_of: Optional[str] = typer.Option(None, help="Features table: track this column's effect per feature before/after (default: the label)."),
    positive_label: Optional[str] = typer.Option(None, help="Features table: the downstream task's positive class (e.g. mel)."),
    negative_label: Optional[str] = typer.Option(None, help="Features table: the negative class(es), comma-separated (default: every other class)."),
    downstream: bool = typer.Option(True, "--downstream/--no-downstream", help="Features table: leave-one-site-out AUC of a logistic regression with no harmonization, ComBat and CovBat fitted in the training folds."),
    unseen_site: str = typer.Option("standardize", help="Features table: the held-out site in leave-one-site-out: 'standardize' (its own location/scale, no labels) or 'refuse'."),
    downstream_c: float = typer.Option(1.0, help="Features table: inverse L2 strength of the downstream logistic regression."),
    folds: int = typer.Option(5, help="Features table: cross-validation folds of the site classifier."),
    resamples: int = typer.Option(200, help="Features table: bootstrap resamples for the intervals."),
    preserve_label: bool = typer.Option(True, "--preserve-label/--no-preserve-label", help="Features table: let ComBat preserve the label's effect (describing the table; the downstream model never does)."),
    drop_small_sites: bool = typer.Option(False, "--drop-small-sites", help="Features table: leave out sites with fewer than 3 rows (named in the report) instead of refusing."),
    checks: bool = typer.Option(True, "--checks/--no-checks", help="Features table: site classifier, test-retest, biology and downstream checks (off: per-feature tests only)."),
    arch: str = typer.Option("efficientnet_lite0", help="Backbone that embeds the images (ImageNet weights)."),
    weights: str = typer.Option("imagenet", help="imagenet, a state-dict path, or none."),
    image_size: Optional[int] = typer.Option(None, help="Crop size for embedding (default 224; 128 for HAM10000's native size)."),
    batch_size: int = typer.Option(128, help="Batch size for embedding."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    cache_dir: Optional[Path] = typer.Option(None, help="Disk cache of embeddings (keyed by image content, model, preprocessing)."),
    max_images_per_site: Optional[int] = typer.Option(None, help="Use at most N images per site (stratified by label, seeded)."),
    min_images_per_site: int = typer.Option(10, help="Refuse sites with fewer images than this."),
    pca: int = typer.Option(32, help="Principal components (one PCA on all sites pooled) for MMD and sliced Wasserstein."),
    classifier_pca: int = typer.Option(0, help="Domain classifier on the first N principal components (faster for many sites); 0 = full embedding."),
    permutations: int = typer.Option(1000, help="Permutations for MMD p-values."),
    ot_permutations: int = typer.Option(200, help="Permutations for sliced-Wasserstein p-values."),
    bootstrap: int = typer.Option(100, help="Bootstrap resamples for the estimated priors."),
    correction: str = typer.Option("bh", help="Multiple-comparison correction over pairs (features): bh, holm or bonferroni."),
    significance: Optional[float] = typer.Option(None, "--significance", help="Significance level after correction (default 0.05)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", hidden=True, help="Deprecated name of --significance."),
    leave_one_out: bool = typer.Option(True, "--leave-one-out/--no-leave-one-out", help="Also test each site against all others pooled."),
    harmonize: Optional[str] = typer.Option(None, help=f"Harmonize every site ({', '.join(methods())}) and recompute the matrix; 'auto' (or a list such as histmatch,zscore) chooses each site's harmonizer on held-out images (as harmonize --method auto) against --reference-site, else all other sites pooled, and leaves a site unchanged when none reduces its shift."),
    reference_site: Optional[str] = typer.Option(None, help="With --harmonize: harmonize toward this site instead of all sites pooled."),
    fingerprint: bool = typer.Option(False, "--fingerprint", help="Images: per site pair, the block of the network where the shift peaks and the image properties that differ (same forward pass)."),
    seed: int = typer.Option(0, help="Seed for subsampling, permutations, cross-validation and bootstrap."),
    window: Optional[str] = typer.Option(None, help="Intensity window LOW,HIGH for 16-bit/medical images."),
    slice_index: Optional[int] = typer.Option(None, "--slice", help="Axial slice of 3-D volumes (default: middle)."),
) -> None:
    """Audit sites: pairwise covariate and label shift, metadata, outlier sites (images), or per-feature site
    effects before and after ComBat (--features-table)."""
    alpha = _significance(significance, alpha)
    check_number(dominance, "--dominance", minimum=0, maximum=1)
    read_options = ReadOptions(window=parse_window(window), slice_index=slice_index)
    refuse_overwriting_inputs(out, [out / "audit.json", out / "audit.html"],
                              {"features table" if features_table else "manifest": table})
    out = output_folder(out)
    if features_table and fingerprint:
        raise ConfigError("--fingerprint needs images (a network's blocks); a --features-table has none")
    if features_table:
        from shiftkit.audit.features_table import FeaturesAuditRequest, run_features_audit
        from shiftkit.audit.report import print_features_summary, write_features_report

        import warnings

        from shiftkit.harmonize.combat import LeakageWarning

        check_number(covbat_variance, "--covbat-variance", above=0, maximum=1)
        check_number(downstream_c, "--downstream-c", above=0)
        check_number(folds, "--folds", minimum=2)
        check_number(resamples, "--resamples", minimum=0)
        request = FeaturesAuditRequest(
            table=table, site_column=site_column, label_column=label_column,
            covariates=tuple(c.strip() for c in (covariates or "").split(",") if c.strip()), id_column=id_column,
            alpha=alpha, dominance=dominance, correction=correction, combat=combat, seed=seed, covbat=covbat,
            covbat_variance=covbat_variance, patient_column=patient_column, effect_of=effect_of,
            positive_label=positive_label,
            negative_labels=tuple(c.strip() for c in (negative_label or "").split(",") if c.strip()),
            downstream=downstream, unseen_site=unseen_site, downstream_c=downstream_c, folds=folds,
            resamples=resamples, preserve_label=preserve_label, drop_small_sites=drop_small_sites, checks=checks)
        with warnings.catch_warnings(), make_progress(err_console) as progress:
            warnings.simplefilter("ignore", LeakageWarning)  # in the report and the summary, one line each
            result = run_features_audit(request, on_stage=StageProgress(progress).stage)
        write_features_report(result, out)
        print_features_summary(result, console)
        console.print(f"wrote {out / 'audit.json'} and {out / 'audit.html'}", markup=False)
        return

    from shiftkit.audit.images import AuditRequest, run_audit
    from shiftkit.audit.report import print_image_summary, write_image_report

    if covariates:
        err_console.print("note: --covariates applies to --features-table audits only", highlight=False)
    request = AuditRequest(
        manifest=table, site_column=site_column, label_column=label_column, arch=arch, weights=weights,
        image_size=image_size, batch_size=batch_size, device=device, cache_dir=cache_dir,
        read_options=read_options,
        max_images_per_site=max_images_per_site, min_images_per_site=min_images_per_site, pca=pca,
        classifier_pca=classifier_pca,
        permutations=permutations, ot_permutations=ot_permutations, bootstrap=bootstrap, correction=correction,
        alpha=alpha, leave_one_out=leave_one_out, harmonize=harmonize, reference_site=reference_site,
        harmonized_dir=out / "harmonized" if harmonize else None, fingerprint=fingerprint, seed=seed,
    )
    with make_progress(err_console) as progress:
        stages = StageProgress(progress)
        result = run_audit(request, on_stage=stages.stage, on_step=stages.step)
    write_image_report(result, out)
    print_image_summary(result, console)
    console.print(f"wrote {out / 'audit.json'} and {out / 'audit.html'}", markup=False)
