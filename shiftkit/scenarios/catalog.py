"""The scenario catalogue: every scenario the evidence is built from, in one deterministic list.

Families group scenarios by the kind of shift (a leave-one-family-out evaluation holds one out):

- ``sharpness`` (blur, lower resolution), ``noise`` (Gaussian noise, JPEG) and ``intensity`` (contrast, gamma,
  colour cast; colour only on the RGB dermoscopy images): input-level corruptions of the target, two severities
  each, on PneumoniaMNIST, BreastMNIST and one HAM10000 site (``vidir_modern``, ``mel`` vs ``nv``);
- ``acquisition``: real site shift, HAM10000 site pairs, ``mel`` vs ``nv`` (four pairs) and ``bkl``/``mel``/``nv``
  (two pairs);
- ``prevalence``: the same images, other class priors at the target (PneumoniaMNIST, BreastMNIST, HAM10000);
- ``concept``: the target's labelling rule changed (two classes swapped, or merged into one);
- ``control``: no shift (the target is the source's distribution), the baseline every shift is measured against.

Every data variant comes at two target label budgets (:data:`~shiftkit.scenarios.spec.BUDGETS`) and from both
starting points (ImageNet, or the checkpoint trained on the source: ``finetune --init``). Sizes were chosen so that
every draw fits the shared data (a test plans the whole catalogue against it).
"""

from __future__ import annotations

from typing import Iterable

from shiftkit.scenarios.corruptions import CORRUPTIONS
from shiftkit.scenarios.spec import BUDGETS, STARTS, ScenarioSpec

FAMILY_OF_CORRUPTION = {"blur": "sharpness", "resolution": "sharpness", "noise": "noise", "jpeg": "noise",
                        "contrast": "intensity", "gamma": "intensity", "colour_cast": "intensity"}
FAMILIES = ("sharpness", "noise", "intensity", "acquisition", "prevalence", "concept", "control")

# One domain per dataset for the within-domain designs (corruptions, control, concept on MedMNIST).
WITHIN = (
    {"dataset": "pneumoniamnist", "source_size": 1000},
    {"dataset": "breastmnist"},
    {"dataset": "ham10000", "site": "vidir_modern", "classes": ("mel", "nv")},
)
ACQUISITION = (
    {"site": "rosendahl", "target_site": "vidir_modern", "classes": ("mel", "nv"), "test_size": 500},
    {"site": "vidir_modern", "target_site": "rosendahl", "classes": ("mel", "nv")},
    {"site": "vienna_dias", "target_site": "vidir_modern", "classes": ("mel", "nv"), "test_size": 500},
    {"site": "vidir_molemax", "target_site": "rosendahl", "classes": ("mel", "nv"), "source_size": 1500},
    {"site": "rosendahl", "target_site": "vidir_modern", "classes": ("bkl", "mel", "nv"), "test_size": 500},
    {"site": "vidir_modern", "target_site": "rosendahl", "classes": ("bkl", "mel", "nv"), "test_size": 500},
)
PREVALENCE = (
    {"dataset": "pneumoniamnist", "source_shares": {"0": 0.5, "1": 0.5}, "target_shares": {"0": 0.2, "1": 0.8},
     "source_size": 500, "test_size": 400},
    {"dataset": "pneumoniamnist", "source_shares": {"0": 0.5, "1": 0.5}, "target_shares": {"0": 0.7, "1": 0.3},
     "source_size": 500, "test_size": 400},
    {"dataset": "breastmnist", "source_shares": {"0": 0.5, "1": 0.5}, "target_shares": {"0": 0.1, "1": 0.9},
     "source_size": 200, "val_size": 60, "test_size": 100},
    {"dataset": "breastmnist", "source_shares": {"0": 0.5, "1": 0.5}, "target_shares": {"0": 0.3, "1": 0.7},
     "source_size": 200, "val_size": 60, "test_size": 100},
    {"dataset": "ham10000", "site": "vidir_modern", "classes": ("mel", "nv"), "source_shares": {"mel": 0.5, "nv": 0.5},
     "target_shares": {"mel": 0.1, "nv": 0.9}, "source_size": 200, "test_size": 300},
)
CONCEPT = (
    {"dataset": "ham10000", "site": "vidir_modern", "classes": ("bkl", "mel", "nv"), "relabel": {"bkl": "mel", "mel": "bkl"}},
    {"dataset": "ham10000", "site": "vidir_modern", "classes": ("bkl", "mel", "nv"),
     "relabel": {"bkl": "bkl_or_mel", "mel": "bkl_or_mel"}},
    {"dataset": "ham10000", "site": "rosendahl", "classes": ("bkl", "mel", "nv"), "relabel": {"bkl": "mel", "mel": "bkl"}},
    {"dataset": "ham10000", "site": "rosendahl", "classes": ("bkl", "mel", "nv"),
     "relabel": {"bkl": "bkl_or_mel", "mel": "bkl_or_mel"}},
    {"dataset": "pneumoniamnist", "source_size": 1000, "relabel": {"0": "1", "1": "0"}},
)


def _variants() -> list[tuple[str, str, dict]]:
    """(family, level, fields) of every data variant (a scenario but its budget and starting point)."""
    variants = []
    for domain in WITHIN:
        for name, item in CORRUPTIONS.items():
            if item.rgb_only and domain["dataset"] != "ham10000":
                continue  # a colour cast of a grey radiograph is not a shift anyone meets
            for severity in sorted(item.severities):
                variants.append((FAMILY_OF_CORRUPTION[name], "input", {**domain, "corruption": name,
                                                                       "severity": severity}))
    variants += [("acquisition", "acquisition", {"dataset": "ham10000", **pair}) for pair in ACQUISITION]
    variants += [("prevalence", "label", dict(item)) for item in PREVALENCE]
    variants += [("concept", "output", dict(item)) for item in CONCEPT]
    variants += [("control", "none", dict(domain)) for domain in WITHIN]
    return variants


def all_scenarios(seed: int = 0, budgets: Iterable[int] = BUDGETS,
                  starts: Iterable[str] = STARTS) -> list[ScenarioSpec]:
    """Every scenario of the catalogue, in a fixed order (variant, then budget, then starting point)."""
    specs = [ScenarioSpec.create(family, fields.pop("dataset"), level, budget=budget, start=start, seed=seed,
                                 **fields)
             for family, level, variant in _variants()
             for budget in budgets for start in starts
             for fields in [dict(variant)]]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise AssertionError("scenario names must be unique")
    return specs


def select(specs: Iterable[ScenarioSpec], **wanted) -> list[ScenarioSpec]:
    """The specs whose fields have the wanted values (a value, or a list/tuple/set of values):
    ``select(all_scenarios(), family=("noise", "control"), budget=50)``."""
    def matches(spec: ScenarioSpec) -> bool:
        for name, value in wanted.items():
            allowed = value if isinstance(value, (list, tuple, set, frozenset)) else (value,)
            if getattr(spec, name) not in allowed:
                return False
        return True

    return [spec for spec in specs if matches(spec)]
