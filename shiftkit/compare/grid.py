"""The comparison grid: plan (arch × strategy × lr × seed), run, record, resume, shard.

Each finished run appends one JSON line to a ``runs*.jsonl`` file in one ``write`` call, then flushes and
fsyncs it, so a killed process leaves at most a torn last line; that line is ignored when read and cut off
before the next append. A run's identity is its arch, strategy, learning rate and seed plus a fingerprint of
everything else that decides its numbers (the data files' content, weights, image size, and every field of the
embedded ``TrainConfig`` and ``StrategyConfig`` but those that only change speed): a folder whose runs were made
with other settings is refused, never silently reused. With ``--shard I/N`` each machine takes every N-th run of
the canonical plan and appends to its own ``runs-shard-I-of-N.jsonl``; reading merges every ``runs*.jsonl`` in
the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

from shiftkit.data.preprocess import check_image_size
from shiftkit.data.readers import ReadOptions
from shiftkit.device import resolve_device
from shiftkit.errors import ConfigError, DataError
from shiftkit.finetune.config import SPEED_ONLY, TrainConfig
from shiftkit.finetune.metrics import METRICS
from shiftkit.finetune.start import checkpoint_file
from shiftkit.finetune.strategies import STRATEGY_CLASSES, StrategyConfig, check_strategy_name
from shiftkit.io import write_json
from shiftkit.models.registry import ARCHITECTURES

RUNS_FILE = "runs.jsonl"
SETTINGS_FILE = "settings.json"


# -- what a grid is ----------------------------------------------------------------------------------------
PER_RUN = ("strategy", "lr", "seed")
"""TrainConfig fields each run sets from its RunSpec (in its run id, not in the grid's fingerprint)."""
NOT_IN_FINGERPRINT = (*PER_RUN, *SPEED_ONLY, "cache_features")
"""TrainConfig fields left out of a grid's identity: each run's own, and those that change only speed (features of
a frozen backbone cached or recomputed give the same numbers; identities recorded before left it out too)."""


@dataclass(frozen=True)
class CompareSettings:
    """Everything shared by the runs of one grid: the data, and the ``TrainConfig`` and ``StrategyConfig`` every run
    uses (``train``'s strategy, lr and seed are each run's, from its :class:`RunSpec`). Every field decides the
    numbers, and so is in :meth:`identity`, but ``cache_dir`` and the fields named in ``NOT_IN_FINGERPRINT``."""

    data: Path
    val: Path | None = None
    test: Path | None = None
    weights: str = "imagenet"
    image_size: int | None = None
    read_options: ReadOptions = field(default_factory=ReadOptions)
    cache_dir: Path | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    init: Path | None = None  # every run starts from this finetune output (finetune --init; then weights unused)

    @property
    def epochs(self) -> int:
        """The most epochs any run trains (``train.epochs``)."""
        return self.train.epochs

    def identity(self) -> dict:
        """The settings that decide a run's numbers, with the data files named by path and content. Derived from
        the configs' fields, so a new hyperparameter is part of it (and refuses a folder recorded without it)."""
        train = {f.name: getattr(self.train, f.name) for f in fields(self.train) if f.name not in NOT_IN_FINGERPRINT}
        parts = (
            {
                "data": _data_identity(self.data),
                "val": _data_identity(self.val) if self.val else None,
                "test": _data_identity(self.test) if self.test else None,
                "weights": _data_identity(Path(self.weights)) if Path(self.weights).is_file() else self.weights,
                "image_size": self.image_size,
                "read_options": self.read_options.key(),
                # only with --init, so that the identities of grids recorded before are unchanged
                **({"init": _data_identity(checkpoint_file(self.init))} if self.init is not None else {}),
            },
            train,
            asdict(self.strategy),
        )
        identity = {k: v for part in parts for k, v in part.items()}
        if len(identity) != sum(map(len, parts)):  # a config field named like another: one would hide the other
            raise ValueError(f"CompareSettings.identity: a name is used twice in {[sorted(p) for p in parts]}")
        return identity

    def run_config(self, spec: RunSpec) -> TrainConfig:
        """The ``TrainConfig`` of one run of the grid."""
        return replace(self.train, strategy=spec.strategy, lr=spec.lr, seed=spec.seed)

    def fingerprint(self) -> str:
        return _sha1(json.dumps(self.identity(), sort_keys=True))[:16]

    def check(self, seeds: int) -> None:
        """The options' one-line errors, before any run starts (the paths must exist: they are fingerprinted)."""
        cfg = self.train
        if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.patience < 1 or seeds < 1:
            raise ConfigError("--epochs, --batch-size, --patience and --seeds must be at least 1")
        check_image_size(self.image_size)  # the one rule (shiftkit.data.preprocess) every command uses
        if cfg.monitor != "auto" and cfg.monitor not in METRICS:
            raise ConfigError(f"unknown --monitor '{cfg.monitor}' (choose auto, {', '.join(METRICS)})")
        self.strategy.validate()
        resolve_device(cfg.device)
        for path in (self.data, self.val, self.test, self.init):
            if path is not None and not path.exists():
                raise ConfigError(f"{path}: not found")


def _sha1(text: str | bytes) -> str:
    return hashlib.sha1(text.encode() if isinstance(text, str) else text).hexdigest()


def _data_identity(path: Path) -> str:
    """Path plus a content hash: a file's bytes, or a folder's listing (names and sizes), so an edited
    manifest or a re-exported folder is a different grid."""
    path = Path(path)
    if path.is_file():
        digest = _sha1(path.read_bytes())
    elif path.is_dir():
        listing = sorted(
            f"{p.relative_to(path)}:{p.stat().st_size}" for p in path.rglob("*") if p.is_file()
        )
        digest = _sha1("\n".join(listing))
    else:
        raise DataError(f"{path}: not found")
    return f"{path.resolve()}#{digest[:16]}"


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    arch: str
    strategy: str
    lr: float
    seed: int

    def key(self) -> str:
        return f"{self.arch}/{self.strategy}/lr{self.lr:g}_seed{self.seed}"

    def run_id(self, fingerprint: str) -> str:
        return f"{self.key()}@{fingerprint}"

    def folder(self, out: Path, root: str = "runs") -> Path:
        return out / root / self.arch / self.strategy / f"lr{self.lr:g}_seed{self.seed}"


def parse_strategies(text: str) -> list[str]:
    """``all`` or a comma-separated list of strategy codes, in the registry's order when ``all``."""
    if text.strip() == "all":
        return list(STRATEGY_CLASSES)
    names = _split_list(text, "--strategies")
    for name in names:
        check_strategy_name(name)
    return names


def parse_archs(text: str) -> list[str]:
    names = _split_list(text, "--archs")
    for name in names:
        if name not in ARCHITECTURES:
            raise ConfigError(f"--archs: unknown architecture '{name}' (choose from {', '.join(ARCHITECTURES)})")
    return names


def parse_lrs(text: str) -> list[float]:
    values = []
    for item in _split_list(text, "--lrs"):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"--lrs: '{item}' is not a number (e.g. --lrs 1e-3,1e-4,1e-5)") from None
        if not value > 0 or value != value or value == float("inf"):
            raise ConfigError(f"--lrs: learning rates must be positive numbers (got '{item}')")
        if any(f"{v:g}" == f"{value:g}" for v in values):  # run folders and ids name a rate by its %g form
            raise ConfigError(f"--lrs: '{item}' repeats a learning rate (or equals one to 6 significant digits)")
        values.append(value)
    return values


