"""The paper's tables from run records (Davila et al. 2024, §3.6, Tables 3–10 and 12, Figs. 6–11).

- **Protocol**: for each (architecture, strategy), the learning rate with the best *mean validation* value
  of the monitored metric over seeds is chosen (ties: the first in ``--lrs``); that learning rate's metrics
  on the reported split (test when given, else validation) are summarised as mean (SE) over seeds, where
  SE = sample standard deviation / sqrt(number of seeds).
- **Table**: rows are strategies, columns architecture × metric, values in percent; the best mean per column
  is marked (bold), and the best over all architectures per metric too (underlined in the paper).
- **Relative improvement** over ``ft`` (Figs. 6–11): 100 · (m − m_ft) / |m_ft|, in percent, per architecture.
- **Effectiveness** (Table 12): a strategy *improves* on ``ft`` in an experiment (here an architecture ×
  metric column) when its relative improvement exceeds 0.1 %; effectiveness = improved / experiments.
"""

from __future__ import annotations

import scipy.stats as sps
from dataclasses import dataclass, field
from typing import Callable, Sequence

from shiftkit.errors import DataError
from shiftkit.finetune.early_stopping import monitored_score

BASELINE = "ft"
IMPROVEMENT_THRESHOLD = 0.1  # percent, Table 12's "> 0.1 %"


@dataclass(frozen=True)
class Cell:
    """One strategy × architecture × metric: mean and standard error over seeds, at the chosen lr."""

    mean: float | None
    se: float | None
    n: int
    lr: float

    def to_dict(self) -> dict:
        return {"mean": self.mean, "se": self.se, "n": self.n, "lr": self.lr}


