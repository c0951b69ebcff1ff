"""``shiftkit compare``: the paper's grid of strategies × architectures × learning rates × seeds (resumable,
shardable), its tables and plots; or ``--search`` for the best strategy at a fraction of the cost."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from shiftkit.cli.common import (MAX_LEARNING_RATE, check_number, console, err_console, output_folder, parse_window,
                                 user_errors)
from shiftkit.cli.options import (AlphaOption, BetaOption, ClassWeightOption, LpSolverOption, ProtocolOption,
                                  RgnWeightDecayOption, SpUpdateOption, training_settings)
from shiftkit.cli.progress import make_progress
from shiftkit.io import LOCK_NAME
from shiftkit.compare.grid import (
    CompareSettings,
    finetune_run,
    parse_archs,
    parse_lrs,
    parse_shard,
    parse_strategies,
    plan_grid,
    recorded,
    run_grid,
    shard_plan,
)
from shiftkit.compare.report import write_compare_report, write_search_report
from shiftkit.compare.search import Arm, check_budgets, finetune_arms, rung_budgets, successive_halving
from shiftkit.compare.tables import CompareTable, build_table, format_cell
from shiftkit.data.preprocess import check_image_size
from shiftkit.data.readers import ReadOptions
from shiftkit.errors import ConfigError, ShiftkitError
from shiftkit.finetune.metrics import METRICS
from shiftkit.finetune.run import VAL_FRACTION
from shiftkit.finetune.strategies import STRATEGIES
from shiftkit.finetune.trainer import resolve_device
from shiftkit.overwrite import refuse_overwriting_inputs


class GridProgress:
    """One bar over runs, one over the current run's epochs (and image decoding); a log line per run."""

    def __init__(self, progress, total_runs: int, epochs: int) -> None:
        self.progress, self.epochs = progress, epochs
        self.runs = progress.add_task("runs", total=total_runs, status="")
        self.task = None
        self.label = ""

    def start_run(self, label: str) -> None:
        self.label = label
        self.progress.update(self.runs, status=label)

    def finish_run(self, line: str) -> None:
        self.progress.advance(self.runs)
        self.progress.console.print(line, highlight=False)

    def _replace(self, description: str, total: int, status: str = "") -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total, status=status)

    # image decoding (run_finetune's on_stage)
    def __call__(self, description: str, total: int) -> None:
        self._replace(f"  {description}", total)

    def advance(self) -> None:
        self.progress.advance(self.task)

    # the trainer's callback
    def on_epoch_start(self, epoch: int, batches: int, description: str) -> None:
        self._replace(f"  epoch {epoch + 1}/{self.epochs}", batches, description)

    def on_batch(self) -> None:
        self.progress.advance(self.task)

    def on_epoch_end(self, entry: dict) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None


def _split_metrics(text: Optional[str]) -> list[str]:
    if text is None:
        return list(METRICS)
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if not names or unknown:
        raise ConfigError(f"--metrics '{text}': choose among {', '.join(METRICS)}")
    return names


def _check(settings: CompareSettings, seeds: int) -> None:
    if settings.epochs < 1 or settings.batch_size < 1 or settings.patience < 1 or seeds < 1:
        raise ConfigError("--epochs, --batch-size, --patience and --seeds must be at least 1")
    check_image_size(settings.image_size)  # the one rule (shiftkit.data.preprocess) every command uses
    if settings.monitor != "auto" and settings.monitor not in METRICS:
        raise ConfigError(f"unknown --monitor '{settings.monitor}' (choose auto, {', '.join(METRICS)})")
    settings.strategy_config().validate()
    resolve_device(settings.device)
    for path in (settings.data, settings.val, settings.test):
        if path is not None and not path.exists():
            raise ConfigError(f"{path}: not found")


def recommender_ranking(settings: CompareSettings, arch: str) -> tuple[list[str], str]:
    """The recommender's ranking of strategies for this data and architecture, best first (the registry's
    order when ``shiftkit.recommend`` is not installed)."""
    try:
        from shiftkit.recommend.recommender import ShiftFacts, recommend
    except ImportError:
        return list(STRATEGIES), "registry order (shiftkit.recommend.recommender is not available)"
    from shiftkit.data.table import load_table

    table = load_table(settings.data)
    counts = [c for c in table.class_counts().values() if c > 0]
    train_size = len(table) if settings.val is not None else int(round(len(table) * (1 - VAL_FRACTION)))
    facts = ShiftFacts(train_size=train_size, num_classes=len(table.classes),
                       imbalance=max(counts) / min(counts) if counts else 1.0, multilabel=table.multilabel)
    return [item.strategy for item in recommend(facts, arch).ranking], "recommender"


