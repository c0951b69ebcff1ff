"""``shiftkit combat FEATURES.csv``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from shiftkit.cli.common import console, err_console, output_folder, user_errors
from shiftkit.data.feature_table import IGNORED_PATTERNS
from shiftkit.harmonize.combat import CombatRequest, LeakageWarning, run_combat
from shiftkit.io import write_json


@user_errors
def combat(
    features: Path = typer.Argument(..., help="CSV with one row per image/subject: feature columns, a site column, covariates."),
    out: Path = typer.Option(..., "--out", help="Harmonized CSV; the fitted model goes beside it (OUT.combat.json)."),
    site_column: str = typer.Option("site", help="Column naming each row's site (scanner, hospital)."),
    covariates: Optional[str] = typer.Option(None, help="Biological covariates to preserve, comma-separated (age,sex); text columns are one-hot encoded; force with name:cat or name:num."),
    reference_site: Optional[str] = typer.Option(None, help="Map the other sites onto this one; its rows stay unchanged (M-ComBat)."),
    apply: Optional[Path] = typer.Option(None, help="Re-apply a saved model (OUT.combat.json/.npz) to new rows from its sites instead of fitting."),
    exclude: Optional[str] = typer.Option(None, help=f"More columns to leave alone, comma-separated (fnmatch patterns); {', '.join(IGNORED_PATTERNS)} always are."),
    label_column: Optional[str] = typer.Option(None, help="The outcome column: left alone, and checked for leakage against the covariates."),
    eb: bool = typer.Option(True, "--eb/--no-eb", help="Empirical Bayes shrinkage of the site estimates."),
    parametric: bool = typer.Option(True, "--parametric/--non-parametric", help="Parametric or non-parametric EB priors."),
    mean_only: bool = typer.Option(False, "--mean-only", help="Correct the location only (no scaling)."),
) -> None:
    """Remove site effects from tabular features (radiomics) with ComBat, keeping biological covariates."""
    output_folder(out, file=True)
    request = CombatRequest(
        features=features, out=out, site_column=site_column, covariates=covariates, reference_site=reference_site,
        apply=apply, exclude=tuple(e.strip() for e in (exclude or "").split(",") if e.strip()),
        label_column=label_column, parametric=parametric, eb=eb, mean_only=mean_only,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeakageWarning)  # shown below as one line each, not as Python warnings
        result = run_combat(request)
    for message in result.warnings:
        err_console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
    summary = out.with_name(f"{out.stem}.summary.json")
    write_json(summary, result.to_dict())
    table = Table(title=f"ComBat: {len(result.features)} features, {len(result.sites)} sites "
                  + escape(f"({', '.join(f'{s}: {n}' for s, n in result.sites.items())})"))
    table.add_column("site effect (mean over features)")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("largest |site mean - mean| / SD", f"{result.before['location']:.3f}", f"{result.after['location']:.3f}")
    table.add_row("largest / smallest site SD", f"{result.before['scale_ratio']:.3f}", f"{result.after['scale_ratio']:.3f}")
    console.print(table)
    if result.passthrough:
        shown = ", ".join(result.passthrough[:8]) + (", ..." if len(result.passthrough) > 8 else "")
        console.print(f"left unchanged: {shown}", highlight=False, markup=False)
    written = [str(out), str(summary)] + ([str(result.model_path)] if result.model_path else [])
    console.print(f"wrote {', '.join(written)}", highlight=False, markup=False)
