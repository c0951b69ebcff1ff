"""Find the best (strategy, learning rate) without the full grid: successive halving (Jamieson & Talwalkar
2016; the synchronous rungs of Li et al.'s Hyperband).

Every arm trains for the first rung's budget (epochs); the best 1/η by validation move up to the next,
larger budget, and so on until the last rung. An arm's runs are all configured for the *full* number of
epochs (so a staged strategy's schedule is the grid's) and simply stopped at the rung's budget; a promoted
arm resumes from its last checkpoint, so no epoch is paid for twice, and an interrupted search resumes too.
A run is stopped at its budget by its training callback returning :data:`~shiftkit.hooks.STOP`, which leaves it
unfinished (``last.pt``, no ``metrics.json``) and resumable.
The recommender's ranking warm-starts the search: arms run in its order, ties are broken by it, and
``max_arms`` keeps only the top-ranked arms.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from shiftkit.compare.grid import CompareSettings, RunSpec, finetune_run
from shiftkit.errors import ConfigError
from shiftkit.finetune.early_stopping import entry_score
from shiftkit.hooks import STOP, TrainerCallback


@dataclass(frozen=True)
class Arm:
    strategy: str
    lr: float

    def label(self) -> str:
        return f"{self.strategy}@{self.lr:g}"


@dataclass(frozen=True)
class ArmProgress:
    """Where an arm stands after a rung: its best validation score within the budget, the epochs it has
    trained in total, and whether it can train no further (early stopping or the full epochs reached)."""

    score: float | None
    epochs: int
    finished: bool = False


TrainArm = Callable[[Arm, int], ArmProgress]
"""``train(arm, budget)``: bring ``arm`` to ``budget`` epochs in total (resuming), report its progress."""


@dataclass
class SearchResult:
    winner: Arm
    winner_score: float | None
    budgets: list[int]
    eta: int
    ranking: list[str]
    rungs: list[dict] = field(default_factory=list)
    epochs_run: int = 0
    wall_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "winner": {"strategy": self.winner.strategy, "lr": self.winner.lr, "val_score": self.winner_score},
            "budgets": self.budgets,
            "eta": self.eta,
            "ranking": self.ranking,
            "rungs": self.rungs,
            "epochs_run": self.epochs_run,
            "wall_seconds": self.wall_seconds,
        }


def rung_budgets(max_epochs: int, eta: int, arms: int) -> list[int]:
    """Geometric budgets ending at ``max_epochs`` (…, max/η², max/η, max), as many rungs as halvings are
    needed to get from ``arms`` arms to one and as the epochs allow (each budget at least 1, increasing)."""
    if max_epochs < 1 or eta < 2:
        raise ConfigError("the search needs --epochs >= 1 and --eta >= 2")
    rungs = 1 + min(math.ceil(math.log(max(arms, 1), eta) - 1e-9), int(math.log(max_epochs, eta) + 1e-9))
    budgets = sorted({max(1, round(max_epochs / eta ** k)) for k in range(rungs)})
    return budgets


def check_budgets(budgets: Sequence[int], max_epochs: int) -> list[int]:
    budgets = list(budgets)
    if not budgets or any(b < 1 for b in budgets) or any(b >= c for b, c in zip(budgets, budgets[1:])):
        raise ConfigError(f"--budgets {','.join(map(str, budgets))}: need increasing whole numbers of epochs >= 1")
    if budgets[-1] > max_epochs:
        raise ConfigError(f"--budgets: the last budget ({budgets[-1]}) exceeds --epochs ({max_epochs})")
    return budgets


def order_arms(arms: Sequence[Arm], ranking: Sequence[str]) -> list[Arm]:
    """Arms in the recommender's order (unranked strategies last, as given); learning rates as given."""
    position = {name: i for i, name in enumerate(ranking)}
    return sorted(arms, key=lambda arm: position.get(arm.strategy, len(position)))  # sorted() is stable