def _rich_table(table: CompareTable) -> Table:
    out = Table(title=f"mean (SE) over seeds, {table.split} split, % (bold: best in column)")
    out.add_column("strategy")
    for a in table.archs:
        for m in table.metrics:
            out.add_column(f"{a}\n{m}", justify="right")
    for s in table.strategies:
        cells = []
        for a in table.archs:
            for m in table.metrics:
                text = format_cell(table.cells.get((s, a, m)))
                cells.append(f"[bold green]{text}[/]" if s in table.best.get((a, m), ()) else text)
        out.add_row(s, *cells)
    return out


def _grid(settings, plan, out, shard, report_only, metrics, archs, strategies, seeds) -> None:
    if report_only:
        outcome = recorded(plan, settings, out)
    else:
        mine = shard_plan(plan, shard)
        with make_progress(err_console) as progress:
            bar = GridProgress(progress, len(mine), settings.epochs)
            done_before = len(mine)

            def on_start(spec, position, todo):
                if position == 0:
                    progress.update(bar.runs, completed=done_before - todo)
                bar.start_run(spec.key())

            def on_done(spec, record):
                value = (record.get("val") or {}).get(record.get("monitor"))
                shown = "—" if value is None else f"{value:.4f}"
                bar.finish_run(f"{spec.key()}: val {record.get('monitor')} {shown}, "
                               f"{record['epochs_run']} epochs, {record['seconds']:.1f} s")

            outcome = run_grid(plan, settings, out, shard,
                               run=lambda spec, s, folder: finetune_run(spec, s, folder, callback=bar, on_stage=bar),
                               on_start=on_start, on_done=on_done)
        err_console.print(f"ran {len(outcome.ran)} runs, {len(outcome.skipped)} already recorded in {out}", markup=False)
        if outcome.missing and shard is not None:
            err_console.print(f"shard {shard[0]}/{shard[1]} is done; {len(outcome.missing)} runs of the grid belong "
                              "to other shards and are not recorded yet: when all shards finish, rerun with "
                              "--report-only (or any shard) to write the tables")
            return
    if not outcome.records:
        raise ConfigError(f"{out}: none of the planned runs is recorded yet; run without --report-only first")
    if outcome.missing:
        err_console.print(f"[yellow]warning:[/] {len(outcome.missing)} of {len(plan)} planned runs are not recorded; "
                          "the table covers the others")
    table = build_table(outcome.records, metrics, archs=archs, strategies=strategies)
    write_compare_report(out, table, {"missing": [s.key() for s in outcome.missing], "runs": len(outcome.records),
                                      "seeds": seeds, "settings": settings.identity()})
    console.print(_rich_table(table))
    for arch in table.archs:
        console.print(f"{arch}: best {table.split} {table.main_metric}: [bold]{table.winner(arch)}[/]")
    console.print(f"wrote {out / 'compare.md'}, compare.json, compare.html and plots/", markup=False)


def _grid_comparison(settings, out, arch, strategies, lrs, seeds, metrics, result, search_seed: int) -> dict:
    """How the search's winner fares in the full grid recorded in ``out`` (if any), and the cost ratio."""
    plan = plan_grid([arch], strategies, lrs, range(seeds))
    try:
        outcome = recorded(plan, settings, out)
    except ShiftkitError:  # no grid in this folder
        outcome = None
    upper = len(plan) * settings.epochs
    if outcome is None or not outcome.records:
        return {"grid_recorded": False, "grid_epochs_upper_bound": upper,
                "cost_fraction_of_upper_bound": result.epochs_run / upper}
    table = build_table(outcome.records, metrics, archs=[arch], strategies=strategies)
    main = table.main_metric
    ordered = sorted((s for s in strategies if table.value(s, arch, main) is not None),
                     key=lambda s: -table.value(s, arch, main))
    winner = table.winner(arch)
    found = result.winner.strategy
    grid_epochs = sum(r["epochs_run"] for r in outcome.records)
    # The search trains one seed; the grid trains every seed. Report both ratios, so neither flatters it.
    seed_epochs = sum(r["epochs_run"] for r in outcome.records if r["seed"] == search_seed)
    winner_value, found_value = table.value(winner, arch, main), table.value(found, arch, main)
    val_means = {s: c["val_means"][f"{c['lr']:g}"] for (a, s), c in table.chosen.items() if a == arch}
    val_winner = max((s for s in strategies if val_means.get(s) is not None), key=val_means.get, default=None)
    return {
        "grid_recorded": True,
        "grid_complete": not outcome.missing,
        "grid_winner": winner,
        "grid_winner_by_validation": val_winner,
        "found_grid_winner": found == winner,
        "search_winner_rank_in_grid": ordered.index(found) + 1 if found in ordered else None,
        "metric": f"{table.split} {main}",
        "grid_winner_value": winner_value,
        "search_winner_value": found_value,
        "gap": winner_value - found_value if None not in (winner_value, found_value) else None,
        "grid_epochs": grid_epochs,
        "cost_fraction": result.epochs_run / grid_epochs if grid_epochs else None,
        "grid_epochs_search_seed": seed_epochs,
        "cost_fraction_of_one_seed": result.epochs_run / seed_epochs if seed_epochs else None,
        "grid_wall_seconds": sum(r["seconds"] for r in outcome.records),
    }


