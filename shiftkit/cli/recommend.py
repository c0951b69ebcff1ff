"""``shiftkit recommend REPORT.json`` and ``shiftkit recommend --evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shiftkit.cli.common import console, user_errors
from shiftkit.cli.options import CacheDirOption, ImageSizeOption, InitOption, ValOption
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


def _print_family_evaluation(result: dict) -> None:
    if "error" in result:
        console.print(f"[yellow]measured evidence:[/] {escape(result['error'])}")
        return
    table = Table(title=f"Leave-one-family-out over the measured scenarios: {result['scenarios']} scenarios in "
                        f"{len(result['families'])} families ({result['ties']} with ties within one SE, each tie a "
                        "hit)")
    for column in ("method", "best ranked 1st", "best in top 3", "mean regret (points)"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, score in result["scores"].items():
        table.add_row(escape(method), f"{score['top1']:.0%}", f"{score['top3']:.0%}", f"{score['regret']:.2f}")
    console.print(table)
    winners = Table(title="Winners per family (scenarios won, ties counted for each)")
    winners.add_column("family")
    winners.add_column("winners")
    for family, counts in result["winners_by_family"].items():
        winners.add_row(escape(family), escape(", ".join(f"{s} {n}" for s, n in counts.items())))
    console.print(winners)


def _verify(recommendation: dict, data: Path, out: Path, k: int, options: dict, quiet: bool = False) -> dict:
    """``compare --search`` over the recommended top k (and ``ft``, the reference) on the user's data; whether the
    search's winner is the recommended first strategy, and what the search cost next to the full grid."""
    from typer.main import get_command

    from shiftkit.cli import app
    from shiftkit.compare.grid import parse_lrs
    from shiftkit.finetune.strategies import STRATEGY_CLASSES

    if k < 1:
        raise ConfigError(f"--k {k} must be at least 1")
    ranked = [a["strategy"] for a in recommendation["ranking"]]
    arms = ranked[:k] + (["ft"] if "ft" not in ranked[:k] else [])
    # the recommendation's order breaks the search's ties, so "agrees" is judged against the order it checks
    args = ["compare", str(data), "--out", str(out), "--search", "--strategies", ",".join(arms),
            "--order", ",".join(ranked)]
    for name, value in options.items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    was_quiet, console.quiet = console.quiet, quiet or console.quiet  # --json: only the JSON on stdout
    try:
        code = get_command(app).main(args, standalone_mode=False, prog_name="shiftkit")
    finally:
        console.quiet = was_quiet
    if code:  # compare printed its one-line error
        raise typer.Exit(code)
    try:
        arch, result = next(iter(json.loads((out / "search.json").read_text())["archs"].items()))
        winner, lr = result["winner"]["strategy"], result["winner"]["lr"]
        epochs_run, wall = result["epochs_run"], result["wall_seconds"]
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as exc:
        raise DataError(f"{out / 'search.json'}: cannot read the search's result ({exc!r})") from None
    grid_epochs = len(STRATEGY_CLASSES) * len(parse_lrs(options["lrs"])) * options["epochs"]
    return {"arms": arms, "arch": arch, "search_winner": winner, "search_winner_lr": lr,
            "recommended_first": ranked[0], "agrees": winner == ranked[0],
            "winner_rank_in_recommendation": ranked.index(winner) + 1,
            "epochs_run": epochs_run, "wall_seconds": wall,
            "full_grid_epochs_one_seed": grid_epochs, "cost_fraction": epochs_run / grid_epochs}


def _print_verification(v: dict) -> None:
    verdict = ("[bold green]the data agrees[/]" if v["agrees"] else
               f"[bold yellow]the data prefers #{v['winner_rank_in_recommendation']}[/]")
    console.print(f"verify: {verdict}: successive halving over {', '.join(v['arms'])} chose "
                  f"[bold]{escape(v['search_winner'])}[/] (lr {v['search_winner_lr']:g}); recommended first: "
                  f"{escape(v['recommended_first'])}; cost {v['epochs_run']} epochs ({v['wall_seconds']:.0f} s), "
                  f"{v['cost_fraction']:.0%} of the full grid's {v['full_grid_epochs_one_seed']} epochs for one seed")


