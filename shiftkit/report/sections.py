"""Report sections: one entry per part of the diagnose report, each owning its JSON, HTML and terminal output.

The diagnose report (:mod:`shiftkit.report.diagnose`) is the registered sections, in order. A new analysis that
belongs in the report is one :func:`register` call in one module; the report gains its ``report.json`` key, its
HTML section (with plots) and its terminal table without any other file changing::

    @register("brightness", title="Mean brightness", measure=lambda ctx: {...},
              html=lambda page, content, ctx: page.table([...], [...]))

``measure`` runs once per report on a :class:`SectionContext` (the measured profile and the embedded images) and
returns what goes under the section's key in report.json (JSON-able; ``None``: the section is left out of this
report). ``html`` and ``terminal`` render that content. Sections whose content is already part of the profile's
own JSON (covariate, label, concept) register without ``measure``: they add no key.

A section defined outside :data:`BUILTIN_MODULES` is registered when its module is imported, before the report is
written (a plug-in module, a test).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BUILTIN_MODULES = ("shiftkit.report.diagnose", "shiftkit.report.fingerprint", "shiftkit.report.estimate_section",
                   "shiftkit.report.harmonizer_trial")


@dataclass
class SectionContext:
    """What every section may read: the measured ``profile`` (:class:`~shiftkit.shift.profile.ShiftProfile`),
    the embedded images ``data`` (:class:`~shiftkit.shift.diagnose.Embedded`), the ``report`` dict built so far
    (each earlier section's content is already in it) and the PNG ``figures`` drawn so far (name -> bytes; a
    section adds its own, saved as ``plots/<name>.png``); ``inline`` PNGs are embedded in report.html and never
    written as files of their own (thumbnails of patient images)."""

    profile: Any
    data: Any
    report: dict
    figures: dict[str, bytes] = field(default_factory=dict)
    inline: dict[str, bytes] = field(default_factory=dict)  # PNGs shown in report.html only (e.g. image thumbnails)


@dataclass(frozen=True)
class Section:
    name: str  # its key in report.json (when it has ``measure``) and its identity here
    title: str  # its HTML heading
    html: Callable[[Any, Any, SectionContext], None]  # (page, content, ctx): render into the HTML page
    measure: Callable[[SectionContext], Any] | None = None  # content for report.json; None: the profile holds it
    terminal: Callable[[Any, Any], None] | None = None  # (console, content): the rich summary, if any
    heading: bool = True  # the report writes the title as a heading before ``html`` (False: html does its own)


_SECTIONS: dict[str, Section] = {}
_BEFORE: dict[str, str] = {}  # name -> the section it is shown before


def register(name: str, *, title: str, html: Callable, measure: Callable | None = None,
             terminal: Callable | None = None, heading: bool = True, before: str | None = None) -> Section:
    """Add a section: after the existing ones, or just ``before`` a named one (which may be registered later).
    Re-registering a name replaces its entry in place (a reloaded module); the report's own JSON keys cannot be
    taken."""
    if measure is not None and name in PROFILE_KEYS:
        raise ValueError(f"report section '{name}' would overwrite report.json's own key '{name}'")
    section = Section(name, title, html, measure, terminal, heading)
    _SECTIONS[name] = section
    if before is not None:
        _BEFORE[name] = before
    return section


def unregister(name: str) -> None:
    """Remove a section (tests that register a toy one clean up with this)."""
    _SECTIONS.pop(name, None)
    _BEFORE.pop(name, None)


def sections() -> list[Section]:
    """The registered sections in report order (the built-in ones are imported first): registration order, each
    section with a ``before`` moved just ahead of that section (left in place when it is not registered)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    order = [n for n in _SECTIONS if n not in _BEFORE]
    for name, target in _BEFORE.items():
        if name in _SECTIONS:
            order.insert(order.index(target) if target in order else len(order), name)
    return [_SECTIONS[n] for n in order]


# keys that ShiftProfile.to_dict and the report writer put in report.json themselves
PROFILE_KEYS = frozenset({"covariate", "label", "concept", "dataset", "verdict", "settings", "skipped_images",
                          "recommendation"})
