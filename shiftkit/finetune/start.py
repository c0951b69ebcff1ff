"""The starting point of a fine-tuning run from an earlier ``shiftkit finetune`` output (``finetune --init``).

By default a run starts from ImageNet weights (or ``--weights``) with a new head. ``--init RUN`` starts instead
from the weights a previous run trained (``RUN/checkpoints/best.pt``, or that file itself), which is the "model
trained on the source site, fine-tuned on a few target images" setting:

- the architecture is the checkpoint's: ``--arch`` may be left out (taken from the checkpoint) and, when given,
  must name the same one (one ``ConfigError`` line otherwise); ``--image-size`` defaults to the checkpoint's;
- the head is kept when the data's classes are the checkpoint's (same names, same order, same task); otherwise
  a new head is drawn from the run's seed (as after ImageNet weights) and the run records why (``note``);
- ``l1_sp`` / ``l2_sp`` hold the network near *these* weights: the strategies anchor to the model as it is when
  they are built, which is after the checkpoint is loaded (a kept head is anchored too, see
  ``Strategy.anchor_head``);
- ``--init`` and ``--weights`` are mutually exclusive;
- the checkpoint's content (SHA-1 of its bytes), its classes and the head decision are part of the run's resume
  identity, so a changed checkpoint never resumes a run started from another.

The checkpoint is read with ``torch.load(weights_only=True)`` (:func:`shiftkit.features.finetuned_info`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from shiftkit.data.cache import file_digest
from shiftkit.errors import ConfigError, ModelError
from shiftkit.features import finetuned_info
from shiftkit.models.registry import AdaptedModel
from shiftkit.privacy import shown_path

INIT_WEIGHTS = "init"
"""What ``AdaptedModel.weights`` (and metrics.json's ``config.weights``) says for a run started with ``--init``."""

MUTUALLY_EXCLUSIVE = ("--init and --weights are mutually exclusive: --init starts from the weights of a finetune "
                      "run (leave out --weights)")


@dataclass(frozen=True)
class InitCheckpoint:
    """A finetune output to start from: where its weights are, what model they fit, and their content digest."""

    path: Path  # as the user gave it (a run folder or a .pt file)
    checkpoint: Path  # the .pt file read
    arch: str
    classes: tuple[str, ...]
    image_size: int | None
    task: str | None
    digest: str  # SHA-1 of the checkpoint's bytes
    state: dict[str, torch.Tensor]


def checkpoint_file(path: str | Path) -> Path:
    """The weight file of ``--init PATH``: PATH itself when it is a file, else ``PATH/checkpoints/best.pt``."""
    path = Path(path)
    return path if path.is_file() else path / "checkpoints" / "best.pt"


def read_init(path: str | Path) -> InitCheckpoint:
    """Read ``--init PATH`` (a finetune output folder or its ``checkpoints/best.pt``); a path that is no such
    output is one :class:`~shiftkit.errors.ModelError` line naming ``--init``."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"--init {path}: not found (give a finetune output folder or its checkpoints/best.pt)")
    try:
        info = finetuned_info(path)
    except ModelError as exc:
        raise ModelError(f"--init: {exc}") from None
    checkpoint = Path(info["checkpoint"])
    return InitCheckpoint(path=path, checkpoint=checkpoint, arch=str(info["arch"]),
                          classes=tuple(str(c) for c in info["classes"]), image_size=info["image_size"],
                          task=info.get("task"), digest=file_digest(checkpoint), state=info["state"])


def check_weights(init: object | None, weights: str | None) -> None:
    """Refuse ``--weights`` beside ``--init`` (``weights`` None: not given)."""
    if init is not None and weights is not None:
        raise ConfigError(MUTUALLY_EXCLUSIVE)


def check_arch(init: InitCheckpoint, arch: str | None) -> str:
    """The architecture of a run started from ``init``: the checkpoint's; ``arch`` (None: not given) must match."""
    if arch is not None and arch != init.arch:
        raise ConfigError(f"--init {init.path}: the checkpoint is a {init.arch} model but --arch asks for {arch}; "
                          f"leave out --arch (it is taken from the checkpoint) or start from a {arch} run")
    return init.arch


def head_decision(init: InitCheckpoint, classes: list[str] | tuple[str, ...], task: str) -> str | None:
    """None when the checkpoint's head fits the data (same classes, same order, same task); else why not."""
    if tuple(classes) != init.classes:
        return (f"the data's classes {list(classes)} are not the checkpoint's {list(init.classes)} (same names in "
                "the same order): a new head was drawn from the seed")
    if init.task is not None and init.task != task:
        return f"the checkpoint was trained for a {init.task} task, the data is {task}: a new head was drawn from the seed"
    return None


def load_start(adapted: AdaptedModel, init: InitCheckpoint, classes: list[str] | tuple[str, ...], task: str,
               anonymize_paths: bool = False) -> dict:
    """Put ``init``'s weights into ``adapted`` (built with ``weights="none"`` and the run's new head); keep its head
    when :func:`head_decision` allows. Returns what the run records under ``config.init`` (JSON-able):
    ``checkpoint``, ``sha1``, ``arch``, ``classes``, ``head`` ("kept" or "new") and ``note`` (None or why new)."""
    if adapted.arch != init.arch:
        raise ConfigError(f"--init {init.path}: the checkpoint is a {init.arch} model, not {adapted.arch}")
    note = head_decision(init, classes, task)
    head_keys = set(adapted.head_param_names())
    state = init.state if note is None else {k: v for k, v in init.state.items() if k not in head_keys}
    try:
        result = adapted.model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape mismatch: the file is not what its metrics.json says
        first = str(exc).strip().splitlines()
        raise ModelError(f"--init {init.checkpoint}: the weights do not fit {init.arch} "
                         f"({first[-1].strip()[:200] if first else 'shape mismatch'})") from None
    missing = [k for k in result.missing_keys if note is None or k not in head_keys]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise ModelError(f"--init {init.checkpoint}: the weights do not fit {init.arch} "
                         f"(e.g. parameter '{(missing or unexpected)[0]}')")
    adapted.weights = INIT_WEIGHTS
    return {
        "checkpoint": shown_path(init.checkpoint, anonymize_paths),
        "sha1": init.digest,
        "arch": init.arch,
        "classes": list(init.classes),
        "head": "kept" if note is None else "new",
        "note": note,
    }


def identity(record: dict) -> dict:
    """The part of a run's resume identity that names its starting point: the checkpoint's content and what was
    kept (not its path, so a moved checkpoint still resumes)."""
    return {"sha1": record["sha1"], "arch": record["arch"], "classes": record["classes"], "head": record["head"]}