def parse_metrics(text: str | None) -> list[str]:
    """The table's columns: a comma-separated list of metric names (default: all of ``METRICS``)."""
    if text is None:
        return list(METRICS)
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if not names or unknown:
        raise ConfigError(f"--metrics '{text}': choose among {', '.join(METRICS)}")
    return names


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``I/N`` with 0 <= I < N (``--shard $SLURM_ARRAY_TASK_ID/N`` with ``--array=0-(N-1)``)."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard '{text}' must be I/N, two integers (e.g. --shard 0/4)") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard '{text}': need N >= 1 and 0 <= I < N (shards are numbered from 0)")
    return index, count


def _split_list(text: str, option: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ConfigError(f"{option} '{text}' must be a comma-separated list without empty items")
    if len(set(items)) != len(items):
        raise ConfigError(f"{option} '{text}' names an item twice")
    return items


def plan_grid(
    archs: Sequence[str], strategies: Sequence[str], lrs: Sequence[float], seeds: Sequence[int]
) -> list[RunSpec]:
    """The canonical order (arch, strategy, lr, seed): every shard computes the same list."""
    return [RunSpec(a, s, float(lr), int(seed)) for a in archs for s in strategies for lr in lrs for seed in seeds]


def shard_plan(plan: Sequence[RunSpec], shard: tuple[int, int] | None) -> list[RunSpec]:
    """Shard I of N takes runs I, I+N, I+2N, ... of the canonical plan: disjoint, complete, balanced."""
    if shard is None:
        return list(plan)
    index, count = shard
    return [spec for position, spec in enumerate(plan) if position % count == index]


# -- the record files ------------------------------------------------------------------------------------
def runs_file(out: Path, shard: tuple[int, int] | None) -> Path:
    return out / (RUNS_FILE if shard is None else f"runs-shard-{shard[0]}-of-{shard[1]}.jsonl")


def _read_lines(path: Path) -> tuple[list[dict], bool]:
    """Records of one file and whether its last line was torn (a killed writer). A bad line anywhere else
    means the file was edited or damaged: that is refused, naming the line."""
    data = path.read_bytes()
    torn = bool(data) and not data.endswith(b"\n")
    lines = data.split(b"\n")
    if not torn:
        lines = lines[:-1]
    records = []
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if last and torn:
                break
            raise DataError(f"{path}: line {number} is not a JSON record (edit or delete it)") from None
        if last and torn:
            break  # complete JSON but no newline: the fsync may not have finished; run it again
        records.append(record)
    return records, torn


def read_records(out: Path) -> list[dict]:
    """Every finished run recorded in ``out`` (``runs.jsonl`` and all shard files), first occurrence wins."""
    seen: dict[str, dict] = {}
    for path in sorted(out.glob("runs*.jsonl")):
        for number, record in enumerate(_read_lines(path)[0], start=1):
            if not isinstance(record, dict) or "run_id" not in record:
                raise DataError(f"{path}: record {number} has no 'run_id' (was the file edited by hand?)")
            seen.setdefault(record["run_id"], record)
    return list(seen.values())


def _repair(path: Path) -> None:
    """Cut a torn last line off before appending, so the next record starts on a line of its own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())


def append_record(path: Path, record: dict) -> None:
    """One line in one ``write`` call on an O_APPEND descriptor, then fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"{path}: short write ({written} of {len(line)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def check_settings(out: Path, settings: CompareSettings) -> None:
    """Refuse a folder whose runs were made with other settings (naming what differs); record them otherwise."""
    path = out / SETTINGS_FILE
    current = {"fingerprint": settings.fingerprint(), "settings": settings.identity()}
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise DataError(f"{path}: not valid JSON (delete it only if {out} holds no runs)") from None
        if stored.get("fingerprint") != current["fingerprint"]:
            old, new = stored.get("settings", {}), current["settings"]
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            detail = ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in changed[:4])
            raise ConfigError(
                f"{out} holds runs made with other settings ({detail}); use another --out, or the same settings"
            )
        return
    if any(out.glob("runs*.jsonl")):
        raise ConfigError(f"{out} has runs*.jsonl but no {SETTINGS_FILE}; cannot tell its settings, use another --out")
    write_json(path, current)