def mean_se(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, SE = sample sd / sqrt(n) (None for one value) and n, over the defined values."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if n == 0:
        return None, None, 0
    mean = sum(xs) / n
    if n == 1:
        return mean, None, 1
    return mean, float(sps.sem(xs)), n  # ddof=1: the sample sd over sqrt(n)


def _monitor_score(record: dict) -> float | None:
    val = record.get("val") or {}
    return monitored_score(record.get("monitor") or "auroc", val, val.get("loss"))


def choose_lrs(records: Sequence[dict]) -> dict[tuple[str, str], dict]:
    """Per (arch, strategy): the lr whose mean validation monitor over seeds is highest, and every lr's mean."""
    groups: dict[tuple[str, str], dict[float, list[dict]]] = {}
    for record in records:
        groups.setdefault((record["arch"], record["strategy"]), {}).setdefault(float(record["lr"]), []).append(record)
    chosen = {}
    for key, by_lr in groups.items():
        means = {lr: mean_se([_monitor_score(r) for r in rs])[0] for lr, rs in by_lr.items()}
        defined = [lr for lr in by_lr if means[lr] is not None]
        best = max(defined, key=lambda lr: means[lr]) if defined else next(iter(by_lr))
        chosen[key] = {"lr": best, "val_means": {f"{lr:g}": m for lr, m in means.items()}}
    return chosen


@dataclass(frozen=True)
class CompareTable:
    archs: tuple[str, ...]
    strategies: tuple[str, ...]
    metrics: tuple[str, ...]
    main_metric: str
    split: str  # "test" or "val": what the cells summarise
    cells: dict  # (strategy, arch, metric) -> Cell
    chosen: dict  # (arch, strategy) -> {"lr", "val_means"}
    best: dict = field(default_factory=dict)  # (arch, metric) -> tuple of strategies
    overall_best: dict = field(default_factory=dict)  # metric -> tuple of (arch, strategy)

    def value(self, strategy: str, arch: str, metric: str) -> float | None:
        cell = self.cells.get((strategy, arch, metric))
        return None if cell is None else cell.mean

    def winner(self, arch: str, metric: str | None = None) -> str | None:
        """The best strategy for ``arch`` on ``metric`` (default the main one); ties: table order."""
        marked = self.best.get((arch, metric or self.main_metric), ())
        return marked[0] if marked else None

    def to_dict(self) -> dict:
        return {
            "archs": list(self.archs),
            "strategies": list(self.strategies),
            "metrics": list(self.metrics),
            "main_metric": self.main_metric,
            "split": self.split,
            "rows": {
                s: {a: {m: self.cells[(s, a, m)].to_dict() for m in self.metrics if (s, a, m) in self.cells}
                    for a in self.archs}
                for s in self.strategies
            },
            "chosen_lr": {a: {s: self.chosen[(a, s)] for s in self.strategies if (a, s) in self.chosen}
                          for a in self.archs},
            "best": {a: {m: list(self.best.get((a, m), ())) for m in self.metrics} for a in self.archs},
            "overall_best": {m: [list(x) for x in self.overall_best.get(m, ())] for m in self.metrics},
        }


def _best_of(candidates: dict, tolerance: float = 1e-12) -> tuple:
    defined = {k: v for k, v in candidates.items() if v is not None}
    if not defined:
        return ()
    top = max(defined.values())
    return tuple(k for k, v in defined.items() if v >= top - tolerance)


def build_table(
    records: Sequence[dict],
    metrics: Sequence[str],
    main_metric: str | None = None,
    archs: Sequence[str] | None = None,
    strategies: Sequence[str] | None = None,
) -> CompareTable:
    """Summarise run records by the paper's protocol (see the module docstring)."""
    if not records:
        raise DataError("no finished runs to summarise")
    archs = tuple(archs or dict.fromkeys(r["arch"] for r in records))
    strategies = tuple(strategies or dict.fromkeys(r["strategy"] for r in records))
    split = "test" if all(r.get("test") for r in records) else "val"
    main_metric = main_metric or next((r["monitor"] for r in records if r.get("monitor") not in (None, "val_loss")),
                                      metrics[0])
    chosen = choose_lrs(records)
    cells = {}
    for (arch, strategy), choice in chosen.items():
        runs = [r for r in records
                if r["arch"] == arch and r["strategy"] == strategy and float(r["lr"]) == choice["lr"]]
        for metric in metrics:
            mean, se, n = mean_se([(r.get(split) or {}).get(metric) for r in runs])
            cells[(strategy, arch, metric)] = Cell(mean, se, n, choice["lr"])
    best = {
        (a, m): _best_of({s: cells[(s, a, m)].mean for s in strategies if (s, a, m) in cells})
        for a in archs for m in metrics
    }
    overall = {
        m: _best_of({(a, s): cells[(s, a, m)].mean for a in archs for s in strategies if (s, a, m) in cells})
        for m in metrics
    }
    return CompareTable(archs, strategies, tuple(metrics), main_metric, split, cells, chosen, best, overall)


def relative_improvement(table: CompareTable, metric: str | None = None) -> dict[str, dict[str, float | None]]:
    """Per architecture, each strategy's percentage change over ``ft`` (empty when ``ft`` was not run)."""
    metric = metric or table.main_metric
    out: dict[str, dict[str, float | None]] = {}
    for arch in table.archs:
        base = table.value(BASELINE, arch, metric)
        if base is None or base == 0:
            continue
        out[arch] = {}
        for strategy in table.strategies:
            value = table.value(strategy, arch, metric)
            out[arch][strategy] = None if value is None else 100.0 * (value - base) / abs(base)
    return out


def effectiveness(table: CompareTable, threshold: float = IMPROVEMENT_THRESHOLD) -> dict:
    """Table 12: per strategy and architecture, in how many metric columns it beats ``ft`` by > threshold %."""
    per_metric = {m: relative_improvement(table, m) for m in table.metrics}
    rows: dict[str, dict] = {}
    for strategy in table.strategies:
        if strategy == BASELINE:
            continue
        counts, experiments = {}, 0
        for arch in table.archs:
            changes = [per_metric[m].get(arch, {}).get(strategy) for m in table.metrics]
            changes = [c for c in changes if c is not None]
            counts[arch] = sum(c > threshold for c in changes)
            experiments += len(changes)
        total = sum(counts.values())
        rows[strategy] = {"per_arch": counts, "total": total, "experiments": experiments,
                          "effectiveness": 100.0 * total / experiments if experiments else None}
    arch_totals = {a: sum(r["per_arch"][a] for r in rows.values()) for a in table.archs}
    return {"threshold_percent": threshold, "rows": rows, "arch_totals": arch_totals,
            "total": sum(arch_totals.values())}


# -- text ------------------------------------------------------------------------------------------------
def format_cell(cell: Cell | None) -> str:
    """Percent with two decimals, SE in parentheses: ``71.98 (0.71)``; ``—`` when undefined."""
    if cell is None or cell.mean is None:
        return "—"
    se = "—" if cell.se is None else f"{100 * cell.se:.2f}"
    return f"{100 * cell.mean:.2f} ({se})"


def table_header(table: CompareTable) -> list[str]:
    return ["Method"] + [f"{a} {m}" for a in table.archs for m in table.metrics]


def marked_rows(table: CompareTable, best: Callable[[str], str], overall: Callable[[str], str]) -> list[list[str]]:
    """The table's rows as text, each cell passed through ``best`` when it is the best in its column and
    through ``overall`` when it is the best over all architectures for its metric."""
    rows = []
    for s in table.strategies:
        row = [s]
        for a in table.archs:
            for m in table.metrics:
                text = format_cell(table.cells.get((s, a, m)))
                if s in table.best.get((a, m), ()):
                    text = best(text)
                if len(table.archs) > 1 and (a, s) in table.overall_best.get(m, ()):
                    text = overall(text)
                row.append(text)
        rows.append(row)
    return rows


def table_markdown(table: CompareTable) -> str:
    """Rows strategies, columns arch × metric; **bold** = best in the column, <u>underlined</u> = best over
    all architectures for that metric (as in the paper)."""
    header = table_header(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    rows = marked_rows(table, lambda text: f"**{text}**", lambda text: f"<u>{text}</u>")
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def effectiveness_markdown(table: CompareTable, summary: dict) -> str:
    header = ["Method", *table.archs, "Total", "Effectiveness (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for strategy, row in summary["rows"].items():
        eff = "—" if row["effectiveness"] is None else f"{row['effectiveness']:.1f}"
        lines.append("| " + " | ".join([strategy, *(str(row["per_arch"][a]) for a in table.archs),
                                        f"{row['total']}/{row['experiments']}", eff]) + " |")
    lines.append("| " + " | ".join(["Total", *(str(summary["arch_totals"][a]) for a in table.archs),
                                    str(summary["total"]), ""]) + " |")
    return "\n".join(lines)
