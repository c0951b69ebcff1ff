"""``shiftkit recommend REPORT.json`` and ``shiftkit recommend --evaluate``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shiftkit.cli.common import console, user_errors
from shiftkit.errors import ConfigError, DataError


def recommendation_table(recommendation: dict, top: int | None = None, reasons: bool = True) -> Table:
    """A rich table of a ``Recommendation.to_dict()``: rank, strategy, expected gain ± uncertainty, reasons."""
    table = Table(title=f"Recommended fine-tuning strategies for {escape(str(recommendation['arch']))} "
                        "(relative gain over ft, % of the main metric)", show_lines=reasons)
    table.add_column("#", justify="right")
    table.add_column("strategy")
    table.add_column("expected gain", justify="right")
    if reasons:
        table.add_column("reasons")
    for rank, advice in enumerate(recommendation["ranking"][:top] if top else recommendation["ranking"], start=1):
        row = [str(rank), escape(advice["strategy"]),
               f"{advice['expected_gain']:+.1f} ± {advice['uncertainty']:.1f} %"]
        if reasons:  # reasons quote user text (--domain, --arch): escaped, never rich markup
            row.append(escape("\n".join(f"• {r}" for r in advice["reasons"])))
        table.add_row(*row)
    return table


def print_recommendation(recommendation: dict, out: Console, top: int | None = None, reasons: bool = True) -> None:
    """The table, then the notes (architecture proxy, shift notes) one per line."""
    out.print(recommendation_table(recommendation, top, reasons))
    for note in recommendation["notes"]:
        out.print(f"[dim]note:[/] {escape(note)}", highlight=False)


def _read_report(path: Path) -> dict:
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise DataError(f"{path}: no such report (give the report.json written by `shiftkit diagnose`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the report ({exc})") from None


def _print_evaluation(result: dict) -> None:
    table = Table(title=f"Leave-one-dataset-out over the published evidence: {result['n_cases']} dataset x "
                        f"architecture cases from {result['n_datasets']} datasets ({result['n_full_cases']} with full "
                        "tables)")
    for column in ("method", "best strategy ranked 1st", "best strategy in top 3"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, rates in result["rates"].items():
        table.add_row(method, f"{rates['top1']:.0%}", f"{rates['top3']:.0%}")
    console.print(table)


@user_errors
def recommend(
    report: Optional[Path] = typer.Argument(None, help="report.json written by `shiftkit diagnose` (or its folder)."),
    arch: Optional[str] = typer.Option(None, help="Architecture you will fine-tune (default: the report's settings.arch)."),
    domain: Optional[str] = typer.Option(None, help="Imaging domain: X-ray, MRI, Histology, Dermoscopy, Endoscopy or other."),
    train_size: Optional[int] = typer.Option(None, help="Labelled images you will fine-tune on (default: the report's source size)."),
    top: Optional[int] = typer.Option(None, help="Show only the best N strategies."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Print the leave-one-dataset-out hit rates over the published evidence."),
) -> None:
    """Which fine-tuning strategy for this shift? A ranking with expected gains over ft and checkable reasons."""
    from shiftkit.recommend.evaluate import leave_one_dataset_out
    from shiftkit.recommend.recommender import ShiftFacts
    from shiftkit.recommend.recommender import recommend as rank

    if report is None and not evaluate:
        raise ConfigError("give a REPORT.json written by `shiftkit diagnose`, or --evaluate")
    output: dict = {}
    if evaluate:
        output["evaluation"] = leave_one_dataset_out().to_dict()
    if report is not None:
        data = _read_report(report)
        try:
            facts = ShiftFacts.from_report(data)
        except DataError as exc:
            raise DataError(f"{report}: {exc}") from None
        overrides = {k: v for k, v in (("domain", domain), ("train_size", train_size)) if v is not None}
        facts = replace(facts, **overrides)
        arch = arch or (data.get("settings") or {}).get("arch")
        if not isinstance(arch, str) or not arch:
            raise ConfigError(f"{report}: the report names no architecture; give --arch")
        output["recommendation"] = rank(facts, arch, top=top).to_dict()
    if as_json:
        print(json.dumps(output if len(output) > 1 else next(iter(output.values())), indent=2))
        return
    if "evaluation" in output:
        _print_evaluation(output["evaluation"])
    if "recommendation" in output:
        print_recommendation(output["recommendation"], console)