def successive_halving(
    arms: Sequence[Arm],
    train: TrainArm,
    budgets: Sequence[int],
    eta: int = 3,
    ranking: Sequence[str] = (),
    max_arms: int | None = None,
    on_rung: Callable[[int, int, int], None] | None = None,
) -> SearchResult:
    """Keep the best ceil(n/η) arms after each rung; return the last rung's best and what it cost."""
    if not arms:
        raise ConfigError("the search has no arms (strategies × learning rates)")
    if eta < 2:
        raise ConfigError(f"--eta must be at least 2 (got {eta})")
    started = time.perf_counter()
    survivors = order_arms(arms, ranking)
    if max_arms is not None:
        survivors = survivors[: max(1, max_arms)]
    rank = {arm: i for i, arm in enumerate(survivors)}
    epochs_so_far = {arm: 0 for arm in survivors}
    result = SearchResult(winner=survivors[0], winner_score=None, budgets=list(budgets), eta=eta,
                          ranking=list(ranking))
    standing: dict[Arm, ArmProgress] = {}
    for index, budget in enumerate(budgets):
        if on_rung:
            on_rung(index, budget, len(survivors))
        entries = []
        for arm in survivors:
            progress = train(arm, budget)
            spent = max(0, progress.epochs - epochs_so_far[arm])
            epochs_so_far[arm] = max(epochs_so_far[arm], progress.epochs)
            result.epochs_run += spent
            standing[arm] = progress
            entries.append({"strategy": arm.strategy, "lr": arm.lr, "score": progress.score,
                            "epochs": progress.epochs, "epochs_this_rung": spent, "finished": progress.finished})
        survivors = sorted(survivors, key=lambda a: (-_score(standing[a]), rank[a]))
        last = index == len(budgets) - 1
        keep = len(survivors) if last else max(1, math.ceil(len(survivors) / eta))
        promoted = survivors[:keep] if not last else []
        result.rungs.append({"budget": budget, "arms": entries,
                             "promoted": [a.label() for a in promoted]})
        if last:
            break
        survivors = promoted
    result.winner = survivors[0]
    result.winner_score = standing[result.winner].score
    result.wall_seconds = time.perf_counter() - started
    return result


def _score(progress: ArmProgress) -> float:
    return -math.inf if progress.score is None else progress.score


# -- arms trained by run_finetune ------------------------------------------------------------------------
class _Budget:
    """The training callback of one rung: passes every event on to ``inner`` (the display) and stops the run
    once the rung's budget of epochs is trained (the trainer has written last.pt; the next rung resumes it)."""

    def __init__(self, budget: int, max_epochs: int, inner: TrainerCallback | None = None) -> None:
        self.budget, self.max_epochs, self.inner = budget, max_epochs, inner

    def on_epoch_start(self, epoch: int, batches: int, description: str) -> None:
        if self.inner:
            self.inner.on_epoch_start(epoch, batches, description)

    def on_batch(self) -> None:
        if self.inner:
            self.inner.on_batch()

    def on_epoch_end(self, entry: dict) -> bool | None:
        inner_stops = self.inner.on_epoch_end(entry) if self.inner else None
        if entry["epoch"] >= self.budget and self.budget < self.max_epochs and not entry.get("stop"):
            return STOP
        return inner_stops


def score_within(history: Sequence[dict], budget: int) -> float | None:
    """The best monitored validation value over the first ``budget`` epochs (what the best checkpoint of a
    run stopped there would score); validation loss counts negated when the metric was undefined."""
    values = [score for score in map(entry_score, history[:budget]) if score is not None]
    return max(values) if values else None


def _history(folder: Path) -> tuple[list[dict], bool]:
    metrics = folder / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())["history"], True
    last = folder / "checkpoints" / "last.pt"
    if last.is_file():
        return list(torch.load(last, map_location="cpu", weights_only=True)["history"]), False
    return [], False


def finetune_arms(settings: CompareSettings, arch: str, seed: int, out: Path, callback=None) -> TrainArm:
    """A ``train(arm, budget)`` that fine-tunes into ``out/search/<arch>/<strategy>/lr<lr>_seed<seed>/``."""

    def train(arm: Arm, budget: int) -> ArmProgress:
        folder = RunSpec(arch, arm.strategy, arm.lr, seed).folder(out, "search")
        history, finished = _history(folder)
        if not finished and len(history) < budget:
            finetune_run(RunSpec(arch, arm.strategy, arm.lr, seed), settings, folder,
                         callback=_Budget(budget, settings.epochs, callback))
            history, finished = _history(folder)
        return ArmProgress(score_within(history, budget), len(history), finished)

    return train
