"""Leave-one-family-out evaluation of the recommenders over the measured scenario evidence.

Each shift family (sharpness, noise, intensity, acquisition, prevalence, concept, control) is held out in turn: the
recommender is fitted to the other families only (its bandwidth chosen by an inner leave-one-family-out among them,
:func:`shiftkit.recommend.nearest.fit`), then ranks the strategies of every held-out scenario from its fingerprint.
A split in which a held-out scenario or its target data sits in training is refused
(:func:`~shiftkit.recommend.nearest.check_no_leak`).

Scores per method, over all held-out scenarios:

- top-1 / top-3: one of the first k strategies is a winner, i.e. within one standard error (of the difference,
  the two strategies' seed standard errors combined) of the scenario's best;
- mean regret: target metric points (percent) lost by the first-ranked strategy against the scenario's best.

Methods: the recommender; ``always ft``; ``always lp_ft``; ``best single strategy`` (the highest mean gain over the
training families); ``prior recommender`` (the published-evidence recommender with its hand-set shift prior,
:func:`shiftkit.recommend.recommender.recommend`, from the scenario's facts); ``oracle`` (a winner first). The
constants' top-3 continue with the best single strategy's order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from shiftkit.errors import DataError
from shiftkit.recommend.nearest import NearestModel, family_splits, fit
from shiftkit.recommend.scenario_evidence import Scenario
from shiftkit.scenarios.evidence import EVIDENCE_PROTOCOL

METHODS = ("recommender", "always ft", "always lp_ft", "best single strategy", "prior recommender", "oracle")
PRIOR_ARCH = EVIDENCE_PROTOCOL["arch"]  # the architecture the prior recommender ranks for (the evidence's)


def _pooled_order(train: Sequence[Scenario]) -> list[str]:
    """The best single strategy's order: the recommender without any feature (every scenario weighs the same)."""
    return fit(train, candidates=(), select=False).rank({})


def _constant(first: str, order: list[str]) -> list[str]:
    return [first] + [s for s in order if s != first]


def _prior_ranking(scenario: Scenario) -> list[str] | None:
    if not scenario.facts:
        return None
    from shiftkit.recommend.recommender import ShiftFacts, recommend

    return [a.strategy for a in recommend(ShiftFacts(**scenario.facts), PRIOR_ARCH).ranking]


@dataclass(frozen=True)
class HeldOut:
    """One held-out scenario: each method's ranking, and what the scenario's outcomes say of it."""

    scenario: Scenario = field(hash=False)
    rankings: dict[str, list[str]] = field(hash=False)

    def hit(self, method: str, k: int) -> bool:
        return any(s in self.scenario.winners() for s in self.rankings[method][:k])

    def regret(self, method: str) -> float:
        return self.scenario.regret(self.rankings[method][0])


@dataclass(frozen=True)
class FamilyEvaluation:
    held_out: list[HeldOut] = field(hash=False)
    models: dict[str, dict] = field(hash=False)  # held-out family -> the model fitted without it (features, bandwidth)

    def methods(self) -> list[str]:
        return [m for m in METHODS if all(m in h.rankings for h in self.held_out)]

    def score(self, method: str, family: str | None = None) -> dict[str, float]:
        chosen = [h for h in self.held_out if family is None or h.scenario.family == family]
        n = len(chosen)
        return {"top1": sum(h.hit(method, 1) for h in chosen) / n, "top3": sum(h.hit(method, 3) for h in chosen) / n,
                "regret": sum(h.regret(method) for h in chosen) / n, "n": n}

    def winners_by_family(self) -> dict[str, dict[str, int]]:
        """family -> strategy -> scenarios it won (ties all count)."""
        table: dict[str, dict[str, int]] = {}
        for h in self.held_out:
            counts = table.setdefault(h.scenario.family, {})
            for s in h.scenario.winners():
                counts[s] = counts.get(s, 0) + 1
        return {f: dict(sorted(c.items(), key=lambda kv: -kv[1])) for f, c in sorted(table.items())}

    def to_dict(self) -> dict:
        families = sorted({h.scenario.family for h in self.held_out})
        return {
            "protocol": "leave-one-family-out; a hit = within one SE of the scenario's best; regret in metric points",
            "scenarios": len(self.held_out), "families": families,
            "ties": sum(len(h.scenario.winners()) > 1 for h in self.held_out),
            "scores": {m: self.score(m) for m in self.methods()},
            "by_family": {f: {m: self.score(m, f) for m in self.methods()} for f in families},
            "winners_by_family": self.winners_by_family(),
            "models": self.models,
            "per_scenario": [{"name": h.scenario.name, "family": h.scenario.family,
                              "winners": list(h.scenario.winners()),
                              "first": {m: h.rankings[m][0] for m in self.methods()},
                              "regret": {m: h.regret(m) for m in self.methods()}} for h in self.held_out],
        }


def leave_one_family_out(scenarios: Sequence[Scenario],
                         fitter: Callable[[Sequence[Scenario]], NearestModel] = fit) -> FamilyEvaluation:
    """Hold out each family in turn, fit on the rest, rank the held-out scenarios with every method."""
    families = {s.family for s in scenarios}
    if len(families) < 2:
        raise DataError(f"the scenario evidence holds {len(scenarios)} scenario(s) in {len(families)} family(ies): "
                        "leave-one-family-out needs at least two families (run benchmarks/strategy_evidence.py)")
    held_out, models = [], {}
    for family, train, held in family_splits(scenarios):
        model = fitter(train)
        models[family] = {"features": list(model.features),
                          "bandwidth": None if model.bandwidth == float("inf") else model.bandwidth}
        order = _pooled_order(train)
        for scenario in held:
            rankings = {"recommender": model.rank(scenario.features),
                        "always ft": _constant("ft", order), "always lp_ft": _constant("lp_ft", order),
                        "best single strategy": order,
                        "oracle": _constant(max(scenario.outcomes, key=lambda s: scenario.outcomes[s].mean), order)}
            prior = _prior_ranking(scenario)
            if prior is not None:
                rankings["prior recommender"] = prior
            held_out.append(HeldOut(scenario, rankings))
    return FamilyEvaluation(held_out, models)