@user_errors
def recommend(
    report: Optional[Path] = typer.Argument(None, help="report.json written by `shiftkit diagnose` (or its folder)."),
    arch: Optional[str] = typer.Option(None, help="Architecture you will fine-tune (default: the report's settings.arch)."),
    domain: Optional[str] = typer.Option(None, help="Imaging domain: X-ray, MRI, Histology, Dermoscopy, Endoscopy or other."),
    train_size: Optional[int] = typer.Option(None, help="Labelled target images you will fine-tune on (default: the report's labelled target images, else its source size)."),
    start: Optional[str] = typer.Option(None, help="imagenet or source: fine-tune from ImageNet weights or from your source model (finetune --init). Default: source when the report was made with --checkpoint."),
    top: Optional[int] = typer.Option(None, help="Show only the best N strategies."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Print the leave-one-family-out scores over the measured scenarios and the leave-one-dataset-out hit rates over the published evidence."),
    evidence: Optional[Path] = typer.Option(None, help="Scenario evidence (JSON lines) instead of the packaged one."),
    verify: Optional[Path] = typer.Option(None, help="Labelled target data: run `compare --search` over the recommended top K (and ft) on it and say whether it agrees."),
    out: Optional[Path] = typer.Option(None, help="--verify: output folder of the search."),
    k: int = typer.Option(3, "--k", help="--verify: how many recommended strategies to search over."),
    val: ValOption = None,
    test: Optional[Path] = typer.Option(None, help="--verify: test data, evaluated once per run."),
    init: InitOption = None,
    lrs: str = typer.Option("1e-3,1e-4", help="--verify: learning rates per strategy."),
    epochs: int = typer.Option(20, help="--verify: maximum epochs per arm."),
    image_size: ImageSizeOption = None,
    cache_dir: CacheDirOption = None,
) -> None:
    """Which fine-tuning strategy for this shift? A ranking with expected gains over ft and checkable reasons."""
    from shiftkit.recommend.evaluate import leave_one_dataset_out
    from shiftkit.recommend.family_eval import leave_one_family_out
    from shiftkit.recommend.measured import recommend_for_report
    from shiftkit.recommend.recommender import ShiftFacts
    from shiftkit.recommend.scenario_evidence import EVIDENCE_FILE, load_scenarios

    if report is None and not evaluate:
        raise ConfigError("give a REPORT.json written by `shiftkit diagnose`, or --evaluate")
    if verify is not None and (report is None or out is None):
        raise ConfigError("--verify DATA needs a REPORT to recommend from and --out for the search")
    evidence = evidence or EVIDENCE_FILE
    output: dict = {}
    if evaluate:
        try:
            measured = leave_one_family_out(load_scenarios(evidence)).to_dict()
        except DataError as exc:
            measured = {"error": str(exc)}
        output["evaluation"] = {"measured": measured, "published": leave_one_dataset_out().to_dict()}
    if report is not None:
        data = _read_report(report)
        try:
            ShiftFacts.from_report(data)  # a malformed report says what is wrong before anything else
        except DataError as exc:
            raise DataError(f"{report}: {exc}") from None
        arch = arch or (data.get("settings") or {}).get("arch")
        if not isinstance(arch, str) or not arch:
            raise ConfigError(f"{report}: the report names no architecture; give --arch")
        if init is not None:
            if start == "imagenet":
                raise ConfigError("--init starts from your source model: leave out --start imagenet")
            start = "source"
        try:  # the whole ranking: --verify searches its top K even when --top shows fewer
            full = recommend_for_report(data, arch, budget=train_size, start=start, domain=domain,
                                        evidence=evidence)
        except DataError as exc:
            raise DataError(f"{report}: {exc}") from None
        if top is not None and top < 1:
            raise ConfigError(f"--top {top} must be at least 1")
        output["recommendation"] = {**full, "ranking": full["ranking"][:top] if top else full["ranking"]}
    if verify is not None:
        options = {"val": val, "test": test, "init": init, "lrs": lrs, "epochs": epochs, "image_size": image_size,
                   "cache_dir": cache_dir, "archs": None if init is not None else arch}
        output["verification"] = _verify(full, verify, out, k, options, quiet=as_json)
    if as_json:
        print(json.dumps(output if len(output) > 1 else next(iter(output.values())), indent=2))
        return
    if "evaluation" in output:
        _print_family_evaluation(output["evaluation"]["measured"])
        _print_evaluation(output["evaluation"]["published"])
    if "recommendation" in output:
        print_recommendation(output["recommendation"], console)
    if "verification" in output:
        _print_verification(output["verification"])
