"""The measured strategy evidence: per scenario, the shift fingerprint and every strategy's target-test outcome.

A second source of evidence, separate from the paper's published tables (:mod:`shiftkit.recommend.evidence`): the
scenarios of :func:`shiftkit.scenarios.evidence_slice`, each diagnosed (``shiftkit diagnose --fingerprint``) and
fine-tuned with every strategy (``shiftkit compare``) by ``benchmarks/strategy_evidence.py``. The file is JSON lines,
one scenario a line (``data/scenario_evidence.jsonl``, unmeasured features as null); ``data/scenario_evidence.md``
names the command and the protocol, ``data/scenario_evidence.meta.json`` the machine.

:func:`shift_features` turns a ``diagnose`` report into the few numbers the recommender compares scenarios by; the
same function reads the user's report at recommendation time, so evidence and query are measured alike.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from shiftkit.errors import ConfigError, DataError
from shiftkit.io import write_text
from shiftkit.recommend.evidence import PUBLISHED_STRATEGIES

EVIDENCE_FILE = Path(__file__).parent / "data" / "scenario_evidence.jsonl"
STRATEGIES = PUBLISHED_STRATEGIES  # the eight strategies, in the paper's order (ties are broken by it)
LEVEL_VALUE = {"none": 0.0, "mild": 0.5, "strong": 1.0}
DOMAIN_OF_DATASET = {"pneumoniamnist": "X-ray", "breastmnist": "Ultrasound", "ham10000": "Dermoscopy"}

FEATURES: dict[str, str] = {
    "shift_auc": "domain-classifier AUC between source and target embeddings (0.5: no covariate shift)",
    "early_shift": "MMD² at the first block relative to the largest block's (1: the shift peaks at the input)",
    "peak_depth": "depth of the block where the shift peaks, 0 (first block) to 1 (last block)",
    "imagenet_kl": "the target's mean BatchNorm KL from the pre-training statistics (how far from ImageNet-like)",
    "probe_auroc": "cross-validated linear-probe AUROC of the source features (how good the frozen features are)",
    "label_shift": "total variation between the source and target class shares",
    "concept": "concept-shift verdict, 0 none, 0.5 mild, 1 strong",
    "log2_budget": "log2 of the labelled target images fine-tuned on",
    "n_classes": "number of classes",
    "from_source": "1 when fine-tuning starts from the source model (finetune --init), 0 from ImageNet",
}
"""The recommender's inputs, one place: name -> what it measures."""


LABELS = {"shift_auc": "domain AUC", "early_shift": "first-block share of the shift",
          "peak_depth": "shift peak depth (0 first block, 1 last)", "imagenet_kl": "BatchNorm KL from ImageNet",
          "probe_auroc": "linear-probe AUROC", "label_shift": "label shift (total variation)",
          "concept": "concept shift", "log2_budget": "labelled images", "n_classes": "classes",
          "from_source": "start"}


def value_text(feature: str, value: float) -> str:
    """A feature's value as a person reads it: ``source model``, ``50``, ``mild``, ``0.93``."""
    if not math.isfinite(value):
        return "not measured"
    if feature == "from_source":
        return "source model" if value >= 0.5 else "ImageNet"
    if feature == "log2_budget":
        return f"{2 ** value:.0f}"
    if feature == "n_classes":
        return f"{value:.0f}"
    if feature == "concept":
        return {0.0: "none", 0.5: "mild", 1.0: "strong"}.get(value, f"{value:.2f}")
    return f"{value:.2f}"


@dataclass(frozen=True)
class Outcome:
    """One strategy's target-test metric (percent) over seeds at the learning rate chosen on validation."""

    mean: float
    se: float
    n: int
    lr: float | None = None


