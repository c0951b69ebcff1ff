"""A training run's checkpoint files: ``last.pt`` (everything needed to resume) and ``best.pt`` (the best
epoch's weights), in one folder.

``last.pt`` holds ``version``, ``identity`` (everything that decides the numbers: a checkpoint resumes only the
same run), ``epoch``, ``model_state``, ``optimizer_state``, ``strategy_state``, ``history`` and the early
stopping state (``best_score``, ``best_epoch``, ``bad_epochs``); those keys are unchanged since version 1, so
runs checkpointed before still resume. No random-number state is stored: every epoch reseeds from the run's
seed and the epoch number, so a resumed epoch draws what the uninterrupted run drew.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from shiftkit.errors import ConfigError, ShiftkitError
from shiftkit.io import save_torch

if TYPE_CHECKING:
    from shiftkit.models.registry import AdaptedModel

CHECKPOINT_VERSION = 1
LAST, BEST = "last.pt", "best.pt"
SPEED_ONLY = ("device", "eval_batch_size", "num_workers", "precision")
"""Training settings that change speed, not the numbers (up to floating point): they may differ on resume."""


def run_identity(train: dict, strategy: dict, adapted: AdaptedModel, train_size: int, val_size: int,
                 extra: dict) -> dict:
    """Everything that decides the numbers: a checkpoint resumes only a run with the same identity.
    ``train`` and ``strategy`` are the two configs as dicts; ``extra`` what the caller adds (data, fingerprint)."""
    return {
        "train": {k: v for k, v in train.items() if k not in SPEED_ONLY},
        "strategy": strategy,
        "arch": adapted.arch,
        "weights": adapted.weights,
        "preprocessing": adapted.preprocessing.key(),
        "train_size": train_size,
        "val_size": val_size,
        **extra,
    }


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the weights (what both files store)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class Checkpoints:
    """Writes and reads one run's checkpoints; also keeps the best weights in memory (every rank of a
    distributed run takes the same decisions and keeps them; only the writer, rank 0, touches files).
    ``folder=None`` keeps the best weights in memory only."""

    def __init__(self, folder: Path | None, writer: bool = True) -> None:
        self.folder = folder
        self.writer = writer
        self.best_state: dict[str, torch.Tensor] | None = None

    def path(self, name: str) -> Path | None:
        return self.folder / name if self.folder is not None else None

    def save(self, epoch: int, model: nn.Module, improved: bool, identity: dict, resume_state: dict) -> None:
        """After an epoch: ``best.pt`` when it improved, ``last.pt`` always. ``resume_state`` is the rest of
        ``last.pt`` (optimizer, strategy, history, early stopping), as the trainer's parts give it."""
        weights = model_state(model)
        if improved:
            self.best_state = weights
        if self.folder is None or not self.writer:
            return
        if improved:
            save_torch(self.folder / BEST, {"model_state": weights, "epoch": epoch})
        save_torch(self.folder / LAST, {"version": CHECKPOINT_VERSION, "identity": identity, "epoch": epoch,
                                        "model_state": weights, **resume_state})

    def load_last(self, identity: dict) -> dict | None:
        """``last.pt``'s content when it exists (None otherwise), refused when it belongs to another run."""
        path = self.path(LAST)
        if path is None or not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ShiftkitError(f"{path}: cannot read the checkpoint to resume ({type(exc).__name__})") from None
        if state.get("version", CHECKPOINT_VERSION) > CHECKPOINT_VERSION:
            raise ConfigError(f"{path}: written by a newer shiftkit (checkpoint version {state['version']}); "
                              "upgrade, or use another --out to start afresh")
        if state.get("identity") != identity:
            raise ConfigError(
                f"{path}: --resume needs the same settings as the interrupted run "
                f"(it had {state.get('identity')}); use another --out to start afresh"
            )
        return state

    def load_best(self, model: nn.Module) -> None:
        """The best epoch's weights into ``model``: from memory, or from ``best.pt`` when that epoch was trained
        before a resume (nothing happens when neither exists)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
            return
        path = self.path(BEST)
        if path is not None and path.is_file():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model_state"])
