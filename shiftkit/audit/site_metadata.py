"""Acquisition metadata per site: whitelisted image-header fields, and the manifest's extra columns.

Header fields come from :func:`shiftkit.data.metadata.read_metadata` (a fixed whitelist: size, bit depth, spacing,
slice thickness, manufacturer, model, modality; never patient identifiers), read on at most ``max_per_site``
images per site. Extra manifest columns (e.g. HAM10000's ``dx_type``, ``age``, ``sex``, ``localization``) are
compared across sites: a numeric column with a Kruskal-Wallis test, a categorical one with a chi-square test of
homogeneity. A column whose values are nearly all distinct (an identifier such as ``lesion_id``) is skipped and its
values never reach the report.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Sequence

import numpy as np
from scipy import stats as sps

from shiftkit.data.metadata import metadata_differences, read_metadata
from shiftkit.data.table import ImageTable, finite_number

ID_LIKE_FRACTION = 0.5  # a categorical column with more distinct values than this fraction of rows is an identifier
TOP_VALUES = 8


def header_metadata(table: ImageTable, sites: np.ndarray, names: Sequence[str], max_per_site: int = 200,
                    seed: int = 0) -> dict:
    """Per site a summary of each header field, and per pair the fields that differ."""
    rng = np.random.default_rng([seed, 23])
    rows_by_site: dict[str, list[dict]] = {}
    for s in names:
        idx = np.flatnonzero(sites == s)
        if len(idx) > max_per_site:
            idx = np.sort(rng.choice(idx, size=max_per_site, replace=False))
        rows = []
        for i in idx:
            record = table.records[i]
            meta = read_metadata(record.path)
            if record.spacing:
                meta["spacing_x"] = record.spacing[0]
                meta["spacing_y"] = record.spacing[1] if len(record.spacing) > 1 else record.spacing[0]
            rows.append(meta)
        rows_by_site[s] = rows
    per_site = {}
    for s, rows in rows_by_site.items():
        fields = sorted({k for row in rows for k in row})
        per_site[s] = {f: _summary([row[f] for row in rows if f in row]) for f in fields}
        per_site[s]["images_read"] = len(rows)
    pairs = []
    for a, b in itertools.combinations(names, 2):
        differing = [d["field"] for d in metadata_differences(rows_by_site[a], rows_by_site[b]) if d["differs"]]
        pairs.append({"a": a, "b": b, "differing_fields": differing})
    return {"sites": per_site, "pairs": pairs, "max_per_site": max_per_site}


def _summary(values: list) -> dict:
    numeric = [v for v in values if isinstance(v, (int, float))]
    if values and len(numeric) == len(values):
        array = np.asarray(numeric, dtype=float)
        return {"median": float(np.median(array)), "min": float(array.min()), "max": float(array.max())}
    return {"values": dict(Counter(str(v) for v in values).most_common(5))}


def column_metadata(columns: dict[str, list[str]], sites: np.ndarray, names: Sequence[str]) -> list[dict]:
    """One entry per extra column: kind, per-site summary, and a test of "same distribution at every site"."""
    out = []
    n = len(sites)
    for column, values in columns.items():
        raw = np.asarray([v.strip() for v in values], dtype=object)
        present = raw != ""
        numbers = [finite_number(v) for v in raw[present]]
        if present.sum() == 0:
            continue
        if all(v is not None for v in numbers):
            parsed = np.full(n, np.nan)
            parsed[present] = numbers
            groups = {s: parsed[(sites == s) & present] for s in names}
            per_site = {s: ({"n": int(len(g)), "median": float(np.median(g)), "mean": float(np.mean(g)),
                             "q1": float(np.percentile(g, 25)), "q3": float(np.percentile(g, 75))}
                            if len(g) else {"n": 0}) for s, g in groups.items()}
            usable = [g for g in groups.values() if len(g)]
            if len(usable) >= 2 and len({float(v) for g in usable for v in g}) > 1:
                result = sps.kruskal(*usable)
                statistic, p = float(result.statistic), float(result.pvalue)
            else:
                statistic, p = 0.0, 1.0
            out.append({"column": column, "kind": "numeric", "test": "Kruskal-Wallis", "statistic": statistic,
                        "p_value": p, "missing": int(n - present.sum()), "sites": per_site})
            continue
        distinct = set(raw[present].tolist())
        if len(distinct) > ID_LIKE_FRACTION * present.sum() and len(distinct) > TOP_VALUES:
            out.append({"column": column, "kind": "identifier", "skipped": "nearly every value is distinct"})
            continue
        categories = sorted(distinct)
        table = np.array([[int(np.sum((sites == s) & (raw == c))) for c in categories] for s in names], dtype=float)
        keep_rows = table.sum(axis=1) > 0
        if table.shape[1] >= 2 and keep_rows.sum() >= 2:
            result = sps.chi2_contingency(table[keep_rows], correction=False)
            statistic, p = float(result.statistic), float(result.pvalue)
        else:
            statistic, p = 0.0, 1.0
        per_site = {}
        for i, s in enumerate(names):
            total = table[i].sum()
            order = np.argsort(-table[i], kind="stable")[:TOP_VALUES]
            per_site[s] = {"n": int(total),
                           "share": {categories[j]: float(table[i, j] / total) for j in order if table[i, j] > 0}
                           if total else {}}
        out.append({"column": column, "kind": "categorical", "test": "chi-square homogeneity", "statistic": statistic,
                    "p_value": p, "missing": int(n - present.sum()), "sites": per_site})
    return out
