"""How the search's winner fares in the full grid recorded in the same folder, and what the search cost next to it
(``search.json``'s ``comparison``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from shiftkit.compare.grid import CompareSettings, plan_grid, recorded
from shiftkit.compare.search import SearchResult
from shiftkit.compare.tables import build_table
from shiftkit.errors import ShiftkitError


def grid_comparison(settings: CompareSettings, out: Path, arch: str, strategies: Sequence[str],
                    lrs: Sequence[float], seeds: int, metrics: Sequence[str], result: SearchResult,
                    search_seed: int) -> dict:
    """The grid's winner and the search winner's rank and gap on the grid's main metric, and the search's epochs as
    a fraction of the grid's (all seeds, and the search's seed alone); without a grid, of the grid's upper bound."""
    plan = plan_grid([arch], strategies, lrs, range(seeds))
    try:
        outcome = recorded(plan, settings, out)
    except ShiftkitError:  # no grid in this folder
        outcome = None
    upper = len(plan) * settings.epochs
    if outcome is None or not outcome.records:
        return {"grid_recorded": False, "grid_epochs_upper_bound": upper,
                "cost_fraction_of_upper_bound": result.epochs_run / upper}
    table = build_table(outcome.records, list(metrics), archs=[arch], strategies=list(strategies))
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
