"""What every command shares: one-line errors with exit code 2, and the consoles."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import re
import warnings
from pathlib import Path
from typing import Callable

import torch
import typer
from rich.console import Console
from rich.markup import escape

from shiftkit.errors import ConfigError, ShiftkitError
from shiftkit.finetune.run import MAX_LEARNING_RATE  # one rule for every command's --lr
from shiftkit.io import LOCK_NAME, output_lock

console = Console()
err_console = Console(stderr=True)

USER_ERROR_EXIT = 2
OUT_OF_MEMORY = "the GPU ran out of memory; try a smaller --batch-size (or --image-size)"


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# torch.load(weights_only=True) refusing a pickle: its message advises weights_only=False, which is what must not be done
WEIGHTS_ONLY_REFUSAL = re.compile(r"\(?Weights only load failed.*$", re.DOTALL)
REFUSED = ("(refused: the file holds Python objects besides tensors, and loading them could run code; "
           "shiftkit only loads plain weights, with torch.load(weights_only=True))")
# the weights-only unpickler warns about protocols it was not written for; the refusal above says enough
warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)


def clean_message(message: str) -> str:
    """One plain line: no terminal escape codes, no line breaks, no advice to unpickle an untrusted file."""
    message = ANSI_ESCAPE.sub("", message)
    message = WEIGHTS_ONLY_REFUSAL.sub(REFUSED, message)
    return " ".join(message.split())


def fail(message: str) -> "typer.Exit":
    err_console.print(f"[bold red]error:[/] {escape(clean_message(message))}", highlight=False, soft_wrap=True)
    return typer.Exit(USER_ERROR_EXIT)


# What a command holds until it returns (the lock on --out): closed by ``user_errors`` whatever happens.
_HELD: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar("shiftkit_held", default=None)


def user_errors(command: Callable) -> Callable:
    """Turn user mistakes into one line on stderr and exit code 2; bugs keep their traceback. What the command
    holds (``output_folder``'s lock) is released when it returns, and sees the exception if it fails."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with contextlib.ExitStack() as held:
                token = _HELD.set(held)
                try:
                    return command(*args, **kwargs)
                finally:
                    _HELD.reset(token)
        except ShiftkitError as exc:
            raise fail(str(exc)) from None
        except torch.OutOfMemoryError:  # torch.cuda.OutOfMemoryError is the same class
            raise fail(OUT_OF_MEMORY) from None
        except MemoryError:
            raise fail("the machine ran out of memory; try a smaller --batch-size (or --image-size, --max-images)") from None
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():  # older torch and other backends raise a plain RuntimeError
                raise fail(OUT_OF_MEMORY) from None
            raise

    return wrapper


def warn_skipped(skipped: list[dict], report: str) -> None:
    """One warning line for images left out under ``--on-bad-image skip`` (the report lists them all)."""
    if skipped:
        first = skipped[0]
        detail = escape(f"first: {first['path']}: {first['reason']}")
        err_console.print(f"[bold yellow]warning:[/] skipped {len(skipped)} unreadable image(s), listed in {report} "
                          f"(skipped_images); {detail}", highlight=False, soft_wrap=True)


def output_folder(out: Path, *, file: bool = False, lock: bool = True, lock_name: str = LOCK_NAME,
                  clean_failed: bool = True) -> Path:
    """``--out``, checked and held before any work: a folder (it may not exist yet; with ``file=True`` a file, whose
    folder is checked), created and proven writable (a read-only or full disk, ``/proc``, a path under a file are
    one clear line now, not a traceback after the work), and locked against a second shiftkit run until the
    command returns (``OUT/.shiftkit.lock``; see :func:`shiftkit.io.output_lock`). A run whose output write fails
    removes the files it had created (``clean_failed``). ``lock=False``: the checks only (torchrun's other ranks)."""
    if not file and out.exists() and not out.is_dir():
        raise ShiftkitError(f"--out {out} is a file, not a folder")
    if file and out.is_dir():
        raise ShiftkitError(f"--out {out} is a folder; give a file name")
    if not lock:
        return out
    held = _HELD.get()
    holder = output_lock(out, file=file, name=lock_name, clean_failed=clean_failed)
    if held is None:  # called outside a command: check now, hold nothing
        with holder:
            return out
    held.enter_context(holder)
    return out


def previous_run(out: Path, resume: bool, overwrite: bool) -> None:
    """A finished or interrupted finetune run in ``out`` is kept unless the user says what to do with it:
    ``--resume`` continues it, ``--overwrite`` replaces it (``run_finetune`` removes its metrics.json and
    checkpoints/ only once the new run's options and images have been checked, so a mistake loses nothing)."""
    found = [p for p in (out / "metrics.json", out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt")
             if p.exists()]
    if not found or resume:
        return
    if not overwrite:
        kind = "a finished run" if (out / "metrics.json").exists() else "an interrupted run"
        raise ConfigError(f"--out {out} holds {kind} ({found[0].relative_to(out)}); add --resume to continue it, "
                          "--overwrite to replace it, or use another --out")


def check_number(value: float | None, option: str, *, minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None, below: float | None = None) -> float | None:
    """One rule for every float option: a finite number within its range, or a one-line error naming the
    option (``--lr nan``, ``inf`` or ``1e30`` never reach the work). ``None`` (option not given) passes."""
    if value is None:
        return None
    if not math.isfinite(value):
        raise ConfigError(f"{option} {value}: must be a finite number")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{option} {value:g}: must be at least {minimum:g}")
    if above is not None and value <= above:
        raise ConfigError(f"{option} {value:g}: must be above {above:g}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{option} {value:g}: must be at most {maximum:g}")
    if below is not None and value >= below:
        raise ConfigError(f"{option} {value:g}: must be below {below:g}")
    return value




def parse_window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--window '{text}' must be two numbers, LOW,HIGH (e.g. -1000,400)") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"--window '{text}' must be two finite numbers, LOW,HIGH (e.g. -1000,400)")
    if high <= low:
        raise ConfigError(f"--window '{text}': HIGH must be above LOW")
    return low, high