def _search(settings, out, archs, strategies, lrs, seeds, metrics, eta, budgets, max_arms, seed) -> None:
    from shiftkit.compare.grid import check_settings

    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings)
    report = {"settings": settings.identity(), "seed": seed, "archs": {}}
    for arch in archs:
        ranking, source = recommender_ranking(settings, arch)
        arms = [Arm(s, lr) for s in strategies for lr in lrs]
        rungs = check_budgets(budgets, settings.epochs) if budgets else rung_budgets(settings.epochs, eta, len(arms))
        err_console.print(f"{arch}: successive halving over {len(arms)} arms, budgets {rungs} epochs, eta {eta}; "
                          f"order from the {source}: {', '.join(ranking)}")
        with make_progress(err_console) as progress:
            bar = GridProgress(progress, len(arms), settings.epochs)
            train = finetune_arms(settings, arch, seed, out, callback=bar)

            def tracked(arm, budget):
                bar.start_run(f"{arm.label()} to {budget} epochs")
                outcome = train(arm, budget)
                shown = "—" if outcome.score is None else f"{outcome.score:.4f}"
                bar.finish_run(f"{arch} {arm.label()}: {outcome.epochs} epochs, val score {shown}")
                return outcome

            def on_rung(index, budget, n):
                progress.update(bar.runs, total=n, completed=0)
                progress.console.print(f"rung {index + 1}/{len(rungs)}: {n} arms to {budget} epochs")

            result = successive_halving(arms, tracked, rungs, eta, ranking, max_arms, on_rung=on_rung)
        comparison = _grid_comparison(settings, out, arch, strategies, lrs, seeds, metrics, result, seed)
        report["archs"][arch] = {**result.to_dict(), "ranking_source": source, "comparison": comparison}
        console.print(f"{arch}: search winner [bold]{result.winner.label()}[/] after {result.epochs_run} epochs "
                      f"({result.wall_seconds:.0f} s)")
        if comparison["grid_recorded"]:
            verdict = "found" if comparison["found_grid_winner"] else "did not find"
            console.print(f"  {verdict} the grid's winner {comparison['grid_winner']} (search winner ranks "
                          f"{comparison['search_winner_rank_in_grid']} on {comparison['metric']}, gap "
                          f"{100 * (comparison['gap'] or 0):.2f} points) at {100 * comparison['cost_fraction']:.0f} % "
                          f"of the grid's {comparison['grid_epochs']} epochs (all seeds; "
                          f"{100 * (comparison['cost_fraction_of_one_seed'] or 0):.0f} % of its "
                          f"{comparison['grid_epochs_search_seed']} epochs for the search's seed)")
        else:
            console.print(f"  no grid in {out} to check against; {100 * comparison['cost_fraction_of_upper_bound']:.0f} "
                          f"% of the full grid's at most {comparison['grid_epochs_upper_bound']} epochs", markup=False)
    write_search_report(out, report)
    console.print(f"wrote {out / 'search.json'}", markup=False)


