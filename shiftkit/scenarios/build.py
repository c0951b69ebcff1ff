"""From a :class:`ScenarioSpec` to files: :func:`plan` draws the rows of each role (labels only, nothing written),
:func:`build` writes the CSVs and the corrupted images under a build root.

The designs, by ``level`` (every draw stratified by label and seeded, see sampling.py):

- ``input`` (corruptions), ``none`` (control), ``output`` (concept): one domain split in halves. The first half is the
  source (80 % source, 20 % source validation; ``source_size`` caps both together). The second half is the target
  side; for MedMNIST the official validation split joins it and the official test split is the target's test set.
  From the target side: ``val_size`` validation images, a pool of ``pool_size`` images the budgets are drawn from,
  and (HAM10000, no official test split) the rest as the test set, capped at ``test_size``.
- ``acquisition``: the source is one HAM10000 site (``site``), the target side another (``target_site``).
- ``label`` (prevalence only): the domain's images pooled; a source drawn with ``source_shares``
  (``source_size`` images), then a target side of ``val_size + pool_size + test_size`` images with
  ``target_shares`` from the rest; validation, pool and test are stratified draws of it, so each keeps the planted
  shares up to rounding. The class-conditional image distributions are the same on both sides: only priors move.

Then the target side's images are corrupted (``input``) and its labels rewritten by the rule (``output``); the
labelled target set of a run is ``budget`` images drawn stratified from the pool. The source never changes.

CSV paths are relative to the CSV's folder for files under the build root and absolute for files elsewhere (the
shared HAM10000 images); every file is written atomically and a rebuild writes the same bytes (images already
there are kept: their folder's name carries a hash of what decides their pixels).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shiftkit.errors import DataError
from shiftkit.io import atomic_write, write_json, write_text
from shiftkit.scenarios.corruptions import corruption as get_corruption
from shiftkit.scenarios.sampling import Row, counts, relabel, stable_rng, stratified_fraction, stratified_take, \
    take_shares
from shiftkit.scenarios.sources import MEDMNIST, data_root, export_medmnist, ham_rows, medmnist_rows
from shiftkit.scenarios.spec import ScenarioSpec

SOURCE_VAL_FRACTION = 0.2
ROLES = ("source", "source_val", "target", "val", "test")


@dataclass(frozen=True)
class Plan:
    """The rows of each role, labels as the run sees them (relabelled at the target), paths of the original images
    (the corrupted copies are written by :func:`build`). ``pool`` holds the images every budget is drawn from."""

    source: list[Row]
    source_val: list[Row]
    target: list[Row]
    val: list[Row]
    test: list[Row]
    pool: list[Row]

    def counts(self) -> dict[str, dict[str, int]]:
        return {role: counts(getattr(self, role)) for role in (*ROLES, "pool")}


def _base(out: Path, dataset: str) -> Path:
    return Path(out) / "base" / dataset


def _cap(rows: list[Row], size: int | None, seed: int, stage: str) -> list[Row]:
    return rows if size is None or size >= len(rows) else stratified_take(rows, size, seed, stage)[0]


def _sides(spec: ScenarioSpec, out: Path, root: Path) -> tuple[list[Row], list[Row], list[Row] | None]:
    """(source and source validation together, the target side, the official test split or None)."""
    seed = spec.seed
    medmnist = spec.dataset in MEDMNIST
    splits = medmnist_rows(root, spec.dataset, _base(out, spec.dataset)) if medmnist else None
    if spec.level == "acquisition":
        return (_cap(ham_rows(root, spec.site, spec.classes), spec.source_size, seed, "source-size"),
                ham_rows(root, spec.target_site, spec.classes), None)
    domain = [r for part in splits.values() for r in part] if medmnist else ham_rows(root, spec.site, spec.classes)
    if medmnist and spec.classes is not None:
        domain = [r for r in domain if r.label in spec.classes]
    if spec.level == "label":
        if spec.source_size is None or spec.test_size is None:
            raise DataError(f"{spec.name}: a prevalence scenario needs source_size and test_size")
        source, rest = take_shares(domain, spec.source_shares, spec.source_size, seed, "source-shares")
        wanted = spec.val_size + spec.pool_size + spec.test_size
        target, _ = take_shares(rest, spec.target_shares, wanted, seed, "target-shares")
        return source, target, None
    first = splits["train"] if medmnist else domain
    if medmnist and spec.classes is not None:
        first = [r for r in first if r.label in spec.classes]
    source, second = stratified_fraction(first, 0.5, seed, "halves")
    if medmnist:
        extra = [r for r in splits["val"] if spec.classes is None or r.label in spec.classes]
        test = [r for r in splits["test"] if spec.classes is None or r.label in spec.classes]
        return _cap(source, spec.source_size, seed, "source-size"), second + extra, test
    return _cap(source, spec.source_size, seed, "source-size"), second, None


def plan(spec: ScenarioSpec, out: str | Path, root: str | Path | None = None) -> Plan:
    """The rows of every role of ``spec`` (reads labels only; writes nothing). ``out`` is the build root (MedMNIST
    rows are named at the paths the build exports them to); ``root`` the shared data folder (:func:`data_root`)."""
    spec.validate()
    root, seed = data_root(root), spec.seed
    source_all, side, official_test = _sides(spec, Path(out), root)
    source_val, source = stratified_fraction(source_all, SOURCE_VAL_FRACTION, seed, "source-val")
    val, rest = stratified_take(side, spec.val_size, seed, "val")
    if official_test is not None:
        pool = _cap(rest, spec.pool_size, seed, "pool")
        test = _cap(official_test, spec.test_size, seed, "test")
    else:
        pool, rest = stratified_take(rest, spec.pool_size, seed, "pool")
        test = _cap(rest, spec.test_size, seed, "test")
    if spec.budget > len(pool):
        raise DataError(f"{spec.name}: budget {spec.budget} but the target pool has {len(pool)} images")
    target = stratified_take(pool, spec.budget, seed, "budget")[0]
    if spec.relabel:
        val, pool, target, test = (relabel(rows, spec.relabel) for rows in (val, pool, target, test))
    return Plan(source=source, source_val=source_val, target=target, val=val, test=test, pool=pool)


# -- writing ---------------------------------------------------------------------------------------------------
def _image_name(row: Row) -> str:
    """A machine-independent name of an image: its folder's and file's names (unique in both datasets)."""
    path = Path(row.path)
    return f"{path.parent.name}_{path.stem}.png"


def _corrupt_one(row: Row, spec: ScenarioSpec, folder: Path) -> Row:
    target = folder / _image_name(row)
    if not target.is_file():
        with Image.open(row.path) as image:
            pixels = np.asarray(image.convert("L" if image.mode in ("L", "I", "I;16", "1") else "RGB"))
        rng = stable_rng(spec.seed, "pixels", _image_name(row))  # the noise of this image, whatever else is built
        corrupted = get_corruption(spec.corruption)(pixels, spec.severity, rng)

        def save(tmp: Path, array=corrupted) -> None:
            Image.fromarray(array).save(tmp, format="PNG")

        atomic_write(target, save)
    return Row(str(target.resolve()), row.label, row.site)


def _csv_text(rows: list[Row], csv_path: Path, out: Path) -> str:
    out, folder = out.resolve(), csv_path.parent.resolve()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with_site = any(r.site for r in rows)
    writer.writerow(["path", "label", "site"] if with_site else ["path", "label"])
    for row in rows:
        path = Path(row.path)
        shown = os.path.relpath(path, folder) if path.is_relative_to(out) else str(path)
        writer.writerow([Path(shown).as_posix(), row.label, row.site or ""] if with_site
                        else [Path(shown).as_posix(), row.label])
    return buffer.getvalue()


def build(spec: ScenarioSpec, out: str | Path, root: str | Path | None = None) -> dict:
    """Write ``spec``'s files under ``out`` (idempotent; atomic writes) and ``out/scenarios/<name>.json`` (the spec
    and the class counts of each role); return that content plus ``files``: each role's CSV, absolute (with
    ``pool``, the images the budgets are drawn from)."""
    out, root = Path(out), data_root(root)
    drawn = plan(spec, out, root)
    if spec.dataset in MEDMNIST:
        export_medmnist(root, spec.dataset, _base(out, spec.dataset))
    rows = {role: getattr(drawn, role) for role in (*ROLES, "pool")}
    if spec.corruption:
        folder = out / Path(spec.val).parent / "images"
        for role in ("val", "pool", "test"):  # target is a subset of pool
            rows[role] = [_corrupt_one(row, spec, folder) for row in rows[role]]
        by_name = {_image_name(old): new for old, new in zip(drawn.pool, rows["pool"])}
        rows["target"] = [by_name[_image_name(r)] for r in drawn.target]
    paths = {role: out / getattr(spec, role) for role in ROLES}
    paths["pool"] = paths["val"].with_name("pool.csv")
    for role, path in paths.items():
        write_text(path, _csv_text(rows[role], path, out))
    record = {"spec": spec.to_dict(), "counts": drawn.counts()}
    write_json(out / "scenarios" / f"{spec.name}.json", record)  # relative paths only: the same bytes anywhere
    return {**record, "files": {role: str(path.resolve()) for role, path in paths.items()}}
