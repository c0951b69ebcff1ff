"""The published evidence (Davila, Colan & Hasegawa 2024) as a small queryable table.

Three CSVs ship inside the package (``shiftkit/recommend/data``, found with :mod:`importlib.resources`, copied
from the project's ``shared/evidence``; see ``data/README.md`` for what each holds):

- ``davila2024_results.csv``: Tables 3, 5, 7-10, one row per (dataset, architecture, strategy, metric), mean and
  standard error over 3 seeds, in percent;
- ``davila2024_best.csv``: Table 11, the best (architecture, strategy) cell per dataset and its relative gain over
  full fine-tuning (``ft``); MURA-Shoulder and MURA-Humerus survive only here;
- ``davila2024_effectiveness.csv``: Table 12, the share of the 24 experiments where a strategy beat ``ft`` by > 0.1 %.

A :class:`Case` is one (dataset, architecture) with all eight strategies on the dataset's *main metric* (the one
the paper's Figures 6-11 and Table 11 use): mAP for multi-label sets, AUROC for ISIC 2020, accuracy otherwise.
Its gains are relative to ``ft`` with the same architecture: ``100 * (metric - metric_ft) / metric_ft``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

from shiftkit.errors import DataError

PUBLISHED_STRATEGIES = ("ft", "lp", "g_lf", "g_fl", "lp_ft", "l1_sp", "l2_sp", "auto_rgn")
"""The eight strategies the published tables cover, in the paper's order (the names of
``shiftkit.finetune.strategies.STRATEGY_CLASSES``' first eight entries; kept here so this package needs no torch)."""
ARCHITECTURES = ("resnet50", "densenet121", "vgg19")
TASKS = ("binary", "multiclass", "multilabel")
RESULTS_FILE = "davila2024_results.csv"
BEST_FILE = "davila2024_best.csv"
EFFECTIVENESS_FILE = "davila2024_effectiveness.csv"
# Table 11's footnote: "relative performance improvement of main metric"; Figures 6-11 name it per dataset.
MAIN_METRIC_OVERRIDES = {"ISIC-2020": "AUROC"}


def main_metric(dataset: str, task: str) -> str:
    """The metric the paper ranks a dataset by (Figures 6-11): mAP if multi-label, AUROC for ISIC 2020, else accuracy."""
    return MAIN_METRIC_OVERRIDES.get(dataset, "mAP" if task == "multilabel" else "accuracy")


@dataclass(frozen=True)
class Result:
    """One published cell: mean and standard error (over 3 seeds) of one metric, in percent."""

    dataset: str
    domain: str
    task: str
    n_train: int
    n_eval: int
    n_classes: int
    architecture: str
    strategy: str
    metric: str
    mean: float
    se: float


@dataclass(frozen=True)
class BestCell:
    """Table 11: the best (architecture, strategy) on a dataset and its gain over ``ft`` in percent."""

    dataset: str
    domain: str
    n_train: int
    n_classes: int
    task: str
    architecture: str
    strategy: str
    gain: float


@dataclass(frozen=True)
class Case:
    """One (dataset, architecture) with the relative gain over ``ft`` of every strategy on the main metric."""

    dataset: str
    domain: str
    task: str
    n_train: int
    n_classes: int
    architecture: str
    metric: str
    gains: dict[str, float] = field(hash=False)
    gain_se: dict[str, float] = field(hash=False)  # from the two cells' standard errors, first-order

    @property
    def best(self) -> tuple[str, ...]:
        """The strategies with the highest gain (ties kept: ``ft`` with 0.0 can tie another 0.0)."""
        top = max(self.gains.values())
        return tuple(s for s in PUBLISHED_STRATEGIES if s in self.gains and self.gains[s] == top)


def relative_gain(mean: float, mean_ft: float) -> float:
    """Percent change over full fine-tuning, as in the paper's Figures 6-11 and Table 11."""
    return 100.0 * (mean - mean_ft) / mean_ft


