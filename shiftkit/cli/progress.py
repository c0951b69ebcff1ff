"""Rich progress for long work: the hooks of :mod:`shiftkit.hooks` drawn as bars (one per epoch, one per stage)."""

from __future__ import annotations

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from shiftkit.finetune.early_stopping import monitored_value
from shiftkit.hooks import Tick


def make_progress(console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,  # bars vanish when done; each finished epoch leaves one log line instead
    )


class EpochProgress:
    """A :class:`~shiftkit.hooks.TrainerCallback` and a :class:`~shiftkit.hooks.StageHook` (image decoding)
    on a rich Progress: the bar of the stage or epoch running now, and one log line per finished epoch."""

    def __init__(self, progress: Progress, epochs: int) -> None:
        self.progress = progress
        self.epochs = epochs
        self.task = None

    # data warming
    def __call__(self, description: str, total: int) -> Tick:
        self.task = self.progress.add_task(escape(description), total=total, status="")
        return self.advance

    def advance(self) -> None:
        self.progress.advance(self.task)
        if next(t for t in self.progress.tasks if t.id == self.task).finished:
            self.progress.remove_task(self.task)

    # training
    def on_epoch_start(self, epoch: int, batches: int, description: str) -> None:
        self.task = self.progress.add_task(f"epoch {epoch + 1}/{self.epochs}", total=batches, status=description)

    def on_batch(self) -> None:
        self.progress.advance(self.task)

    def on_epoch_end(self, entry: dict) -> None:
        monitored = entry["monitor"]
        value = monitored_value(monitored, entry["val"], entry["val_loss"])
        status = f"loss {entry['train_loss']:.4f}  val {monitored} {value:.4f}" if value is not None else ""
        if "stage" in entry:
            status += f"  stage {entry['stage']}"
        if entry.get("stop"):
            status += "  early stop"
        self.progress.remove_task(self.task)
        self.progress.console.print(f"epoch {entry['epoch']}/{self.epochs}  {status}  ({entry['seconds']:.1f} s)",
                                    highlight=False)


class StageProgress:
    """The library's two progress hooks on a rich Progress: ``stage`` (a :class:`~shiftkit.hooks.StageHook`:
    a bar of known length, returns its tick) and ``step`` (a :class:`~shiftkit.hooks.StepHook`: a spinner
    naming what runs now, replacing the previous one)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._step = None

    def stage(self, description: str, total: int) -> Tick:
        task = self.progress.add_task(escape(description), total=total or None, status="")  # may name a site
        return lambda: self.progress.advance(task)

    def step(self, description: str) -> None:
        self.end_step()
        self._step = self.progress.add_task(escape(description), total=None, status="")

    def end_step(self) -> None:
        if self._step is not None:
            self.progress.remove_task(self._step)
            self._step = None
