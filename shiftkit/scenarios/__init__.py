"""Scenarios of distribution shift, built from the shared data (``../shared/data``) for the strategy evidence.

A scenario is a :class:`ScenarioSpec` (JSON-able); :func:`build` writes its source, target, validation and test
CSVs (and the corrupted images) under a build root; :func:`all_scenarios` is the catalogue. A runner trains with
``shiftkit compare TARGET --val VAL --test TEST`` and, for ``start == "source"``, ``--init`` the checkpoint trained on
the scenario's source (one per :attr:`ScenarioSpec.source_key`).
"""

from shiftkit.scenarios.build import Plan, build, plan
from shiftkit.scenarios.catalog import FAMILIES, all_scenarios, select
from shiftkit.scenarios.corruptions import CORRUPTIONS, corruption
from shiftkit.scenarios.evidence import EVIDENCE_PROTOCOL, evidence_slice
from shiftkit.scenarios.sources import data_root
from shiftkit.scenarios.spec import BUDGETS, LEVELS, STARTS, ScenarioSpec

__all__ = ["BUDGETS", "CORRUPTIONS", "EVIDENCE_PROTOCOL", "FAMILIES", "LEVELS", "STARTS", "Plan", "ScenarioSpec", "all_scenarios", "build",
           "corruption", "data_root", "evidence_slice", "plan", "select"]
