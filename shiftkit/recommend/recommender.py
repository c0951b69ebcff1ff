"""Rank the eight fine-tuning strategies for one source/target pair, with expected gains and checkable reasons.

The model (documented in README, "Recommendation"), in two explicit parts:

1. **Evidence** (fitted to nothing, read from the paper): every published (dataset, architecture) case of
   Davila et al. 2024 with all eight strategies (18 cases; :mod:`shiftkit.recommend.evidence`) gets a similarity
   weight to your setting, the product of
   - training-set size: ``exp(-½ (Δ log10 n / 0.5)²)`` (half a decade ≈ one standard deviation),
   - number of classes: ``exp(-½ (Δ log2 k)²)``,
   - task type: 1 if equal, 0.5 binary↔multiclass, 0.25 multi-label↔single-label,
   - imaging domain: 1 if equal, 0.25 otherwise (1 for every case when the domain is unknown or unpublished),
   - architecture: :data:`ARCH_SIMILARITY` (1 for the same network; shiftkit's other backbones borrow the
     evidence of the published ones they resemble, and say so).
   A factor whose fact is unknown is 1. A strategy's evidence gain is the weighted mean of its relative gains over
   ``ft`` in those cases, shrunk toward its architecture-weighted mean over all cases with a pseudo-weight of
   :data:`SHRINKAGE` (one strong match outweighs it; nothing in the weights is tuned to the evaluation).
   Its uncertainty is the weighted standard deviation of the gains across the cases (how much the outcome varied
   between similar published settings), combined with the seeds' standard errors and the prior below.
2. **Shift priors**. The published evidence has no shift measurements per dataset, so shift cannot be learnt from
   it. Covariate shift enters as a documented prior, :data:`COVARIATE_PRIOR`, in percent of gain over ``ft``,
   scaled by the verdict (``none`` 0, ``mild`` ½, ``strong`` 1): strategies that keep early layers and their
   BatchNorm statistics at the pre-trained values (``lp``, then ``g_lf``, and the weight-anchoring ``l1_sp``,
   ``l2_sp``) lose, those that adapt early layers (``g_fl``, ``auto_rgn``) gain; ``ft`` and ``lp_ft`` train every
   layer and get none. Why: the shift taxonomy (a frozen extractor under covariate shift responds "in incorrect
   activation regimes"; adapting the extractor or BN to the target statistics reduces that), the paper's §5
   (regularisation toward pre-trained weights "might ... constrain adaptation to domains significantly divergent
   from the source domain") and surgical fine-tuning (Lee et al. 2023, cited in §5: input-level shift is best
   handled by early layers). The prior's own size is added to the uncertainty (it is a judgement, not a fit).
   A strong class imbalance (largest/smallest ≥ 10) adds :data:`IMBALANCE_PRIOR` (§5: ``lp`` "could reduce the
   risk of overfitting to the minority classes", ISIC 2020). Label and concept shift change no ranking: no
   fine-tuning strategy addresses them in the evidence; they produce notes (re-weight priors, label target data).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from shiftkit.errors import ConfigError, DataError
from shiftkit.recommend.evidence import ARCHITECTURES as PUBLISHED_ARCHS
from shiftkit.recommend.evidence import PUBLISHED_STRATEGIES, Case, Evidence, load_evidence

SIZE_BANDWIDTH = 0.5  # decades of training-set size per standard deviation of the size kernel
CLASS_BANDWIDTH = 1.0  # doublings of the class count per standard deviation
TASK_SIMILARITY = {frozenset({"binary", "multiclass"}): 0.5}  # multi-label vs single-label: OTHER_TASK
OTHER_TASK = 0.25
OTHER_DOMAIN = 0.25
SHRINKAGE = 0.5  # pseudo-weight of the architecture-weighted mean over all cases
SMALL_SET, LARGE_SET = 1000, 20000
COVARIATE_SCALE = {"none": 0.0, "mild": 0.5, "strong": 1.0}
COVARIATE_PRIOR = {"ft": 0.0, "lp": -2.0, "g_lf": -1.0, "g_fl": 1.0, "lp_ft": 0.0, "l1_sp": -0.5, "l2_sp": -0.5,
                   "auto_rgn": 0.5}
IMBALANCE_THRESHOLD = 10.0
IMBALANCE_PRIOR = {"lp": 1.0}
EARLY_FIXED = ("lp", "g_lf", "lp_ft")  # keep early layers at their pre-trained values at first
EARLY_TRAINED = ("ft", "g_fl", "l1_sp", "l2_sp", "auto_rgn")

COVARIATE_WHY = {
    "lp": "the whole backbone stays frozen in eval mode, so its filters and BatchNorm statistics stay ImageNet's and "
          "respond to the shifted inputs in the wrong regime (taxonomy seed: a frozen extractor's approximation error)",
    "g_lf": "early blocks stay frozen (BatchNorm in eval mode) until its last stages, so low-level statistics "
            "adapt last",
    "g_fl": "it adapts the first blocks first (surgical fine-tuning, Lee et al. 2023, cited in §5: input-level shift "
            "is best handled by early layers)",
    "auto_rgn": "per-tensor learning rates follow each layer's relative gradient norm, so the early layers the shift "
                "disturbs can take larger steps (Lee et al. 2023)",
    "l1_sp": "it pulls every weight back toward its pre-trained value (§5: this 'might constrain adaptation to domains "
             "significantly divergent from the source')",
    "l2_sp": "it pulls every weight back toward its pre-trained value (§5: this 'might constrain adaptation to domains "
             "significantly divergent from the source')",
    "ft": "it trains every layer, early ones included",
    "lp_ft": "it trains every layer after its head-only stage",
}

# Architecture -> weight of each published architecture's evidence, and why.
ARCH_SIMILARITY: dict[str, tuple[dict[str, float], str]] = {
    "resnet50": ({"resnet50": 1.0, "densenet121": 0.5, "vgg19": 0.25}, "published"),
    "densenet121": ({"densenet121": 1.0, "resnet50": 0.5, "vgg19": 0.25}, "published"),
    "vgg19": ({"vgg19": 1.0, "resnet50": 0.25, "densenet121": 0.25}, "published"),
    "resnet18": ({"resnet50": 1.0, "densenet121": 0.5, "vgg19": 0.25},
                 "resnet18 is not in the paper: resnet50's evidence is used (same residual family, same 6-block "
                 "partition in shiftkit), densenet121's at half weight and vgg19's at a quarter"),
    "efficientnet_lite0": ({"resnet50": 0.75, "densenet121": 0.75, "vgg19": 0.25},
                           "efficientnet_lite0 is not in the paper: resnet50's and densenet121's evidence is used "
                           "equally (skip connections, BatchNorm, few parameters: the pair §5 groups together), "
                           "vgg19's (144 M parameters, no skip connections) at a third of their weight"),
}
UNKNOWN_ARCH = ({"resnet50": 1.0, "densenet121": 1.0, "vgg19": 1.0},
                "{arch} is neither in the paper nor in shiftkit's registry: the three published architectures' "
                "evidence is pooled with equal weight")

DOMAIN_ALIASES = {
    "xray": "X-ray", "x-ray": "X-ray", "radiography": "X-ray", "cxr": "X-ray", "chestxray": "X-ray",
    "mri": "MRI", "mr": "MRI",
    "histology": "Histology", "histopathology": "Histology", "pathology": "Histology", "microscopy": "Histology",
    "dermoscopy": "Dermoscopy", "dermatology": "Dermoscopy", "skin": "Dermoscopy",
    "endoscopy": "Endoscopy", "surgical": "Endoscopy", "laparoscopy": "Endoscopy",
}

MODEL = ("similarity-weighted mean of the published relative gains over ft (Davila et al. 2024, 18 dataset x "
         "architecture cases; weights over log training-set size, classes, task type, domain, architecture), "
         "shrunk toward the architecture's mean over all cases, plus documented priors for covariate shift and "
         "class imbalance (the published evidence has no shift measurements)")


@dataclass(frozen=True)
class ShiftFacts:
    """What the recommender needs to know about your data and its shift (any of it may be unknown: None)."""

    train_size: int | None = None  # labelled images you will fine-tune on
    num_classes: int | None = None
    imbalance: float | None = None  # largest / smallest class count
    multilabel: bool = False
    covariate_strength: str | None = None  # none | mild | strong
    covariate_auc: float | None = None  # domain-classifier AUC
    label_tv: float | None = None  # total variation between estimated target and source priors
    concept: str | None = None  # none | mild | strong
    domain: str | None = None  # imaging domain, e.g. X-ray, MRI, Histology, Dermoscopy, Endoscopy

    def __post_init__(self) -> None:
        if self.covariate_strength not in (None, "none", "mild", "strong"):
            raise ConfigError(f"covariate strength '{self.covariate_strength}' is not one of none, mild, strong")
        if self.concept not in (None, "none", "mild", "strong"):
            raise ConfigError(f"concept shift '{self.concept}' is not one of none, mild, strong")
        if self.train_size is not None and self.train_size < 1:
            raise ConfigError(f"training-set size {self.train_size} must be at least 1")
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"number of classes {self.num_classes} must be at least 1")

    @property
    def task(self) -> str | None:
        if self.multilabel:
            return "multilabel"
        if self.num_classes is None:
            return None
        return "binary" if self.num_classes <= 2 else "multiclass"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_report(cls, report: dict) -> "ShiftFacts":
        """Read the facts from a ``report.json`` written by ``shiftkit diagnose``.

        The training set is the SOURCE (``dataset.n_source``): the labelled images the model is fine-tuned on
        before it meets the target. The imaging domain is not measured by diagnose; it comes from a previous
        recommendation in the report or ``settings.domain`` when present.
        """
        if not isinstance(report, dict):
            raise DataError("the report is not a JSON object: not a report written by `shiftkit diagnose`")
        dataset = _section(report, "dataset")
        verdict = _section(report, "verdict")
        covariate = report.get("covariate")
        if not isinstance(covariate, dict):
            raise DataError("the report has no 'covariate' section: not a report written by `shiftkit diagnose`")
        n_source = dataset.get("n_source")
        if not isinstance(n_source, int) or isinstance(n_source, bool) or n_source < 0:
            raise DataError(f"the report's dataset.n_source is {n_source!r}, not a count of images")
        classes = dataset.get("classes")
        if not isinstance(classes, list):
            raise DataError(f"the report's dataset.classes is {classes!r}, not a list of class names")
        imbalance = dataset.get("imbalance_ratio")
        if imbalance is not None and not isinstance(imbalance, (int, float)):
            raise DataError(f"the report's dataset.imbalance_ratio is {imbalance!r}, not a number")
        auc = covariate.get("domain_classifier", {}) or {}
        auc = auc.get("statistic") if isinstance(auc, dict) else None
        label = report.get("label")
        label_tv = None
        if isinstance(label, dict):
            label_tv = (label.get("details") or {}).get("total_variation")
            if label_tv is None and isinstance(label.get("statistic"), (int, float)):
                label_tv = 0.5 * label["statistic"]
        previous = report.get("recommendation")
        domain = ((previous or {}).get("facts") or {}).get("domain") if isinstance(previous, dict) else None
        domain = domain or (report.get("settings") or {}).get("domain")
        return cls(
            train_size=n_source or None,
            num_classes=len(classes) or None,
            imbalance=float(imbalance) if imbalance is not None else None,
            multilabel=bool(dataset.get("multilabel", False)),
            covariate_strength=_level(verdict, "covariate"),
            covariate_auc=float(auc) if isinstance(auc, (int, float)) else None,
            label_tv=float(label_tv) if isinstance(label_tv, (int, float)) else None,
            concept=_level(verdict, "concept"),
            domain=domain,
        )


def _section(report: dict, key: str) -> dict:
    value = report.get(key)
    if not isinstance(value, dict):
        raise DataError(f"the report has no '{key}' section: not a report written by `shiftkit diagnose`")
    return value


def _level(verdict: dict, name: str) -> str | None:
    entry = verdict.get(name)
    if entry is None:
        return None
    level = entry.get("level") if isinstance(entry, dict) else None
    if level not in ("none", "mild", "strong", "undecided", "not measured"):
        raise DataError(f"the report's verdict.{name}.level is {level!r}, not none, mild, strong, undecided or "
                        "not measured")
    return None if level in ("undecided", "not measured") else level  # undecided: the test could not tell


@dataclass(frozen=True)
class StrategyAdvice:
    """One strategy's expected relative gain over ``ft`` (percent of the main metric) ± uncertainty, and why."""

    strategy: str
    expected_gain: float
    uncertainty: float
    reasons: list[str] = field(hash=False)
    evidence: list[dict[str, Any]] = field(hash=False)  # the most similar published cases behind the estimate

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Recommendation:
    """A ranked list of strategies, best first, with what it rests on."""

    arch: str
    facts: ShiftFacts
    ranking: list[StrategyAdvice] = field(hash=False)
    evidence_architectures: dict[str, float] = field(hash=False)
    notes: list[str] = field(hash=False)
    effective_cases: float = 0.0  # (Σw)² / Σw²: how many published cases the estimate effectively rests on
    model: str = MODEL

    @property
    def best(self) -> StrategyAdvice:
        return self.ranking[0]

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "best": self.ranking[0].strategy if self.ranking else None,
            "facts": self.facts.to_dict(),
            "ranking": [a.to_dict() for a in self.ranking],
            "evidence_architectures": self.evidence_architectures,
            "effective_cases": self.effective_cases,
            "notes": self.notes,
            "model": self.model,
            "unit": "relative gain over ft, percent of the main metric (paper Table 11)",
        }