# -- running ---------------------------------------------------------------------------------------------
RunFunction = Callable[[RunSpec, CompareSettings, Path], dict]
"""``run(spec, settings, folder) -> metrics`` with at least ``val``, ``test``, ``epochs_run``, ``best_epoch``."""


def finetune_run(spec: RunSpec, settings: CompareSettings, folder: Path, callback=None, on_stage=None) -> dict:
    """One grid cell through :func:`shiftkit.finetune.run.run_finetune`, resuming a killed run's checkpoint."""
    from shiftkit.finetune.run import FinetuneRequest, run_finetune

    request = FinetuneRequest(
        data=settings.data, val=settings.val, test=settings.test, out=folder, arch=spec.arch,
        weights=settings.weights, image_size=settings.image_size, cache_dir=settings.cache_dir,
        resume=True, read_options=settings.read_options, train=settings.run_config(spec), strategy=settings.strategy,
        init=settings.init,
    )
    return run_finetune(request, callback=callback, on_stage=on_stage)


def make_record(spec: RunSpec, fingerprint: str, result: dict, seconds: float, folder: str) -> dict:
    def clean(split: str) -> dict | None:
        return None if not result.get(split) else {m: result[split].get(m) for m in (*METRICS, "loss")}

    return {
        "run_id": spec.run_id(fingerprint),
        "fingerprint": fingerprint,
        **asdict(spec),
        "val": clean("val"),
        "test": clean("test"),
        "monitor": result.get("monitor"),
        "epochs_run": result.get("epochs_run"),
        "best_epoch": result.get("best_epoch"),
        "seconds": seconds,
        "folder": folder,  # relative to the comparison folder, so it can move
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


@dataclass
class GridOutcome:
    ran: list[RunSpec]
    skipped: list[RunSpec]
    records: list[dict]  # every record of the current settings in the folder, all shards
    missing: list[RunSpec]  # runs of the whole plan (all shards) not yet recorded


def _plan_records(plan: Iterable[RunSpec], records: Iterable[dict], fingerprint: str) -> list[dict]:
    """The records of this plan's runs (a folder may hold more, e.g. from a wider --lrs), in plan order."""
    by_id = {r["run_id"]: r for r in records}
    return [by_id[s.run_id(fingerprint)] for s in plan if s.run_id(fingerprint) in by_id]


def pending(plan: Iterable[RunSpec], records: Iterable[dict], fingerprint: str) -> list[RunSpec]:
    done = {r["run_id"] for r in records}
    return [spec for spec in plan if spec.run_id(fingerprint) not in done]


def run_grid(
    plan: Sequence[RunSpec],
    settings: CompareSettings,
    out: Path,
    shard: tuple[int, int] | None = None,
    run: RunFunction | None = None,
    on_start: Callable[[RunSpec, int, int], None] | None = None,
    on_done: Callable[[RunSpec, dict], None] | None = None,
) -> GridOutcome:
    """Run this shard's runs that have no record yet, appending a record after each; return what is there.

    ``on_done`` is called after the record is safely on disk (raising from it stops the grid, as a kill would).
    """
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings)
    fingerprint = settings.fingerprint()
    mine = shard_plan(plan, shard)
    todo = pending(mine, read_records(out), fingerprint)
    target = runs_file(out, shard)
    _repair(target)
    run = run or finetune_run
    ran = []
    for position, spec in enumerate(todo):
        if on_start:
            on_start(spec, position, len(todo))
        folder = spec.folder(out)
        started = time.perf_counter()
        result = run(spec, settings, folder)
        record = make_record(spec, fingerprint, result, time.perf_counter() - started,
                             str(folder.relative_to(out)))
        append_record(target, record)
        ran.append(spec)
        if on_done:
            on_done(spec, record)
    records = _plan_records(plan, read_records(out), fingerprint)
    todo_set = set(todo)
    return GridOutcome(
        ran=ran,
        skipped=[s for s in mine if s not in todo_set],
        records=records,
        missing=pending(plan, records, fingerprint),
    )


def recorded(plan: Sequence[RunSpec], settings: CompareSettings, out: Path) -> GridOutcome:
    """What the folder holds for this plan, without running anything (``--report-only``)."""
    if not (out / SETTINGS_FILE).is_file():
        raise DataError(f"{out}: no {SETTINGS_FILE}, so no comparison has run there yet")
    check_settings(out, settings)
    fingerprint = settings.fingerprint()
    records = _plan_records(plan, read_records(out), fingerprint)
    return GridOutcome(ran=[], skipped=[], records=records, missing=pending(plan, records, fingerprint))
