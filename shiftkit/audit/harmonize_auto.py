"""``audit --harmonize auto`` (or ``--harmonize a,b,c``): each site's harmonizer chosen by measurement, as
``harmonize --method auto`` chooses it (:func:`shiftkit.harmonize.selection.select_harmonizer`), then applied.

Why per site: one method for every site assumes every site needs the same fix, and the issue that asked for this
(16) measured that a method which helps one HAM10000 site pair makes another worse. So each site gets its own
choice against its own reference:

- the reference is ``--reference-site``'s images when given (that site is left unchanged), else **all other sites
  pooled**: never the site itself, so a site is never scored against its own images;
- the choice runs on a cheap subset (:data:`SELECT_MAX_IMAGES` per part of the held-out split, at most
  :data:`SELECT_PERMUTATIONS` permutations) with the audit's own embedding (arch, weights, image size, device,
  cache);
- the chosen method is then fitted on the **whole** reference (its original images, as read by the audit) and
  applies to every image of the site, written under ``<out>/<site>/``;
- a site whose held-out shift to the reference is not measurable (the domain AUC's 95 % interval reaches chance) is
  never harmonized (the selection's rule);
- a site for which no candidate reduced the held-out shift, whose shift is not measurable, or whose choice could not
  run (too few images) is left unchanged: its images are **referenced in place**, not copied, so they are byte-for-byte the inputs; the combined
  ``<out>/manifest.csv`` lists them by absolute path next to the harmonized ones.

In pooled mode every site is scored against the others' *original* images, one site at a time; two sites that each
move toward the rest are not re-scored against each other's harmonized images. The pool is a mixture: with one
outlier site in it, a site that matches the others can still differ measurably from the pool and be moved toward
the outlier (with enough images). ``--reference-site`` (a site you trust) avoids that; the recomputed matrix (by the
caller, on every image) shows what the harmonized sites and the unchanged ones look like together.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from shiftkit.audit.manifest import AuditTable
from shiftkit.data.table import LABEL_SEPARATOR, ImageTable
from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.measure import MeasureSettings
from shiftkit.hooks import StageHook

SELECT_MAX_IMAGES = 100  # per part (fit, held out) of each side when choosing a site's harmonizer
SELECT_PERMUTATIONS = 200  # MMD permutations when choosing (the audit's own --permutations when lower)
POOLED = "all other sites pooled (each site toward the others, never itself)"
CANDIDATE_KEYS = ("name", "rank", "auc_after", "auc_after_ci", "mmd_after", "reduces", "content_correlation",
                  "disqualified", "error")  # the per-candidate columns kept in audit.json


def check_spec(spec: str) -> None:
    """Refuse an unknown candidate in ``--harmonize a,b,c`` before any image is read (one line, the names)."""
    from shiftkit.harmonize.selection import resolve_candidates

    try:
        resolve_candidates(spec)
    except ConfigError as exc:
        message = str(exc).replace(" in --method", "").replace("--method", "--harmonize")
        raise ConfigError(f"--harmonize '{spec}': {message}") from None


def _folder_names(sites: tuple[str, ...]) -> dict[str, str]:
    """A distinct, file-system-safe folder name per site (site names are user text)."""
    names: dict[str, str] = {}
    for site in sites:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", site).strip("._") or "site"
        name, k = base, 2
        while name in names.values():
            name, k = f"{base}_{k}", k + 1
        names[site] = name
    return names


def _prefixed(on_stage: StageHook | None, site: str) -> StageHook | None:
    if on_stage is None:
        return None
    return lambda description, total: on_stage(f"{site}: {description}", total)


def site_summary(selection: Any, reference: str, n_images: int) -> dict[str, Any]:
    """What audit.json keeps of one site's :class:`~shiftkit.harmonize.selection.Selection`: the harmonizer applied
    (``chosen``), the verdict, the held-out shift before and after the applied method (null when none), and the
    candidates trimmed to :data:`CANDIDATE_KEYS`. A site whose held-out shift is not measurable is never harmonized
    (:func:`shiftkit.harmonize.selection.reduces_shift` requires the before AUC's interval above chance)."""
    full = selection.to_dict()
    before = full["before"]
    chosen = next((c for c in full["candidates"] if c["name"] == full["chosen"]), None)
    verdict = full["verdict"]
    return {
        "role": "harmonized" if chosen else "unchanged", "reference": reference, "n_images": n_images,
        "chosen": chosen["name"] if chosen else None, "verdict": verdict,
        "auc_before": before["auc"], "auc_before_ci": before["auc_ci"],
        "auc_after": chosen["auc_after"] if chosen else None,
        "auc_after_ci": chosen["auc_after_ci"] if chosen else None,
        "mmd_before": before["mmd"], "mmd_before_p": before["mmd_p"],
        "mmd_after": chosen["mmd_after"] if chosen else None,
        "mmd_after_p": chosen["mmd_after_p"] if chosen else None,
        "params": chosen["params"] if chosen else None,
        "candidates": [{k: c[k] for k in CANDIDATE_KEYS} for c in full["candidates"]],
        "skipped": full["skipped"], "split": full["split"], "seconds": full["measure"]["seconds"],
    }


def _not_measured(role: str, reference: str, n_images: int, verdict: str) -> dict[str, Any]:
    return {"role": role, "reference": reference, "n_images": n_images, "chosen": None,
            "verdict": verdict,
            "auc_before": None, "auc_before_ci": None, "auc_after": None, "auc_after_ci": None,
            "mmd_before": None, "mmd_before_p": None, "mmd_after": None, "mmd_after_p": None, "params": None,
            "candidates": [], "skipped": [], "split": None, "seconds": 0.0}


def harmonize_sites(data: AuditTable, spec: str, settings: MeasureSettings, out_dir: Path,
                    reference_site: str | None = None, holdout: float = 0.5,
                    on_stage: StageHook | None = None) -> tuple[ImageTable, dict[str, dict], dict[str, Any]]:
    """Choose and apply a harmonizer per site (the module docstring has the rules).

    Returns the table to embed again (rows in ``data``'s order: the harmonized image for a site with a chosen
    method, the original record otherwise), ``{site: summary}`` (:func:`site_summary`) and the settings of the
    choice. Writes ``out_dir/<site>/...`` for each harmonized site and ``out_dir/manifest.csv`` for all rows."""
    from shiftkit.harmonize.apply import harmonize_table
    from shiftkit.harmonize.outputs import format_spacing, write_manifest
    from shiftkit.harmonize.selection import MIN_CONTENT_CORRELATION, RULE, select_harmonizer

    out_dir = Path(out_dir)
    records = list(data.table.records)
    folders = _folder_names(data.site_names)
    summaries: dict[str, dict] = {}
    for site in data.site_names:
        rows = np.flatnonzero(data.sites == site).tolist()
        site_table = data.table.subset(rows)
        if site == reference_site:
            summaries[site] = _not_measured("reference", site, len(rows), "the reference: left unchanged")
            continue
        others = np.flatnonzero(data.sites == reference_site if reference_site is not None
                                else data.sites != site).tolist()
        reference_table = data.table.subset(others)
        reference_name = reference_site if reference_site is not None else POOLED
        try:
            selection = select_harmonizer(site_table, reference_table, spec, settings, holdout,
                                          _prefixed(on_stage, site))
        except DataError as exc:  # e.g. too few images to hold out: this site only, said in its verdict
            summaries[site] = _not_measured("unchanged", reference_name, len(rows),
                                            f"not tried, left unchanged: {exc}")
            continue
        except ConfigError as exc:  # a listed candidate refuses these images: the whole request is wrong
            raise ConfigError(f"site '{site}': {str(exc).replace('--method', '--harmonize')}") from None
        summaries[site] = site_summary(selection, reference_name, len(rows))
        if summaries[site]["chosen"] is None:
            continue
        chosen = selection.result(summaries[site]["chosen"]).candidate
        tick = (on_stage(f"{site}: harmonizing ({chosen.name}) toward {reference_name}",
                         len(reference_table) + len(site_table)) if on_stage else None)
        harmonized, _ = harmonize_table(site_table, reference_table, chosen.method, out_dir / folders[site],
                                        options=chosen.options, on_image=tick)
        if len(harmonized) != len(site_table):
            raise DataError(f"site '{site}': harmonization returned {len(harmonized)} images for {len(site_table)}")
        for index, record in zip(rows, harmonized.records):
            records[index] = record
        summaries[site]["images_dir"] = str(out_dir / folders[site])
    table = ImageTable(records=tuple(records), classes=data.table.classes, multilabel=data.table.multilabel,
                       source=str(out_dir / "manifest.csv"))
    root = out_dir.resolve()
    write_manifest(out_dir / "manifest.csv",
                   [{"path": (r.path.resolve().relative_to(root).as_posix() if r.path.resolve().is_relative_to(root)
                              else str(r.path.resolve())),
                     "label": LABEL_SEPARATOR.join(r.labels), "site": site,
                     "spacing": format_spacing(r.spacing)} for r, site in zip(records, data.sites.tolist())],
                   ["path", "label", "site"] + (["spacing"] if any(r.spacing for r in records) else []))
    choice = {"spec": spec, "reference": reference_site if reference_site is not None else POOLED,
              "holdout": holdout, "max_images": settings.max_images, "permutations": settings.permutations,
              "min_content_correlation": MIN_CONTENT_CORRELATION, "rule": RULE,
              "applied_when": "the selection chose a harmonizer (its rule needs a measurable shift before)",
              "unchanged_sites": "a site whose choice found no harmonizer that reduces the held-out shift keeps its "
                                 "original images (referenced in place, not copied)"}
    return table, summaries, choice


# --------------------------------------------------------------------------------------------- how it is shown

def auc_change(summary: dict[str, Any]) -> str:
    """``0.925 → 0.361`` (held-out domain AUC before → after the chosen method), ``0.512 → unchanged`` when
    nothing was chosen, ``—`` when not measured."""
    if summary["auc_before"] is None:
        return "—"
    after = "unchanged" if summary["auc_after"] is None else f"{summary['auc_after']:.3f}"
    return f"{summary['auc_before']:.3f} → {after}"


def selection_rows(selection: dict[str, dict]) -> list[list[str]]:
    """The audit report's per-site table: site, chosen harmonizer, held-out AUC before → after, verdict."""
    return [[site, s["chosen"] or "none", auc_change(s), s["verdict"]] for site, s in selection.items()]


def selection_line(site: str, summary: dict[str, Any]) -> str:
    """One terminal line per site."""
    return f"{site}: {summary['chosen'] or 'none'} (held-out AUC {auc_change(summary)}); {summary['verdict']}"