def normalize_domain(domain: str | None) -> str | None:
    """Map a user's spelling (``xray``, ``histopathology``) to the paper's domain names; unknown names pass through."""
    if domain is None or not domain.strip():
        return None
    key = "".join(ch for ch in domain.lower() if ch.isalnum() or ch == "-")
    return DOMAIN_ALIASES.get(key, DOMAIN_ALIASES.get(key.replace("-", ""), domain.strip()))


def arch_weights(arch: str) -> tuple[dict[str, float], str]:
    """Weight of each published architecture's evidence for ``arch``, and the sentence that explains it."""
    key = arch.strip().lower()
    if key in ARCH_SIMILARITY:
        weights, why = ARCH_SIMILARITY[key]
        if why == "published":
            why = f"{key} is one of the paper's architectures: its own cases weigh most"
        return weights, why
    weights, why = UNKNOWN_ARCH
    return weights, why.format(arch=arch)


def _kernel(facts: ShiftFacts, domain: str | None, case: Case, arch_w: dict[str, float]) -> float:
    w = arch_w.get(case.architecture, 0.0)
    if facts.train_size is not None:
        w *= math.exp(-0.5 * (math.log10(facts.train_size / case.n_train) / SIZE_BANDWIDTH) ** 2)
    if facts.num_classes is not None:
        w *= math.exp(-0.5 * (math.log2(facts.num_classes / case.n_classes) / CLASS_BANDWIDTH) ** 2)
    task = facts.task
    if task is not None and task != case.task:
        w *= TASK_SIMILARITY.get(frozenset({task, case.task}), OTHER_TASK)
    if domain is not None and domain != case.domain:
        w *= OTHER_DOMAIN
    return w


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _size_reason(strategy: str, n: int, cases: list[Case]) -> str | None:
    """What the published results say for sets of this size: checkable against the paper's tables."""
    if SMALL_SET <= n <= LARGE_SET:
        return None
    small = n < SMALL_SET
    group = [c for c in cases if (c.n_train < SMALL_SET if small else c.n_train > LARGE_SET)]
    label = f"{'small' if small else 'large'} training set ({n:,} images)"
    bound = f"{'under' if small else 'over'} {SMALL_SET if small else LARGE_SET:,} images"
    if not group:
        return f"{label}: no published set is {bound}; the size weights fall back to the nearest published sizes"
    names = ", ".join(dict.fromkeys(f"{c.dataset}: {c.n_train:,}" for c in group))
    mean = {s: _mean([c.gains[s] for c in group]) for s in PUBLISHED_STRATEGIES}
    rank = sorted(PUBLISHED_STRATEGIES, key=lambda s: -mean[s]).index(strategy) + 1
    fixed, trained = _mean([mean[s] for s in EARLY_FIXED]), _mean([mean[s] for s in EARLY_TRAINED])
    family = "keep early layers fixed at first (lp, g_lf, lp_ft)" if strategy in EARLY_FIXED else \
        "train early layers from the start (ft, g_fl, l1_sp, l2_sp, auto_rgn)"
    return (f"{label}: on the published sets {bound} ({names}), {strategy} gained {mean[strategy]:+.1f} % on average "
            f"over {len(group)} cases (rank {rank} of 8); strategies that {family} averaged "
            f"{fixed if strategy in EARLY_FIXED else trained:+.1f} % there, the others "
            f"{trained if strategy in EARLY_FIXED else fixed:+.1f} %")


