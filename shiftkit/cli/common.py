"""What every command shares: one-line errors with exit code 2, and the consoles."""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path
from typing import Callable

import torch
import typer
from rich.console import Console
from rich.markup import escape

from shiftkit.errors import ShiftkitError

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


def user_errors(command: Callable) -> Callable:
    """Turn user mistakes into one line on stderr and exit code 2; bugs keep their traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
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


def output_folder(out: Path) -> Path:
    """``--out`` must be a folder (it may not exist yet): every command writes several files into it."""
    if out.exists() and not out.is_dir():
        raise ShiftkitError(f"--out {out} is a file, not a folder")
    return out


def parse_window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ShiftkitError(f"--window '{text}' must be two numbers, LOW,HIGH (e.g. -1000,400)") from None
    if high <= low:
        raise ShiftkitError(f"--window '{text}': HIGH must be above LOW")
    return low, high