@dataclass(frozen=True)
class Scenario:
    """One row of the evidence."""

    name: str
    family: str
    variant: str  # names the target data: scenarios sharing it share images (the leak check's key)
    dataset: str
    start: str
    budget: int
    metric: str
    features: dict[str, float] = field(hash=False)
    outcomes: dict[str, Outcome] = field(hash=False)
    summary: str = ""  # the fingerprint's one line, for reasons
    facts: dict | None = field(default=None, hash=False)  # ShiftFacts of the scenario (the prior recommender's input)

    @property
    def best_mean(self) -> float:
        return max(o.mean for o in self.outcomes.values())

    def winners(self) -> tuple[str, ...]:
        """The strategies tied with the best: within one standard error of the difference (se's combined)."""
        best = max(self.outcomes, key=lambda s: self.outcomes[s].mean)
        top = self.outcomes[best]
        return tuple(s for s in STRATEGIES if s in self.outcomes
                     and top.mean - self.outcomes[s].mean <= math.hypot(top.se, self.outcomes[s].se))

    def regret(self, strategy: str) -> float:
        """Metric points lost against the best strategy of this scenario."""
        return self.best_mean - self.outcomes[strategy].mean

    def gain(self, strategy: str) -> float:
        """Relative gain over ``ft`` in percent (as the paper reports)."""
        return 100.0 * (self.outcomes[strategy].mean - self.outcomes["ft"].mean) / self.outcomes["ft"].mean

    def to_dict(self) -> dict:
        return {"name": self.name, "family": self.family, "variant": self.variant, "dataset": self.dataset,
                "start": self.start, "budget": self.budget, "metric": self.metric,
                "features": {k: v if math.isfinite(v) else None for k, v in self.features.items()},
                "summary": self.summary, "facts": self.facts,
                "outcomes": {s: {"mean": o.mean, "se": o.se, "n": o.n, "lr": o.lr} for s, o in self.outcomes.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> Scenario:
        try:
            outcomes = {s: Outcome(float(o["mean"]), float(o["se"]), int(o["n"]), o.get("lr"))
                        for s, o in data["outcomes"].items()}
            return cls(name=str(data["name"]), family=str(data["family"]), variant=str(data["variant"]),
                       dataset=str(data["dataset"]), start=str(data["start"]), budget=int(data["budget"]),
                       metric=str(data["metric"]), summary=str(data.get("summary", "")), facts=data.get("facts"),
                       features={k: math.nan if v is None else float(v) for k, v in data["features"].items()},
                       outcomes=outcomes)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"scenario evidence row {data.get('name', '?')!r}: {exc!r}") from None


def _total_variation(a: dict, b: dict) -> float:
    keys = set(a) | set(b)
    sa, sb = sum(a.values()) or 1, sum(b.values()) or 1
    return 0.5 * sum(abs(a.get(k, 0) / sa - b.get(k, 0) / sb) for k in keys)


def shift_features(report: dict, budget: int, start: str) -> dict[str, float]:
    """The :data:`FEATURES` of one ``diagnose`` report (``--fingerprint`` for the block features; without it they
    are NaN, which the recommender treats as unknown), the labelled target budget and the starting point."""
    nan = float("nan")
    dataset = report.get("dataset") or {}
    fingerprint = report.get("fingerprint") or {}
    classifier = (report.get("covariate") or {}).get("domain_classifier") or {}
    peak = fingerprint.get("peak") or {}
    profile = peak.get("profile") or []
    of = peak.get("of") or len(profile)
    target_kl = [b["kl"] for b in (fingerprint.get("pretraining") or {}).get("target", []) if "kl" in b]
    probe = ((fingerprint.get("source_features") or {}).get("linear_probe") or {}).get("auroc_macro") or {}
    if dataset.get("target_labelled") and dataset.get("target_counts"):
        label_shift = _total_variation(dataset["source_counts"], dataset["target_counts"])
    else:
        label = report.get("label") or {}
        prior, source = label.get("target_prior"), label.get("source_prior")
        label_shift = _total_variation(source, prior) if prior and source else nan
    concept = ((report.get("verdict") or {}).get("concept") or {}).get("level")
    return {
        "shift_auc": float(classifier.get("statistic", nan)),
        "early_shift": float(profile[0]["scaled"]) if profile else nan,
        "peak_depth": peak["index"] / (of - 1) if peak.get("shifted") and of and of > 1 else nan,
        "imagenet_kl": sum(target_kl) / len(target_kl) if target_kl else nan,
        "probe_auroc": float(probe.get("value", nan)),
        "label_shift": float(label_shift),
        "concept": LEVEL_VALUE.get(concept, nan),
        **fact_features(budget, len(dataset.get("classes") or []), start),
    }


def fact_features(budget: int, n_classes: int, start: str) -> dict[str, float]:
    """The features known before any image is diagnosed: labelled target images, classes, starting point."""
    if budget < 1:
        raise ConfigError(f"labelled target images (--train-size) must be at least 1, got {budget}")
    return {"log2_budget": math.log2(budget), "n_classes": float(n_classes) if n_classes else math.nan,
            "from_source": 1.0 if start == "source" else 0.0}


def grid_finished(folder: Path) -> bool:
    """Whether ``compare`` wrote FOLDER's tables with every planned run recorded (a ``--report-only`` merge of
    unfinished shards writes them too, with the missing runs listed)."""
    try:
        return not json.loads((folder / "compare.json").read_text())["missing"]
    except (OSError, ValueError, KeyError):
        return False


def fingerprint_current(folder: Path) -> bool:
    """Whether FOLDER's ``diagnose`` report was measured by the protocol's revision of the fingerprint
    (``EVIDENCE_PROTOCOL["fingerprint_revision"]``; a folder without a revision mark predates revisions: 1)."""
    from shiftkit.scenarios import EVIDENCE_PROTOCOL

    try:
        revision = (folder / "revision").read_text().strip()
    except OSError:
        revision = "1"
    return (folder / "report.json").exists() and revision == str(EVIDENCE_PROTOCOL["fingerprint_revision"])


def mark_fingerprint_current(folder: Path) -> None:
    """Record that FOLDER's report was measured by the protocol's revision (after diagnose wrote it)."""
    from shiftkit.scenarios import EVIDENCE_PROTOCOL

    (folder / "revision").write_text(str(EVIDENCE_PROTOCOL["fingerprint_revision"]))


def _grid_protocol(protocol: dict) -> dict:
    """The protocol's keys that decide a grid's outcomes (the fingerprint's revision does not)."""
    return {k: str(v) for k, v in protocol.items() if k != "fingerprint_revision"}


def row_current(row: dict | None) -> bool:
    """Whether an evidence row's fingerprint was measured by the protocol's revision of ``diagnose`` (rows without
    a revision predate revisions: 1)."""
    from shiftkit.scenarios import EVIDENCE_PROTOCOL

    return bool(row) and int(row.get("fingerprint_revision", 1)) == EVIDENCE_PROTOCOL["fingerprint_revision"]


def earlier_rows(path: Path) -> dict[str, dict]:
    """The rows of an evidence file whose grids ran under the current protocol, by scenario name (none when the file
    is missing or its protocol differs). The file is the run's checkpoint across machines and sessions: a row's
    outcomes (the expensive part) are reused, its fingerprint is measured again when an older revision made it."""
    from shiftkit.scenarios import EVIDENCE_PROTOCOL

    try:
        protocol = json.loads(path.with_suffix(".meta.json").read_text())["protocol"]
        lines = path.read_text().splitlines()
    except (OSError, ValueError, KeyError):
        return {}
    if _grid_protocol(protocol) != _grid_protocol(EVIDENCE_PROTOCOL):
        return {}
    rows = (json.loads(line) for line in lines if line.strip())
    return {row["name"]: row for row in rows}


def collect_row(spec, out: Path, earlier: dict | None = None) -> dict | None:
    """The evidence row of one scenario under the runner's OUT: its grid's outcomes (or, while OUT has no finished
    grid, those of the EARLIER row of the same scenario) with OUT's fingerprint; EARLIER itself when OUT has no
    current fingerprint but it has one; None while neither is there."""
    from shiftkit.scenarios import EVIDENCE_PROTOCOL

    revision = EVIDENCE_PROTOCOL["fingerprint_revision"]
    compare_json = out / "compare" / spec.name / "compare.json"
    report_json = out / "fingerprints" / f"{spec.variant_key}-{spec.start}" / "report.json"
    if not fingerprint_current(report_json.parent):
        return earlier if row_current(earlier) else None
    if grid_finished(compare_json.parent):
        table = json.loads(compare_json.read_text())["table"]
        metric, arch = table["main_metric"], table["archs"][0]
        outcomes = {}
        for strategy, row in table["rows"].items():
            cell = row.get(arch, {}).get(metric)
            if cell and cell["mean"] is not None:
                outcomes[strategy] = {"mean": 100.0 * cell["mean"], "se": 100.0 * (cell["se"] or 0.0),
                                      "n": cell["n"], "lr": cell["lr"]}  # percent: regrets are metric points
    elif earlier:
        metric, outcomes = earlier["metric"], earlier["outcomes"]
    else:
        return None
    if set(outcomes) != set(STRATEGIES):
        return None
    report = json.loads(report_json.read_text())
    from shiftkit.recommend.recommender import ShiftFacts

    facts = replace(ShiftFacts.from_report(report), train_size=spec.budget,
                    domain=DOMAIN_OF_DATASET.get(spec.dataset)).to_dict()
    features = shift_features(report, spec.budget, spec.start)
    return {"name": spec.name, "family": spec.family, "variant": spec.variant_key, "dataset": spec.dataset,
            "start": spec.start, "budget": spec.budget, "metric": metric, "facts": facts,
            "features": {k: v if math.isfinite(v) else None for k, v in features.items()},
            "summary": (report.get("fingerprint") or {}).get("summary", ""), "outcomes": outcomes,
            "fingerprint_revision": revision}


def write_evidence(path: Path, rows: list[dict], protocol: dict, machine: dict) -> None:
    """The JSON-lines evidence (atomically), and ``<name>.meta.json`` with the protocol and the machine."""
    write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    write_text(path.with_suffix(".meta.json"),
               json.dumps({"protocol": protocol, "machine": machine, "scenarios": len(rows)}, indent=2) + "\n")


def load_scenarios(path: Path = EVIDENCE_FILE) -> list[Scenario]:
    """Every row of the evidence file; a clear error when it is missing or malformed."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the scenario evidence ({exc.strerror or exc}); "
                        "regenerate it with benchmarks/strategy_evidence.py") from None
    scenarios = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            scenarios.append(Scenario.from_dict(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: not JSON ({exc.msg})") from None
    return scenarios