@user_errors
def compare(
    data: Path = typer.Argument(..., help="Training data: class folders or a CSV manifest."),
    out: Path = typer.Option(..., "--out", help="Output folder: runs.jsonl, runs/, compare.md/.json/.html, plots/."),
    strategies: str = typer.Option("all", help=f"all, or a comma-separated list of {', '.join(STRATEGIES)}."),
    archs: str = typer.Option("resnet50", help="Comma-separated architectures (resnet50, densenet121, vgg19, resnet18, efficientnet_lite0)."),
    lrs: str = typer.Option("1e-3,1e-4,1e-5", help="Comma-separated learning rates; the best per strategy is chosen on validation."),
    seeds: int = typer.Option(3, help="Seeds per cell: 0 .. SEEDS-1."),
    val: Optional[Path] = typer.Option(None, help="Validation data; default: a stratified 20% split of DATA per seed."),
    test: Optional[Path] = typer.Option(None, help="Test data (reported in the table); without it, the table reports validation."),
    weights: str = typer.Option("imagenet", help="imagenet, a path to a state dict, or none."),
    epochs: int = typer.Option(50, help="Maximum epochs per run (the paper: 50)."),
    patience: int = typer.Option(5, help="Early stopping patience (the paper: 5)."),
    batch_size: int = typer.Option(64, help="Batch size (the paper: 64)."),
    image_size: Optional[int] = typer.Option(None, help="Crop size (default 224); smaller trains faster on a CPU."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    cache_dir: Optional[Path] = typer.Option(None, help="Disk cache for decoded images, shared by all runs."),
    monitor: str = typer.Option("auto", help="Validation metric for early stopping and choosing the lr: auto, map, accuracy, auroc, kappa, f1."),
    metrics: Optional[str] = typer.Option(None, help="Table columns per architecture (default: map,accuracy,auroc,kappa,f1)."),
    epochs_per_block: Optional[int] = typer.Option(None, help="g_lf/g_fl: epochs per unfrozen block."),
    lp_epochs: int = typer.Option(5, help="lp_ft: epochs of linear probing first."),
    protocol: ProtocolOption = "shiftkit",
    lp_solver: LpSolverOption = None,
    class_weight: ClassWeightOption = None,
    sp_update: SpUpdateOption = None,
    alpha: AlphaOption = None,
    beta: BetaOption = None,
    rgn_batches: int = typer.Option(5, help="auto_rgn: batches per epoch for the relative gradient norms."),
    rgn_weight_decay: RgnWeightDecayOption = 1e-4,
    window: Optional[str] = typer.Option(None, help="Intensity window LOW,HIGH for 16-bit/medical images."),
    slice_index: Optional[int] = typer.Option(None, "--slice", help="Axial slice of 3-D volumes."),
    shard: Optional[str] = typer.Option(None, help="I/N: run only shard I (0-based) of N; e.g. --shard $SLURM_ARRAY_TASK_ID/N."),
    report_only: bool = typer.Option(False, "--report-only", help="Train nothing: merge the recorded runs (all shards) into the tables."),
    search: bool = typer.Option(False, "--search", help="Successive halving over (strategy, lr) instead of the full grid."),
    eta: int = typer.Option(3, help="--search: keep the best 1/ETA arms after each rung."),
    budgets: Optional[str] = typer.Option(None, help="--search: rung budgets in epochs, e.g. 1,3,9 (default: geometric up to --epochs)."),
    max_arms: Optional[int] = typer.Option(None, help="--search: start only the top-ranked MAX_ARMS arms of the recommender's order."),
    search_seed: int = typer.Option(0, help="--search: the seed of the search's runs."),
) -> None:
    """Compare fine-tuning strategies as the paper does (best lr on validation, mean (SE) over seeds)."""
    for value, option in ((alpha, "--alpha"), (beta, "--beta"), (rgn_weight_decay, "--rgn-weight-decay")):
        if value is not None:
            check_number(value, option, minimum=0)
    train_settings, strategy_settings = training_settings(protocol, lp_solver, class_weight, sp_update, alpha, beta)
    read_options = ReadOptions(window=parse_window(window), slice_index=slice_index)
    strategy_list, arch_list, lr_list = parse_strategies(strategies), parse_archs(archs), parse_lrs(lrs)
    for lr in lr_list:
        check_number(lr, "--lrs", above=0, maximum=MAX_LEARNING_RATE)
    shard_spec = parse_shard(shard)
    refuse_overwriting_inputs(out, [out / name for name in ("runs.jsonl", "compare.md", "compare.json", "compare.html",
                                                           "search.json")],
                              {"data": data, "validation data": val, "test data": test},
                              scanned=("data", "validation data", "test data"))
    # shards of one grid run at once into one folder (each appends to its own runs file): one lock per shard
    out = output_folder(out, lock_name=f".shiftkit-shard-{shard_spec[0]}-of-{shard_spec[1]}.lock" if shard_spec
                        else LOCK_NAME)
    metric_list = _split_metrics(metrics)
    settings = CompareSettings(
        data=data, val=val, test=test, weights=weights, epochs=epochs, patience=patience, batch_size=batch_size,
        image_size=image_size, monitor=monitor, epochs_per_block=epochs_per_block, lp_epochs=lp_epochs,
        rgn_batches=rgn_batches, rgn_weight_decay=rgn_weight_decay, **train_settings, **strategy_settings,
        read_options=read_options, device=device, cache_dir=cache_dir,
    )
    _check(settings, seeds)
    if search:
        if shard_spec is not None or report_only:
            raise ConfigError("--search runs on one machine: leave out --shard and --report-only")
        budget_list = None
        if budgets is not None:
            try:
                budget_list = [int(b) for b in budgets.split(",")]
            except ValueError:
                raise ConfigError(f"--budgets '{budgets}' must be whole numbers of epochs, e.g. 1,3,9") from None
        if max_arms is not None and max_arms < 1:
            raise ConfigError("--max-arms must be at least 1")
        _search(settings, out, arch_list, strategy_list, lr_list, seeds, metric_list, eta, budget_list, max_arms,
                search_seed)
        return
    plan = plan_grid(arch_list, strategy_list, lr_list, range(seeds))
    _grid(settings, plan, out, shard_spec, report_only, metric_list, arch_list, strategy_list, seeds)