def recommend(facts: ShiftFacts, arch: str, top: int | None = None, evidence: Evidence | None = None) -> Recommendation:
    """Rank the eight strategies for ``facts`` and ``arch``, best first (see the module docstring for the model)."""
    if top is not None and top < 1:
        raise ConfigError(f"--top {top} must be at least 1")
    evidence = evidence or load_evidence()
    cases = evidence.cases()
    if not cases:
        raise DataError("the evidence holds no complete (dataset, architecture) case to learn from")
    arch_w, arch_why = arch_weights(arch)
    domain = normalize_domain(facts.domain)
    known_domains = {c.domain for c in cases}
    notes = [arch_why]
    if domain is not None and domain not in known_domains:
        notes.append(f"domain '{domain}' has no published case (published: {', '.join(sorted(known_domains))}): "
                     "the domain did not weigh")
        domain = None
    weights = [_kernel(facts, domain, c, arch_w) for c in cases]
    total = sum(weights)
    effective = total ** 2 / sum(w * w for w in weights) if total > 0 else 0.0
    pooled_w = [arch_w.get(c.architecture, 0.0) for c in cases]
    order = sorted(range(len(cases)), key=lambda i: -weights[i])
    scale = COVARIATE_SCALE.get(facts.covariate_strength or "none", 0.0)
    imbalanced = facts.imbalance is not None and facts.imbalance >= IMBALANCE_THRESHOLD

    advice = []
    for s in PUBLISHED_STRATEGIES:
        gains = [c.gains[s] for c in cases]
        pooled = sum(w * g for w, g in zip(pooled_w, gains)) / sum(pooled_w)
        mean = (sum(w * g for w, g in zip(weights, gains)) + SHRINKAGE * pooled) / (total + SHRINKAGE)
        spread2 = sum(w * (g - mean) ** 2 for w, g in zip(weights, gains)) / total if total > 0 else 0.0
        noise2 = sum(w * c.gain_se[s] ** 2 for w, c in zip(weights, cases)) / total if total > 0 else 0.0
        covariate = scale * COVARIATE_PRIOR[s]
        imbalance = IMBALANCE_PRIOR.get(s, 0.0) if imbalanced else 0.0
        expected = mean + covariate + imbalance
        uncertainty = math.sqrt(spread2 + noise2 + covariate ** 2 + imbalance ** 2)
        top_cases = [cases[i] for i in order[:3] if weights[i] > 0]
        reasons = []
        if s == "ft":
            reasons.append("the reference: every gain is relative to full fine-tuning with the same architecture")
        else:
            reasons.append("nearest published cases: " + "; ".join(
                f"{c.dataset} / {c.architecture} ({c.n_train:,} images, {c.domain}, weight "
                f"{weights[cases.index(c)] / total:.0%}): {c.gains[s]:+.1f} %" for c in top_cases))
        if facts.train_size is not None and s != "ft":
            size = _size_reason(s, facts.train_size, cases)
            if size:
                reasons.append(size)
        if facts.covariate_strength in ("mild", "strong"):
            auc = f", domain-classifier AUC {facts.covariate_auc:.2f}" if facts.covariate_auc is not None else ""
            effect = f"prior {covariate:+.1f} %" if covariate else "no prior"
            reasons.append(f"{facts.covariate_strength} covariate shift{auc}: {effect}, because {COVARIATE_WHY[s]}")
        if imbalance:
            reasons.append(f"class imbalance {facts.imbalance:.0f}:1: prior {imbalance:+.1f} % (§5: training only "
                           "the last layer may reduce overfitting to minority classes, as on ISIC 2020)")
        if s in evidence.effectiveness:
            reasons.append(f"beat ft in {evidence.effectiveness[s]:.1f} % of the paper's 24 experiments (Table 12)")
        for b in evidence.best_cells:
            if b.strategy == s:
                reasons.append(f"Table 11: the best cell on {b.dataset} ({b.n_train:,} images, {b.domain}) was "
                               f"{b.architecture} + {s}, {b.gain:+.1f} % over ft")
        advice.append(StrategyAdvice(
            strategy=s, expected_gain=expected, uncertainty=uncertainty, reasons=reasons,
            evidence=[{"dataset": c.dataset, "architecture": c.architecture, "n_train": c.n_train,
                       "domain": c.domain, "weight": weights[cases.index(c)] / total, "gain": c.gains[s],
                       "se": c.gain_se[s]} for c in top_cases],
        ))
    advice.sort(key=lambda a: (-a.expected_gain, a.uncertainty, PUBLISHED_STRATEGIES.index(a.strategy)))
    notes.extend(shift_notes(facts))
    notes.append("the published evidence has no shift measurements: shift enters only as the documented priors")
    return Recommendation(
        arch=arch, facts=facts, ranking=advice[:top] if top else advice,
        evidence_architectures={a: w for a, w in arch_w.items() if a in PUBLISHED_ARCHS},
        notes=notes, effective_cases=effective,
    )


def shift_notes(facts: ShiftFacts) -> list[str]:
    """What the measured shift asks for beyond a fine-tuning strategy (harmonize, re-weight, label target data)."""
    notes = []
    if facts.covariate_strength is None:
        notes.append("covariate shift not measured: no shift prior applied (run `shiftkit diagnose`)")
    elif facts.covariate_strength == "strong":
        notes.append("strong covariate shift: also consider harmonizing the inputs or adapting BatchNorm statistics "
                     "to the target before fine-tuning (see README, Harmonization)")
    if facts.label_tv is not None and facts.label_tv >= 0.10:
        notes.append(f"label shift (total variation {facts.label_tv:.2f}): no fine-tuning strategy addresses P(Y) in "
                     "the published evidence; re-weight the classes or correct the priors with the report's "
                     "label.weights")
    if facts.concept in ("mild", "strong"):
        notes.append(f"{facts.concept} concept shift: P(Y|X) differs, so the source labels mislead on the target; "
                     "fine-tune on labelled target images (no strategy effect is applied)")
    return notes
