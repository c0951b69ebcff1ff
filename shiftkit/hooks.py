"""The progress and control hooks every long-running entry point takes, declared once.

- :class:`StageHook` (``on_stage``): a bar of known length. Called with what runs and how many units it has,
  it returns the :data:`Tick` to call once per unit. ``run_diagnose``, ``run_harmonize``, ``run_audit``,
  ``run_finetune`` and ``run_adapt_bn`` all take this one shape.
- :class:`StepHook` (``on_step``): a step of unknown length, named as it starts.
- :class:`TrainerCallback`: the training loop's hooks. ``on_epoch_end`` may return :data:`STOP` (any true
  value) to end training after that epoch; the epoch's ``last.pt`` is already written, so the run resumes
  later from there (``None``, the usual return, continues). The successive-halving search stops its arms at
  each rung's budget this way.

The CLI implements them on rich progress bars (``shiftkit.cli.progress``); the library never needs them.
"""

from __future__ import annotations

from typing import Callable, Protocol

Tick = Callable[[], None]
"""Advance a stage's bar by one unit (an image decoded, a batch embedded)."""

STOP = True
"""What :meth:`TrainerCallback.on_epoch_end` returns to stop training after the epoch (resumable)."""


class StageHook(Protocol):
    def __call__(self, description: str, total: int) -> Tick: ...


class StepHook(Protocol):
    def __call__(self, description: str) -> None: ...


class TrainerCallback(Protocol):
    def on_epoch_start(self, epoch: int, batches: int, description: str) -> None: ...
    def on_batch(self) -> None: ...
    def on_epoch_end(self, entry: dict) -> bool | None: ...


class SilentCallback:
    """A :class:`TrainerCallback` that shows nothing and never stops training."""

    def on_epoch_start(self, epoch: int, batches: int, description: str) -> None:
        pass

    def on_batch(self) -> None:
        pass

    def on_epoch_end(self, entry: dict) -> bool | None:
        return None


def start_stage(on_stage: StageHook | None, description: str, total: int) -> Tick | None:
    """``on_stage(description, total)``'s tick, or None without a hook (callees take an optional tick)."""
    return on_stage(description, total) if on_stage is not None else None
