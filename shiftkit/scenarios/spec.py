"""What one scenario is (:class:`ScenarioSpec`): a JSON-able description from which :func:`shiftkit.scenarios.build`
writes its CSVs and images, and from which a runner knows how to fine-tune (which CSVs, which starting point).

The files of a scenario live under one build root, at the relative paths the spec names:

- ``sources/<source_key>/source.csv`` and ``source_val.csv``: the source domain (what a source checkpoint is trained
  on, and what the fingerprint compares the target with); scenarios with the same source data share them, and so
  share one source checkpoint (:attr:`ScenarioSpec.source_key`);
- ``variants/<variant_key>/val.csv``, ``test.csv`` and ``target_b<budget>.csv``: the target's validation and test
  images, and the labelled target images a run trains on (``budget`` of them, stratified); corrupted images under
  ``variants/<variant_key>/images/``. Scenarios that differ only in budget or starting point share a variant.

The keys end in a hash of every field that decides the files' content, so a changed scenario never reuses the
files of another.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from shiftkit.errors import ConfigError

DATASETS = ("pneumoniamnist", "breastmnist", "ham10000")
LEVELS = ("input", "acquisition", "label", "output", "none")
"""Where the shift is: input pixels (corruptions), acquisition (another site), label (prevalence only), output
(a changed labelling rule), none (a control: the target is the source's distribution)."""
STARTS = ("imagenet", "source")
"""The starting point of fine-tuning: ImageNet weights, or the checkpoint trained on the scenario's source
(``shiftkit finetune --init``)."""
BUDGETS = (50, 200)


def rule_name(mapping: dict) -> str:
    """``swap-a-b``, ``merge-a-b`` (into one label) or ``relabel-<hash>``: a relabelling rule in a file name."""
    keys = sorted(mapping)
    if len(keys) == 2 and mapping[keys[0]] == keys[1] and mapping[keys[1]] == keys[0]:
        return f"swap-{keys[0]}-{keys[1]}"
    if len(set(mapping.values())) == 1:
        return "merge-" + "-".join(keys)
    return f"relabel-{_digest(mapping)[:6]}"


def _digest(data: dict) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class ScenarioSpec:
    """One scenario. Build it with :meth:`create` (which fills the name and the paths); ``to_dict`` / ``from_dict``
    give its JSON form.

    Data fields: ``dataset``; ``site`` (HAM10000: the site of a within-site scenario, or the source site) and
    ``target_site`` (an acquisition pair); ``classes`` (the labels kept; None: all); ``corruption`` and
    ``severity`` (1 or 2) applied to the target's images; ``source_shares`` / ``target_shares`` (planted label
    shares of a prevalence scenario); ``relabel`` (the target's labelling rule: label -> new label); sizes:
    ``source_size`` (cap on source + source validation images), ``val_size``, ``pool_size`` (target images the
    budgets are drawn from), ``test_size`` (cap); ``seed`` (every draw and the noise)."""

    family: str
    name: str
    dataset: str
    level: str
    source: str
    source_val: str
    target: str
    val: str
    test: str
    corruption: str | None = None
    severity: int | None = None
    budget: int = 50
    start: str = "imagenet"
    seed: int = 0
    site: str | None = None
    target_site: str | None = None
    classes: tuple[str, ...] | None = None
    source_shares: dict | None = None
    target_shares: dict | None = None
    relabel: dict | None = None
    source_size: int | None = None
    val_size: int = 100
    pool_size: int = 200
    test_size: int | None = None

    def __hash__(self) -> int:  # the dict fields are not hashable; the name is unique in a catalogue
        return hash(self.name)

    # -- keys ------------------------------------------------------------------------------------------------
    def _source_fields(self) -> dict:
        design = {"input": "halves", "none": "halves", "output": "halves", "acquisition": "site",
                  "label": "shares"}[self.level]
        return {"dataset": self.dataset, "design": design, "site": self.site, "classes": self.classes,
                "source_shares": self.source_shares, "source_size": self.source_size, "seed": self.seed}

    @property
    def source_key(self) -> str:
        """Names the source data (and so the source checkpoint): equal for scenarios whose source files are equal."""
        site = f"-{self.site}" if self.site else ""
        return f"{self.dataset}{site}-{_digest(self._source_fields())}"

    @property
    def variant_key(self) -> str:
        """Names the target data but the budget: equal for scenarios that differ only in budget or starting point."""
        from shiftkit.scenarios.corruptions import corruption

        data = {k: v for k, v in self.to_dict().items()
                if k not in ("family", "name", "budget", "start", "source", "source_val", "target", "val", "test")}
        if self.corruption:  # the parameter itself: a changed severity table never reuses old images
            data["parameter"] = repr(corruption(self.corruption).parameter(self.severity))
        return f"{self.variant_name()}-{_digest(data)}"

    def variant_name(self) -> str:
        """A readable name of the target data (the scenario's name without budget and starting point)."""
        parts = [self.dataset]
        if self.site:
            parts.append(self.site)
        if self.target_site:
            parts += ["to", self.target_site]
        if self.classes:
            parts.append("_".join(self.classes))
        if self.corruption:
            parts += [self.corruption, f"s{self.severity}"]
        if self.target_shares:
            parts.append("prev-" + "_".join(f"{k}-{v:g}" for k, v in sorted(self.target_shares.items())))
        if self.relabel:
            parts.append(rule_name(self.relabel))
        if self.level == "none":
            parts.append("control")
        return "-".join(parts)

    # -- construction and JSON ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, family: str, dataset: str, level: str, **options) -> ScenarioSpec:
        """A spec with its ``name`` and paths derived from the other fields (the way every spec is made)."""
        probe = cls(family=family, name="", dataset=dataset, level=level, source="", source_val="", target="",
                    val="", test="", **options)
        probe.validate()
        source, variant = f"sources/{probe.source_key}", f"variants/{probe.variant_key}"
        return cls(**{**probe.to_fields(),
                      "name": f"{probe.variant_name()}-b{probe.budget}-{probe.start}",
                      "source": f"{source}/source.csv", "source_val": f"{source}/source_val.csv",
                      "target": f"{variant}/target_b{probe.budget}.csv", "val": f"{variant}/val.csv",
                      "test": f"{variant}/test.csv"})

    def validate(self) -> None:
        """One ConfigError line for a field out of its range."""
        if self.dataset not in DATASETS:
            raise ConfigError(f"scenario dataset '{self.dataset}': choose from {', '.join(DATASETS)}")
        if self.level not in LEVELS:
            raise ConfigError(f"scenario level '{self.level}': choose from {', '.join(LEVELS)}")
        if self.start not in STARTS:
            raise ConfigError(f"scenario start '{self.start}': choose from {', '.join(STARTS)}")
        if (self.corruption is None) != (self.severity is None) or (self.corruption is None) == (self.level == "input"):
            raise ConfigError("an input-level scenario names a corruption and a severity; no other scenario does")
        if (self.level == "label") != (self.target_shares is not None and self.source_shares is not None):
            raise ConfigError("a prevalence (label-level) scenario gives source_shares and target_shares; no other does")
        if (self.level == "output") != (self.relabel is not None):
            raise ConfigError("an output-level (concept) scenario gives a relabel rule; no other does")
        if (self.level == "acquisition") != (self.target_site is not None):
            raise ConfigError("an acquisition scenario names a target_site; no other does")
        if self.dataset == "ham10000" and not self.site:
            raise ConfigError("a HAM10000 scenario names its (source) site")
        if self.budget < 1 or self.budget > self.pool_size or self.val_size < 1:
            raise ConfigError(f"scenario budget {self.budget} must be from 1 to pool_size {self.pool_size}, "
                              f"val_size at least 1")

    def to_fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict:
        """JSON-able: tuples become lists."""
        data = asdict(self)
        if data["classes"] is not None:
            data["classes"] = list(data["classes"])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ScenarioSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"scenario spec: unknown fields {unknown}")
        values = dict(data)
        if values.get("classes") is not None:
            values["classes"] = tuple(values["classes"])
        return cls(**values)
