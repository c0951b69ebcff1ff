"""Seeded, stratified draws of image rows: the splits, label budgets, planted class shares and relabelling rules
of a scenario. Pure functions of their inputs and seed (rows are sorted by path before any draw), so the same
scenario gives the same files on every machine.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

import numpy as np

from shiftkit.errors import DataError


@dataclass(frozen=True)
class Row:
    """One image of a scenario: where it is, its label, and (HAM10000) its site."""

    path: str
    label: str
    site: str | None = None


def stable_rng(seed: int, *stage: str) -> np.random.Generator:
    """A generator for one named stage of one seed (``stable_rng(0, "halves")``): stages draw independently, so adding
    a stage does not change another's draws; the stage names are hashed with SHA-256, not Python's salted ``hash``."""
    digest = hashlib.sha256("|".join(stage).encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def by_label(rows: Iterable[Row]) -> dict[str, list[Row]]:
    """Rows per label, labels sorted, each list sorted by path (the order every draw starts from)."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.label, []).append(row)
    return {label: sorted(groups[label], key=lambda r: r.path) for label in sorted(groups)}


def counts(rows: Iterable[Row]) -> dict[str, int]:
    """Images per label, labels sorted."""
    return dict(sorted(Counter(row.label for row in rows).items()))


def largest_remainder(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Integers proportional to ``weights`` that sum to ``total`` (Hamilton's method: floors, then the largest
    remainders get one more; ties go to the label first in sorted order)."""
    labels = sorted(weights)
    mass = sum(weights[k] for k in labels)
    if total < 0 or mass <= 0:
        raise ValueError("largest_remainder needs total >= 0 and positive weights")
    exact = {k: total * weights[k] / mass for k in labels}
    result = {k: math.floor(exact[k]) for k in labels}
    for k in sorted(labels, key=lambda k: (-(exact[k] - result[k]), labels.index(k)))[:total - sum(result.values())]:
        result[k] += 1
    return result


def allocate(available: Mapping[str, int], total: int) -> dict[str, int]:
    """A stratified allocation of ``total`` images over labels with ``available`` images each: proportional (largest
    remainder), every label with images given at least one when ``total`` allows, never more than available."""
    present = {k: v for k, v in available.items() if v > 0}
    if total > sum(present.values()):
        raise DataError(f"cannot draw {total} images from {sum(present.values())} ({dict(available)})")
    share = largest_remainder(present, total)
    if total >= len(present):
        for label in [k for k in sorted(present) if share[k] == 0]:  # a rare class keeps one image
            donor = max(sorted(share), key=lambda k: share[k])
            share[donor] -= 1
            share[label] += 1
    return {k: share.get(k, 0) for k in sorted(available)}


def _draw(groups: Mapping[str, list[Row]], sizes: Mapping[str, int], rng: np.random.Generator,
          what: str) -> tuple[list[Row], list[Row]]:
    taken, rest = [], []
    for label in sorted(groups):
        rows = groups[label]
        want = sizes.get(label, 0)
        if want > len(rows):
            raise DataError(f"{what}: needs {want} images labelled '{label}', {len(rows)} are available")
        order = rng.permutation(len(rows))
        taken += [rows[i] for i in order[:want]]
        rest += [rows[i] for i in order[want:]]
    return sorted(taken, key=lambda r: r.path), sorted(rest, key=lambda r: r.path)


def stratified_take(rows: Sequence[Row], total: int, seed: int, stage: str) -> tuple[list[Row], list[Row]]:
    """``total`` rows drawn per label in proportion to the labels' counts (:func:`allocate`), and the rest."""
    groups = by_label(rows)
    sizes = allocate({k: len(v) for k, v in groups.items()}, total)
    return _draw(groups, sizes, stable_rng(seed, stage), stage)


def stratified_fraction(rows: Sequence[Row], fraction: float, seed: int, stage: str) -> tuple[list[Row], list[Row]]:
    """The stratified ``fraction`` of ``rows`` (rounded), and the rest."""
    return stratified_take(rows, int(round(fraction * len(rows))), seed, stage)


def take_shares(rows: Sequence[Row], shares: Mapping[str, float], total: int, seed: int,
                stage: str) -> tuple[list[Row], list[Row]]:
    """``total`` rows with the planted label ``shares`` (exact up to rounding, by largest remainder; labels absent
    from ``shares`` are left out), and the rest; a label with too few images is a :class:`DataError`."""
    groups = by_label(rows)
    unknown = sorted(set(shares) - set(groups))
    if unknown:
        raise DataError(f"{stage}: no images labelled {unknown} (labels: {sorted(groups)})")
    sizes = largest_remainder({k: float(v) for k, v in shares.items() if v > 0}, total)
    return _draw(groups, sizes, stable_rng(seed, stage), stage)


def relabel(rows: Iterable[Row], mapping: Mapping[str, str]) -> list[Row]:
    """A changed labelling rule: each row whose label is a key of ``mapping`` gets the mapped label (a swap maps
    a to b and b to a; a merge maps both to one name); every other row is unchanged."""
    return [replace(row, label=mapping[row.label]) if row.label in mapping else row for row in rows]