@dataclass(frozen=True)
class Evidence:
    """All published rows, queryable by dataset, architecture, strategy and metric."""

    results: tuple[Result, ...]
    best_cells: tuple[BestCell, ...]
    effectiveness: dict[str, float] = field(hash=False)  # strategy -> % of experiments that beat ft (Table 12)

    def query(self, dataset: str | None = None, architecture: str | None = None, strategy: str | None = None,
              metric: str | None = None) -> list[Result]:
        """Rows matching every given field (case-insensitive)."""
        def match(value: str, wanted: str | None) -> bool:
            return wanted is None or value.lower() == wanted.lower()

        return [r for r in self.results if match(r.dataset, dataset) and match(r.architecture, architecture)
                and match(r.strategy, strategy) and match(r.metric, metric)]

    @property
    def datasets(self) -> list[str]:
        """Every dataset named in the results or in Table 11, in first-seen order."""
        names = [r.dataset for r in self.results] + [b.dataset for b in self.best_cells]
        return list(dict.fromkeys(names))

    def gain(self, dataset: str, architecture: str, strategy: str, metric: str | None = None) -> float:
        """Relative gain of ``strategy`` over ``ft`` (same dataset, architecture and metric), in percent."""
        rows = self.query(dataset, architecture)
        if not rows:
            raise DataError(f"no published results for dataset '{dataset}' with architecture '{architecture}'")
        metric = metric or main_metric(rows[0].dataset, rows[0].task)
        cells = {r.strategy: r.mean for r in rows if r.metric.lower() == metric.lower()}
        if strategy not in cells or "ft" not in cells:
            raise DataError(f"no published {metric} for {strategy} and ft on {dataset} / {architecture}")
        return relative_gain(cells[strategy], cells["ft"])

    def cases(self) -> list[Case]:
        """One :class:`Case` per (dataset, architecture) whose main metric is published for all eight strategies."""
        groups: dict[tuple[str, str], dict[str, Result]] = {}
        for r in self.results:
            if r.metric == main_metric(r.dataset, r.task):
                groups.setdefault((r.dataset, r.architecture), {})[r.strategy] = r
        cases = []
        for (dataset, arch), cells in groups.items():
            if set(cells) != set(PUBLISHED_STRATEGIES):
                continue
            ft = cells["ft"]
            any_row = next(iter(cells.values()))
            cases.append(Case(
                dataset=dataset, domain=any_row.domain, task=any_row.task, n_train=any_row.n_train,
                n_classes=any_row.n_classes, architecture=arch, metric=ft.metric,
                gains={s: relative_gain(cells[s].mean, ft.mean) for s in PUBLISHED_STRATEGIES},
                gain_se={s: 0.0 if s == "ft" else 100.0 * math.hypot(cells[s].se, ft.se) / ft.mean
                         for s in PUBLISHED_STRATEGIES},
            ))
        return cases

    def without(self, dataset: str) -> "Evidence":
        """The evidence with every row of one dataset removed (for leave-one-dataset-out evaluation)."""
        return replace(self, results=tuple(r for r in self.results if r.dataset != dataset),
                       best_cells=tuple(b for b in self.best_cells if b.dataset != dataset))


def _read(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
            return [dict(row, _line=str(line)) for line, row in enumerate(reader, start=2)]
    except OSError as exc:
        raise DataError(f"{path}: cannot read evidence file ({exc.strerror or exc})") from None


def _number(row: dict[str, str], column: str, path: Path, kind: type = float):
    try:
        return kind(row[column])
    except (TypeError, ValueError):
        raise DataError(f"{path}, line {row['_line']}: column '{column}' is '{row[column]}', not a number") from None


def _check(value: str, allowed: tuple[str, ...], column: str, row: dict[str, str], path: Path) -> str:
    if value not in allowed:
        raise DataError(f"{path}, line {row['_line']}: {column} '{value}' is not one of {', '.join(allowed)}")
    return value


def load_evidence(folder: str | Path | None = None) -> Evidence:
    """Read the three CSVs from ``folder`` (default: the copies bundled with the package)."""
    if folder is None:
        return _bundled()
    return _load(Path(folder))


@lru_cache(maxsize=1)
def _bundled() -> Evidence:
    with resources.as_file(resources.files("shiftkit.recommend") / "data") as folder:
        return _load(Path(folder))


def _load(folder: Path) -> Evidence:
    path = folder / RESULTS_FILE
    results = []
    for row in _read(path, ("dataset", "domain", "task", "n_train", "n_eval", "n_classes", "architecture",
                            "strategy", "metric", "mean", "se")):
        results.append(Result(
            dataset=row["dataset"], domain=row["domain"], task=_check(row["task"], TASKS, "task", row, path),
            n_train=_number(row, "n_train", path, int), n_eval=_number(row, "n_eval", path, int),
            n_classes=_number(row, "n_classes", path, int), architecture=row["architecture"],
            strategy=_check(row["strategy"], PUBLISHED_STRATEGIES, "strategy", row, path), metric=row["metric"],
            mean=_number(row, "mean", path), se=_number(row, "se", path),
        ))
    path = folder / BEST_FILE
    best = [BestCell(
        dataset=row["dataset"], domain=row["domain"], n_train=_number(row, "n_train", path, int),
        n_classes=_number(row, "n_classes", path, int), task=_check(row["task"], TASKS, "task", row, path),
        architecture=row["best_architecture"],
        strategy=_check(row["best_strategy"], PUBLISHED_STRATEGIES, "best_strategy", row, path),
        gain=_number(row, "relative_improvement_over_ft_pct", path),
    ) for row in _read(path, ("dataset", "domain", "n_train", "n_classes", "task", "best_architecture",
                              "best_strategy", "relative_improvement_over_ft_pct"))]
    path = folder / EFFECTIVENESS_FILE
    rows = _read(path, ("strategy", "improved_experiments_pct"))
    effectiveness = {_check(row["strategy"], PUBLISHED_STRATEGIES, "strategy", row, path):
                     _number(row, "improved_experiments_pct", path) for row in rows}
    return Evidence(results=tuple(results), best_cells=tuple(best), effectiveness=effectiveness)
