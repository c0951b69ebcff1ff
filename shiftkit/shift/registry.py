"""The covariate-test registry: one entry per two-sample test, read by everything that runs or shows one.

``diagnose``, the audit's site matrix, harmonize's before/after measurement and the diagnose and audit reports take
from here which tests exist, which array each one reads, how to call it and how to label it; none of them names a
test. A new test is one :func:`register` call on its function, in any module that is imported before the run::

    @register("energy", label="energy distance (permutation)", short="energy", input="reduced")
    def energy_test(source, target, *, permutations=1000, seed=0) -> TestResult: ...

The test implements one thing, as alibi-detect's ``BaseUnivariateDrift.feature_score`` does: a statistic and its
p-value on two arrays, returned as a :class:`~shiftkit.shift.stats.TestResult`. The shared code owns the rest:
which array the test is given (:class:`TestInputs`), the seed and the permutation budget (:class:`TestSettings`),
the Bonferroni step over the tests in the verdict (:mod:`shiftkit.shift.profile`) and the multiple-comparison
correction over pairs of sites (:mod:`shiftkit.shift.corrections`).

The four built-in tests (mmd, domain_classifier, ot, bbsd) are registered in :mod:`shiftkit.shift.covariate`,
next to their functions.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shiftkit.errors import ConfigError
from shiftkit.shift.stats import TestResult

__all__ = [
    "COMMANDS",
    "INPUTS",
    "CovariateTest",
    "TestInputs",
    "TestSettings",
    "UnknownTestError",
    "check_names",
    "default_tests",
    "find",
    "get",
    "label",
    "names",
    "register",
    "run_test",
    "run_tests",
    "shown",
    "unregister",
]

# What a test reads. Each caller offers all three; a caller without a classifier offers the reduced embedding as
# "outputs" (BBSD on principal components, Rabanser et al. 2019).
INPUTS = {
    "reduced": "the first principal components of both domains' embeddings pooled (the embeddings with --pca 0)",
    "full": "the full embedding (the audit's --classifier-pca components when set)",
    "outputs": "a classifier's softmax outputs when there is one, else the reduced embedding",
}
# Commands that run a test when no test list is given (CovariateTest.defaults).
COMMANDS = ("diagnose", "audit", "harmonize")
# Names a test cannot take: other keys of the JSON objects that hold one entry per test.
RESERVED = frozenset({"metadata", "a", "b", "n_a", "n_b", "shifted", "pad", "concept"})


class UnknownTestError(ConfigError, ValueError):
    """A test name that is not registered (a ``ConfigError`` for the CLI, a ``ValueError`` for library callers)."""


@dataclass(frozen=True)
class CovariateTest:
    """One registered two-sample test.

    ``run(source, target, **keywords)`` returns a :class:`TestResult`; it receives those of ``seed``,
    ``permutations`` and ``device`` its signature names, plus the caller's per-test options. A runner with a
    ``permutations`` parameter is a permutation test: it gets the caller's budget, capped at ``permutation_cap``.
    """

    name: str  # the key in report.json, audit.json and harmonize.json
    run: Callable[..., TestResult]
    label: str  # its row in the diagnose report and summary
    short: str  # its name in the audit report (notes, column headers, heatmap panels)
    input: str = "reduced"  # one of INPUTS
    defaults: tuple[str, ...] = ()  # commands (COMMANDS) that run it when no test list is given
    permutation_cap: int | None = None  # at most this many permutations unless the caller sets the test's own
    summary: tuple[str, ...] = ()  # `details` keys copied into each pair of audit.json
    columns: tuple[tuple[str, str], ...] = ()  # audit pair table: (header, "statistic" | "p_value" | details key)
    heatmap: tuple[str, str] = ("statistic", "")  # audit heatmap: (the value, as in columns; its panel title)
    number_format: str = ".4g"  # how the audit summary prints the first column's value
    describe: Callable[[TestResult], str] | None = None  # the "details" cell of the diagnose report
    per_dimension: tuple[str, str] | None = None  # details keys (statistic, p-value) per dimension: a diagnose plot

    @property
    def permutes(self) -> bool:
        accepted = _parameters(self.run)
        return accepted is None or "permutations" in accepted

    def permutations(self, settings: "TestSettings") -> Any:
        """How many permutations this test runs under ``settings`` (None: not a permutation test)."""
        if not self.permutes:
            return None
        own = settings.options.get(self.name, {})
        if "permutations" in own:
            return own["permutations"]
        if self.permutation_cap is None:
            return settings.permutations
        return min(int(settings.permutations), self.permutation_cap)

    def details_text(self, result: TestResult) -> str:
        return self.describe(result) if self.describe is not None else ""


@dataclass(frozen=True)
class TestInputs:
    """The arrays one comparison offers, each a (source, target) pair; a test reads the one its ``input`` names.

    ``full`` and ``outputs`` default to ``reduced`` (no PCA; no classifier)."""

    __test__ = False  # not a pytest test class

    reduced: tuple[Any, Any]
    full: tuple[Any, Any] | None = None
    outputs: tuple[Any, Any] | None = None

    def pair(self, kind: str) -> tuple[Any, Any]:
        chosen = getattr(self, kind) if kind in INPUTS else None
        return chosen if chosen is not None else self.reduced


@dataclass(frozen=True)
class TestSettings:
    """What the shared code passes every test: one seed, one permutation budget, one device, and per test name
    its own keyword arguments (``{"ot": {"permutations": 200, "projections": 200}}``)."""

    __test__ = False

    seed: int = 0
    permutations: int = 1000
    device: Any = None
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


_REGISTRY: dict[str, CovariateTest] = {}
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


def _parameters(run: Callable[..., Any]) -> set[str] | None:
    """Keyword names ``run`` accepts (None: any, it takes ``**kwargs``)."""
    params = inspect.signature(run).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def _builtins() -> None:
    import shiftkit.shift.covariate  # noqa: F401  (registers mmd, domain_classifier, ot, bbsd)


def register(name: str, *, label: str, short: str | None = None, input: str = "reduced",
             defaults: Iterable[str] = (), permutation_cap: int | None = None, summary: Iterable[str] = (),
             columns: Iterable[tuple[str, str]] | None = None, heatmap: tuple[str, str] | None = None,
             number_format: str = ".4g", describe: Callable[[TestResult], str] | None = None,
             per_dimension: tuple[str, str] | None = None, run: Callable[..., TestResult] | None = None,
             replace: bool = False):
    """Register a covariate test; a decorator on its function (returned unchanged), or called with ``run=``
    (returns the :class:`CovariateTest`). ``defaults`` names the commands that run it unasked (none: it runs when
    named, e.g. ``diagnose --tests mmd,energy``). ``replace=True`` overwrites an entry of the same name."""

    def add(function: Callable[..., TestResult]) -> CovariateTest:
        _builtins()  # the built-in tests come first, whichever module registers first
        if not _NAME.match(name) or name in RESERVED:
            raise ConfigError(f"covariate test name '{name}': use lower-case letters, digits and _ (not "
                              f"{', '.join(sorted(RESERVED))})")
        if input not in INPUTS:
            raise ConfigError(f"covariate test '{name}': input '{input}' (choose from {', '.join(INPUTS)})")
        unknown = [c for c in defaults if c not in COMMANDS]
        if unknown:
            raise ConfigError(f"covariate test '{name}': default for '{unknown[0]}' (choose from {', '.join(COMMANDS)})")
        if name in _REGISTRY and not replace and _REGISTRY[name].run is not function:
            raise ConfigError(f"covariate test '{name}' is already registered (pass replace=True to overwrite it)")
        plain = short or name
        entry = CovariateTest(
            name=name, run=function, label=label, short=plain, input=input, defaults=tuple(defaults),
            permutation_cap=permutation_cap, summary=tuple(summary),
            columns=tuple(columns) if columns is not None else ((plain, "statistic"), ("p", "p_value")),
            heatmap=heatmap or ("statistic", plain), number_format=number_format, describe=describe,
            per_dimension=per_dimension,
        )
        _REGISTRY[name] = entry
        return entry

    if run is not None:
        return add(run)

    def decorator(function: Callable[..., TestResult]) -> Callable[..., TestResult]:
        add(function)
        return function

    return decorator


def unregister(name: str) -> None:
    """Remove a registered test (for tests that register a toy one)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered test, in registration order (the built-in ones first)."""
    _builtins()
    return tuple(_REGISTRY)


def default_tests(command: str) -> tuple[str, ...]:
    """The tests ``command`` (one of COMMANDS) runs when no test list is given."""
    return tuple(name for name in names() if command in _REGISTRY[name].defaults)


def find(name: str) -> CovariateTest | None:
    _builtins()
    return _REGISTRY.get(name)


def get(name: str, noun: str = "covariate test") -> CovariateTest:
    """The entry of ``name``, or an :class:`UnknownTestError` listing the registered names."""
    entry = find(name)
    if entry is None:
        raise UnknownTestError(f"unknown {noun} '{name}' (choose from {', '.join(names())})")
    return entry


def check_names(tests: Iterable[str], noun: str = "covariate test") -> tuple[str, ...]:
    """``tests`` without repeats, in order, after checking every name is registered."""
    ordered = tuple(dict.fromkeys(tests))
    for name in ordered:
        get(name, noun)
    return ordered


def _not_run(*args: Any, **kwargs: Any) -> TestResult:
    raise ConfigError("this covariate test is not registered")


def shown(name: str) -> CovariateTest:
    """How the reports show ``name``: its entry, or for a test no longer registered a plain stand-in (its name
    as label, its statistic and p-value as columns)."""
    entry = find(name)
    if entry is not None:
        return entry
    return CovariateTest(name=name, run=_not_run, label=name, short=name,
                         columns=((name, "statistic"), ("p", "p_value")), heatmap=("statistic", name))


def label(name: str) -> str:
    """The report label of ``name``; the name itself for a test that is no longer registered."""
    return shown(name).label


def _keywords(entry: CovariateTest, settings: TestSettings) -> dict[str, Any]:
    accepted = _parameters(entry.run)
    offered: dict[str, Any] = {"seed": settings.seed, "device": settings.device}
    if entry.permutes:
        offered["permutations"] = entry.permutations(settings)
    keywords = {k: v for k, v in offered.items() if accepted is None or k in accepted}
    own = dict(settings.options.get(entry.name, {}))
    bad = [k for k in own if accepted is not None and k not in accepted]
    if bad:
        raise ConfigError(f"covariate test '{entry.name}' has no option '{bad[0]}'")
    return keywords | own


def run_test(name: str, inputs: TestInputs, settings: TestSettings = TestSettings()) -> TestResult:
    """Run one registered test on the array its entry reads."""
    entry = get(name)
    source, target = inputs.pair(entry.input)
    return entry.run(source, target, **_keywords(entry, settings))


def run_tests(tests: Iterable[str], inputs: TestInputs, settings: TestSettings = TestSettings(), *,
              noun: str = "covariate test") -> dict[str, TestResult]:
    """Run the named tests (checked first, repeats dropped); {name: TestResult} in the order asked."""
    ordered = check_names(tests, noun)
    unknown = [k for k in settings.options if find(k) is None]
    if unknown:
        raise UnknownTestError(f"options for unknown {noun} '{unknown[0]}' (choose from {', '.join(names())})")
    return {name: run_test(name, inputs, settings) for name in ordered}
