"""Leave-one-dataset-out evaluation of the recommender over the published evidence.

For each published dataset, every row of that dataset is removed from the evidence, the recommender ranks the
strategies from the dataset's own facts (training-set size, classes, task type, domain; no shift measurements, as
the paper has none) for each architecture, and the ranking is scored against the strategy that actually won on
that (dataset, architecture) case's main metric:

- the 18 full cases (6 datasets x 3 architectures, Tables 3, 5, 7-10);
- the 2 Table-11-only cells (MURA-Shoulder / vgg19, MURA-Humerus / densenet121): their winner is known, the rest
  of their table is not.

A hit at k means one of the case's best strategies (ties kept) is in the top k. Baselines, scored the same way:
``always lp_ft`` and ``always ft`` (top 1: the constant; top 3: the constant, then the two best strategies by
pooled mean gain over the training folds) and ``pooled mean`` (the strategies by their unweighted mean gain over
the training folds: the recommender without any similarity weight).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from shiftkit.recommend.evidence import PUBLISHED_STRATEGIES, Evidence, load_evidence
from shiftkit.recommend.recommender import ShiftFacts, recommend

METHODS = ("recommender", "always lp_ft", "always ft", "pooled mean")


@dataclass(frozen=True)
class LodoCase:
    dataset: str
    architecture: str
    source: str  # "tables" (full table) or "table11" (only the winning cell is published)
    best: tuple[str, ...]
    rankings: dict[str, list[str]] = field(hash=False)  # method -> strategies, best first

    def hit(self, method: str, k: int) -> bool:
        return any(s in self.best for s in self.rankings[method][:k])


@dataclass(frozen=True)
class LodoResult:
    cases: list[LodoCase] = field(hash=False)

    @property
    def n_cases(self) -> int:
        return len(self.cases)

    @property
    def n_datasets(self) -> int:
        return len({c.dataset for c in self.cases})

    def rate(self, method: str, k: int, source: str | None = None) -> float:
        """Share of cases (optionally only ``tables`` or ``table11`` ones) whose best strategy is in the top k."""
        chosen = [c for c in self.cases if source is None or c.source == source]
        return sum(c.hit(method, k) for c in chosen) / len(chosen) if chosen else float("nan")

    def rates(self) -> dict[str, dict[str, float]]:
        return {m: {"top1": self.rate(m, 1), "top3": self.rate(m, 3)} for m in METHODS}

    def to_dict(self) -> dict:
        return {
            "n_cases": self.n_cases,
            "n_datasets": self.n_datasets,
            "n_full_cases": sum(c.source == "tables" for c in self.cases),
            "rates": self.rates(),
            "rates_full_cases_only": {m: {"top1": self.rate(m, 1, "tables"), "top3": self.rate(m, 3, "tables")}
                                      for m in METHODS},
            "cases": [asdict(c) for c in self.cases],
        }


def _pooled_order(evidence: Evidence) -> list[str]:
    cases = evidence.cases()
    mean = {s: sum(c.gains[s] for c in cases) / len(cases) for s in PUBLISHED_STRATEGIES}
    return sorted(PUBLISHED_STRATEGIES, key=lambda s: (-mean[s], PUBLISHED_STRATEGIES.index(s)))


def _constant(first: str, pooled: list[str]) -> list[str]:
    return [first] + [s for s in pooled if s != first]


def leave_one_dataset_out(evidence: Evidence | None = None) -> LodoResult:
    """Hold out each dataset in turn and score every ranking method on its (dataset, architecture) cases."""
    evidence = evidence or load_evidence()
    targets = [(c.dataset, c.architecture, "tables", c.best, c.n_train, c.n_classes, c.task, c.domain)
               for c in evidence.cases()]
    full = {(t[0], t[1]) for t in targets}
    targets += [(b.dataset, b.architecture, "table11", (b.strategy,), b.n_train, b.n_classes, b.task, b.domain)
                for b in evidence.best_cells if (b.dataset, b.architecture) not in full
                and not any(t[0] == b.dataset for t in targets)]
    cases = []
    for dataset, arch, source, best, n_train, n_classes, task, domain in targets:
        training = evidence.without(dataset)
        facts = ShiftFacts(train_size=n_train, num_classes=n_classes, multilabel=task == "multilabel",
                           domain=domain)
        pooled = _pooled_order(training)
        rankings = {
            "recommender": [a.strategy for a in recommend(facts, arch, evidence=training).ranking],
            "always lp_ft": _constant("lp_ft", pooled),
            "always ft": _constant("ft", pooled),
            "pooled mean": pooled,
        }
        cases.append(LodoCase(dataset=dataset, architecture=arch, source=source, best=best, rankings=rankings))
    return LodoResult(cases=cases)
