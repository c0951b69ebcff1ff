"""``shiftkit compare``: the paper's grid of strategies × architectures × learning rates × seeds (resumable,
shardable), its tables and plots; or ``--search`` for the best strategy at a fraction of the cost."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from shiftkit.cli.common import (MAX_LEARNING_RATE, check_number, console, err_console, output_folder, parse_window,
                                 user_errors)
from shiftkit.cli.options import (BatchSizeOption, CacheDirOption, DeviceOption, ImageSizeOption, InitOption,
                                  MonitorOption, PatienceOption, SliceOption, ValOption, WindowOption,
                                  hyperparameter_options, training_settings)
from shiftkit.cli.progress import make_progress
from shiftkit.compare.grid import (
    CompareSettings,
    check_settings,
    finetune_run,
    parse_archs,
    parse_lrs,
    parse_metrics,
    parse_shard,
    parse_strategies,
    plan_grid,
    recorded,
    run_grid,
    shard_plan,
)
from shiftkit.compare.ranking import recommender_ranking
from shiftkit.compare.report import write_compare_report, write_search_report
from shiftkit.compare.search import Arm, check_budgets, finetune_arms, rung_budgets, successive_halving
from shiftkit.compare.tables import CompareTable, build_table, format_cell
from shiftkit.compare.versus_grid import grid_comparison
from shiftkit.data.readers import ReadOptions
from shiftkit.errors import ConfigError
from shiftkit.finetune.config import TrainConfig
from shiftkit.finetune.start import check_arch, check_weights, read_init
from shiftkit.finetune.strategies import STRATEGY_CLASSES
from shiftkit.io import LOCK_NAME
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
    def __call__(self, description: str, total: int):  # a StageHook (shiftkit.hooks): returns the tick
        self._replace(f"  {description}", total)
        return self.advance

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


def _search(settings, out, archs, strategies, lrs, seeds, metrics, eta, budgets, max_arms, seed, order=None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings)
    report = {"settings": settings.identity(), "seed": seed, "archs": {}}
    for arch in archs:
        ranking, source = (order, "--order option") if order else recommender_ranking(settings, arch)
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
        comparison = grid_comparison(settings, out, arch, strategies, lrs, seeds, metrics, result, seed)
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
@hyperparameter_options
def compare(
    data: Path = typer.Argument(..., help="Training data: class folders or a CSV manifest."),
    out: Path = typer.Option(..., "--out", help="Output folder: runs.jsonl, runs/, compare.md/.json/.html, plots/."),
    strategies: str = typer.Option("all", help=f"all, or a comma-separated list of {', '.join(STRATEGY_CLASSES)}."),
    archs: Optional[str] = typer.Option(None, help="Comma-separated architectures (resnet50, densenet121, vgg19, resnet18, efficientnet_lite0). Default resnet50; with --init, the checkpoint's."),
    lrs: str = typer.Option("1e-3,1e-4,1e-5", help="Comma-separated learning rates; the best per strategy is chosen on validation."),
    seeds: int = typer.Option(3, help="Seeds per cell: 0 .. SEEDS-1."),
    val: ValOption = None,
    test: Optional[Path] = typer.Option(None, help="Test data (reported in the table); without it, the table reports validation."),
    weights: Optional[str] = typer.Option(None, help="imagenet (default), a path to a state dict, or none."),
    init: InitOption = None,
    epochs: int = typer.Option(TrainConfig.epochs, help="Maximum epochs per run (the paper: 50)."),
    patience: PatienceOption = TrainConfig.patience,
    batch_size: BatchSizeOption = TrainConfig.batch_size,
    image_size: ImageSizeOption = None,
    device: DeviceOption = TrainConfig.device,
    cache_dir: CacheDirOption = None,
    monitor: MonitorOption = TrainConfig.monitor,
    metrics: Optional[str] = typer.Option(None, help="Table columns per architecture (default: map,accuracy,auroc,kappa,f1)."),
    hyperparameters: dict = None,  # --epochs-per-block ... --rgn-weight-decay: cli.options.HYPERPARAMETERS
    window: WindowOption = None,
    slice_index: SliceOption = None,
    shard: Optional[str] = typer.Option(None, help="I/N: run only shard I (0-based) of N; e.g. --shard $SLURM_ARRAY_TASK_ID/N."),
    report_only: bool = typer.Option(False, "--report-only", help="Train nothing: merge the recorded runs (all shards) into the tables."),
    search: bool = typer.Option(False, "--search", help="Successive halving over (strategy, lr) instead of the full grid."),
    eta: int = typer.Option(3, help="--search: keep the best 1/ETA arms after each rung."),
    budgets: Optional[str] = typer.Option(None, help="--search: rung budgets in epochs, e.g. 1,3,9 (default: geometric up to --epochs)."),
    max_arms: Optional[int] = typer.Option(None, help="--search: start only the top-ranked MAX_ARMS arms of the recommender's order."),
    search_seed: int = typer.Option(0, help="--search: the seed of the search's runs."),
    order: Optional[str] = typer.Option(None, help="--search: the arms' order (it breaks ties and picks --max-arms), comma-separated strategies; default: the recommender's ranking from the data's facts."),
) -> None:
    """Compare fine-tuning strategies as the paper does (best lr on validation, mean (SE) over seeds)."""
    for name, option in (("alpha", "--alpha"), ("beta", "--beta"), ("rgn_weight_decay", "--rgn-weight-decay")):
        check_number(hyperparameters[name], option, minimum=0)
    train_settings, strategy_config = training_settings(hyperparameters)
    read_options = ReadOptions(window=parse_window(window), slice_index=slice_index)
    check_weights(init, weights)
    start = read_init(init) if init is not None else None
    if start is not None and archs is None:
        archs = start.arch
    strategy_list, arch_list, lr_list = parse_strategies(strategies), parse_archs(archs or "resnet50"), parse_lrs(lrs)
    for arch in arch_list if start is not None else ():
        check_arch(start, arch)
    for lr in lr_list:
        check_number(lr, "--lrs", above=0, maximum=MAX_LEARNING_RATE)
    shard_spec = parse_shard(shard)
    refuse_overwriting_inputs(out, [out / name for name in ("runs.jsonl", "compare.md", "compare.json", "compare.html",
                                                           "search.json")],
                              {"data": data, "validation data": val, "test data": test, "init checkpoint": init},
                              scanned=("data", "validation data", "test data"))
    # shards of one grid run at once into one folder (each appends to its own runs file): one lock per shard
    out = output_folder(out, lock_name=f".shiftkit-shard-{shard_spec[0]}-of-{shard_spec[1]}.lock" if shard_spec
                        else LOCK_NAME)
    metric_list = parse_metrics(metrics)
    settings = CompareSettings(
        data=data, val=val, test=test, weights=weights or "imagenet", image_size=image_size, read_options=read_options,
        cache_dir=cache_dir, strategy=strategy_config, init=init,
        train=TrainConfig(epochs=epochs, patience=patience, batch_size=batch_size, monitor=monitor, device=device,
                          **train_settings),
    )
    settings.check(seeds)
    if order is not None and not search:
        raise ConfigError("--order orders the arms of --search: add --search, or leave it out")
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
                search_seed, parse_strategies(order) if order is not None else None)
        return
    plan = plan_grid(arch_list, strategy_list, lr_list, range(seeds))
    _grid(settings, plan, out, shard_spec, report_only, metric_list, arch_list, strategy_list, seeds)
