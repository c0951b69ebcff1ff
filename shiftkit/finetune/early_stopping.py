"""Early stopping on a monitored validation value, and the one definition of that value's score.

The score is "higher is better": the monitored metric itself (AUROC, mAP, …), or the validation loss negated
when the monitor is ``val_loss`` (the trainer falls back to it when the metric is undefined, e.g. one class in
the validation set). The trainer, the search's rungs, the compare tables and the progress line all read it
through :func:`monitored_score` / :func:`entry_score`.

:class:`EarlyStopping` keeps the best score, its epoch and the epochs since, and lets the strategy intercept a
plateau (a staged strategy moves to its next stage instead of stopping). Its :meth:`~EarlyStopping.state_dict`
goes into ``last.pt`` so that a resumed run stops exactly where an uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

VAL_LOSS = "val_loss"


def monitored_value(monitor: str | None, metrics: Mapping | None, loss: float | None) -> float | None:
    """The monitored value as reported (the loss itself for ``val_loss``); None when it is undefined."""
    value = loss if monitor == VAL_LOSS else (metrics or {}).get(monitor)
    return None if value is None else float(value)


def monitored_score(monitor: str | None, metrics: Mapping | None, loss: float | None) -> float | None:
    """The monitored value with higher meaning better: the validation loss counts negated."""
    value = monitored_value(monitor, metrics, loss)
    return -value if value is not None and monitor == VAL_LOSS else value


def entry_score(entry: Mapping) -> float | None:
    """The score of one epoch of a training history (``monitor``, ``val``, ``val_loss``)."""
    return monitored_score(entry.get("monitor"), entry.get("val"), entry.get("val_loss"))


def choose_score(monitor: str, metrics: Mapping, loss: float) -> tuple[float, str]:
    """The trainer's score and what it monitored: ``monitor``, or ``val_loss`` where that metric is undefined."""
    if metrics.get(monitor) is None:
        return -loss, VAL_LOSS
    return float(metrics[monitor]), monitor


class EarlyStopping:
    """Stop after ``patience`` epochs without a better score, unless the strategy moves on instead."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_score = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0

    def step(self, epoch: int, score: float, on_plateau: Callable[[int], bool],
             solved: bool = False) -> tuple[bool, bool]:
        """Record ``epoch``'s score; returns (improved, stop). ``on_plateau(epoch)`` is asked on a plateau and
        returns whether training goes on (the strategy changed its plan). A ``solved`` epoch (the head fitted
        outright) is a plateau at once: more epochs of the same plan cannot improve it."""
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
        else:
            self.bad_epochs += 1
        stop = False
        if solved:
            self.bad_epochs = 0
            stop = not on_plateau(epoch)
        elif self.bad_epochs >= self.patience:
            if on_plateau(epoch):
                self.bad_epochs = 0
            else:
                stop = True
        return improved, stop

    def state_dict(self) -> dict:
        """The keys ``last.pt`` has always had for this state (checkpoints of earlier versions load)."""
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Mapping) -> None:
        self.best_score, self.best_epoch = float(state["best_score"]), int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
