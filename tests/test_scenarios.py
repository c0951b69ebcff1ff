"""The scenario generator: each corruption does what it says (known answers), draws hit their planted sizes and
shares, the concept rule changes exactly the stated labels, and a build is byte-for-byte reproducible per seed."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from shiftkit.data.table import load_table
from shiftkit.errors import ConfigError, DataError
from shiftkit.scenarios import CORRUPTIONS, FAMILIES, ScenarioSpec, all_scenarios, build, plan, select
from shiftkit.scenarios.corruptions import (blur, colour_cast, contrast, downsample, gamma, jpeg, noise,
                                            resolution)
from shiftkit.scenarios.sampling import Row, allocate, relabel, stratified_take, take_shares

SHARED = Path(os.environ.get("SHIFTKIT_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"


def _texture(shape=(64, 64), seed=0) -> np.ndarray:
    """A smooth gradient plus mid-frequency texture, well inside 0..255 (no clipping by the corruptions tested)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    base = 90 + 40 * x / shape[1] + 20 * np.sin(y / 3.0)
    texture = ndimage.gaussian_filter(rng.normal(0, 25, shape[:2]), 1.0)
    image = base + texture
    if len(shape) == 3:
        image = np.stack([image * g for g in (1.0, 0.9, 0.8)], axis=2)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


# -- corruptions: known answers ----------------------------------------------------------------------------------
def test_blur_lowers_the_laplacian_variance_more_at_severity_2_and_keeps_a_flat_image():
    image = _texture()
    sharpness = [ndimage.laplace(im.astype(np.float64)).var()
                 for im in (image, CORRUPTIONS["blur"](image, 1), CORRUPTIONS["blur"](image, 2))]
    assert sharpness[0] > 2 * sharpness[1] > 2 * sharpness[2]
    flat = np.full((28, 28), 77, np.uint8)
    assert np.array_equal(blur(flat, 0.05), flat)


@pytest.mark.parametrize("sigma", [5.0, 12.0, 25.0])
def test_noise_of_sigma_s_adds_variance_s_squared(sigma):
    grey = np.full((256, 256), 128, np.uint8)  # 128 +- 4 sigma stays inside 0..255: no clipping
    added = noise(grey, sigma, np.random.default_rng(1)).astype(np.float64) - 128
    # rounding to integers adds a uniform error of variance 1/12
    assert added.var() == pytest.approx(sigma ** 2 + 1 / 12, rel=0.03)
    assert abs(added.mean()) < 3 * sigma / 256
    assert CORRUPTIONS["noise"].parameter(1) < CORRUPTIONS["noise"].parameter(2)


def test_noise_is_reproducible_per_generator_seed():
    image = _texture()
    same = [noise(image, 12.0, np.random.default_rng(5)).tobytes() for _ in range(2)]
    assert same[0] == same[1] != noise(image, 12.0, np.random.default_rng(6)).tobytes()


@pytest.mark.parametrize("severity", [1, 2])
def test_contrast_factor_c_scales_the_std_by_c_and_keeps_the_mean(severity):
    image = _texture()
    factor = CORRUPTIONS["contrast"].parameter(severity)
    out = contrast(image, factor)
    assert out.std() == pytest.approx(factor * image.std(), rel=0.01)
    assert out.mean() == pytest.approx(image.mean(), abs=0.5)


@pytest.mark.parametrize("severity", [1, 2])
def test_gamma_maps_mid_grey_as_the_power_law_and_keeps_black_and_white(severity):
    exponent = CORRUPTIONS["gamma"].parameter(severity)
    image = np.array([[0, 64, 128, 255]], np.uint8)
    out = gamma(image, exponent)
    assert out[0, 2] == round(255 * (128 / 255) ** exponent)  # 1.6: 84, 2.5: 45
    assert out[0, 0] == 0 and out[0, 3] == 255 and out[0, 1] < 64


def test_resolution_halves_the_size_then_restores_it():
    image = _texture((48, 64))
    assert downsample(image, 2).shape == (24, 32) and downsample(image, 4).shape == (12, 16)
    assert resolution(image, 2).shape == image.shape  # back on the original grid
    checker = ((np.indices((32, 32)).sum(0) % 2) * 200 + 20).astype(np.uint8)  # the finest detail there is
    assert checker.std() > 90 and resolution(checker, 2).std() < 1  # averaged away: flat 120
    flat = np.full((32, 32), 90, np.uint8)
    assert np.array_equal(resolution(flat, 4), flat)
    assert ndimage.laplace(resolution(image, 4).astype(float)).var() < ndimage.laplace(image.astype(float)).var()


@pytest.mark.parametrize("shape", [(64, 64), (64, 64, 3)])
def test_jpeg_quality_lowers_psnr_monotonically(shape):
    image = _texture(shape)
    levels = [jpeg(image, 90), CORRUPTIONS["jpeg"](image, 1), CORRUPTIONS["jpeg"](image, 2)]
    psnr = [_psnr(image, out) for out in levels]
    assert psnr[0] > psnr[1] > psnr[2] > 15
    assert all(out.shape == image.shape and out.dtype == np.uint8 for out in levels)


@pytest.mark.parametrize("severity", [1, 2])
def test_colour_cast_multiplies_the_channel_means_by_its_gains(severity):
    image = _texture((64, 64, 3))  # at most about 190: times 1.3 stays below 255
    gains = CORRUPTIONS["colour_cast"].parameter(severity)
    out = colour_cast(image, gains)
    for channel, gain in enumerate(gains):
        assert out[..., channel].mean() == pytest.approx(gain * image[..., channel].mean(), abs=0.3)
    with pytest.raises(ConfigError, match="RGB"):
        colour_cast(image[..., 0], gains)


def test_every_corruption_keeps_shape_and_dtype_and_has_two_severities():
    for name, item in CORRUPTIONS.items():
        assert sorted(item.severities) == [1, 2], name
        for shape in ([(40, 40, 3)] if item.rgb_only else [(40, 40), (40, 40, 3)]):
            image = _texture(shape)
            out = item(image, 2, np.random.default_rng(0))
            assert out.shape == image.shape and out.dtype == np.uint8, name
            assert not np.array_equal(out, image), name


# -- draws -------------------------------------------------------------------------------------------------------
def _rows(sizes: dict[str, int], site: str | None = None) -> list[Row]:
    return [Row(f"/x/{label}_{i:04d}.png", label, site) for label, n in sizes.items() for i in range(n)]


def test_budgets_give_the_stated_number_stratified_by_largest_remainder():
    rows = _rows({"a": 100, "b": 50, "c": 10})
    for budget, expected in ((50, {"a": 31, "b": 16, "c": 3}), (200 - 40, {"a": 100, "b": 50, "c": 10}),
                             (7, {"a": 4, "b": 2, "c": 1})):
        taken, rest = stratified_take(rows, budget, seed=0, stage="budget")
        assert Counter(r.label for r in taken) == expected
        assert len(rest) == len(rows) - budget and not set(taken) & set(rest)
    assert allocate({"common": 1000, "rare": 1}, 10) == {"common": 9, "rare": 1}  # a rare class keeps one
    with pytest.raises(DataError, match="cannot draw"):
        allocate({"a": 3}, 4)


def test_prevalence_resampling_hits_the_planted_shares():
    rows = _rows({"a": 300, "b": 300, "c": 40})
    taken, rest = take_shares(rows, {"a": 0.2, "b": 0.8}, 250, seed=3, stage="target")
    assert Counter(r.label for r in taken) == {"a": 50, "b": 200}  # c is not in the shares: left out
    assert len(rest) == len(rows) - 250
    odd, _ = take_shares(rows, {"a": 1 / 3, "b": 2 / 3}, 100, seed=3, stage="target")
    assert Counter(r.label for r in odd) == {"a": 33, "b": 67}
    with pytest.raises(DataError, match="'a'"):
        take_shares(rows, {"a": 0.9, "b": 0.1}, 500, seed=0, stage="target")


def test_the_concept_rule_changes_exactly_the_stated_labels():
    rows = _rows({"bkl": 5, "mel": 4, "nv": 6})
    swapped = relabel(rows, {"bkl": "mel", "mel": "bkl"})
    merged = relabel(rows, {"bkl": "bkl_or_mel", "mel": "bkl_or_mel"})
    for before, swap, merge in zip(rows, swapped, merged):
        assert swap.path == merge.path == before.path
        if before.label == "nv":
            assert swap == merge == before
        else:
            assert swap.label == {"bkl": "mel", "mel": "bkl"}[before.label] and merge.label == "bkl_or_mel"
    assert Counter(r.label for r in swapped) == {"bkl": 4, "mel": 5, "nv": 6}


def test_draws_are_deterministic_per_seed_and_independent_of_row_order():
    rows = _rows({"a": 60, "b": 40})
    first = stratified_take(rows, 30, seed=0, stage="val")[0]
    assert stratified_take(list(reversed(rows)), 30, seed=0, stage="val")[0] == first
    assert stratified_take(rows, 30, seed=1, stage="val")[0] != first


# -- a tiny shared-data folder -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    """A MedMNIST-shaped npz (28 px grey) and a HAM10000-shaped site table (32 px RGB JPEGs), a few images each."""
    root = tmp_path_factory.mktemp("shared") / "data"
    rng = np.random.default_rng(0)
    (root / "medmnist").mkdir(parents=True)
    arrays = {}
    for split, (zeros, ones) in {"train": (20, 40), "val": (6, 14), "test": (8, 12)}.items():
        arrays[f"{split}_images"] = rng.integers(30, 220, size=(zeros + ones, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.array([0] * zeros + [1] * ones, dtype=np.uint8).reshape(-1, 1)
    np.savez(root / "medmnist" / "pneumoniamnist.npz", **arrays)
    ham = root / "ham10000_sites"
    (ham / "images").mkdir(parents=True)
    rows = ["path,label,site,lesion_id"]
    index = 0
    for site, sizes in {"alpha": {"mel": 20, "nv": 30, "bkl": 12}, "beta": {"mel": 18, "nv": 30, "bkl": 12}}.items():
        for label, n in sizes.items():
            for _ in range(n):
                name = f"images/ISIC_{index:07d}.jpg"
                Image.fromarray(_texture((32, 32, 3), seed=index)).save(ham / name, quality=95)
                rows.append(f"{name},{label},{site},HAM_{index}")
                index += 1
    (ham / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


NOISE = dict(corruption="noise", severity=2, budget=10, val_size=8, pool_size=16)


def test_a_build_is_the_same_bytes_twice_and_changes_with_the_seed(fake_root, tmp_path):
    spec = ScenarioSpec.create("noise", "pneumoniamnist", "input", **NOISE)
    for out in (tmp_path / "a", tmp_path / "b"):
        build(spec, out, fake_root)
    build(spec, tmp_path / "a", fake_root)  # again in place: idempotent
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert first == second and any(name.endswith(".png") and "variants" in name for name in first)
    other = ScenarioSpec.create("noise", "pneumoniamnist", "input", seed=1, **NOISE)
    build(other, tmp_path / "c", fake_root)
    assert other.variant_key != spec.variant_key
    assert (tmp_path / "c" / other.target).read_bytes() != (tmp_path / "a" / spec.target).read_bytes()


def test_a_built_corruption_is_the_corruption_of_the_original_image(fake_root, tmp_path):
    spec = ScenarioSpec.create("sharpness", "ham10000", "input", site="alpha", classes=("mel", "nv"),
                               corruption="blur", severity=2, budget=10, val_size=8, pool_size=12)
    record = build(spec, tmp_path, fake_root)
    row = _csv(Path(record["files"]["test"]))[0]
    written = np.asarray(Image.open(Path(record["files"]["test"]).parent / row["path"]))
    original_name = Path(row["path"]).name.split("_", 1)[1].replace(".png", ".jpg")
    original = np.asarray(Image.open(fake_root / "ham10000_sites" / "images" / original_name).convert("RGB"))
    assert np.array_equal(written, blur(original, CORRUPTIONS["blur"].parameter(2)))
    source = _csv(Path(record["files"]["source"]))  # the source is never corrupted: the shared originals
    assert all(Path(r["path"]).is_absolute() and r["path"].endswith(".jpg") and r["site"] == "alpha" for r in source)
    table = load_table(Path(record["files"]["target"]))  # what finetune reads
    assert len(table) == 10 and list(table.classes) == ["mel", "nv"]


def test_budgets_are_drawn_from_one_pool_and_the_roles_never_share_an_image(fake_root, tmp_path):
    specs = [ScenarioSpec.create("control", "pneumoniamnist", "none", budget=b, val_size=8, pool_size=16)
             for b in (4, 12)]
    assert specs[0].variant_key == specs[1].variant_key and specs[0].source_key == specs[1].source_key
    records = [build(spec, tmp_path, fake_root) for spec in specs]
    pool = _csv(Path(records[0]["files"]["pool"]))
    pool_counts = Counter(r["label"] for r in pool)
    for spec, record in zip(specs, records):
        target = _csv(Path(record["files"]["target"]))
        assert len(target) == spec.budget
        assert Counter(r["label"] for r in target) == allocate(pool_counts, spec.budget)
        assert {r["path"] for r in target} <= {r["path"] for r in pool}
    drawn = plan(specs[1], tmp_path, fake_root)
    roles = [drawn.source, drawn.source_val, drawn.val, drawn.pool, drawn.test]
    paths = [{r.path for r in rows} for rows in roles]
    assert sum(map(len, paths)) == len(set().union(*paths))  # disjoint
    assert len(drawn.test) == 20  # MedMNIST: the official test split


def test_a_prevalence_scenario_plants_its_shares_at_the_target_only(fake_root, tmp_path):
    spec = ScenarioSpec.create("prevalence", "ham10000", "label", site="beta", classes=("mel", "nv"),
                               source_shares={"mel": 0.5, "nv": 0.5}, target_shares={"mel": 0.2, "nv": 0.8},
                               source_size=20, val_size=5, pool_size=10, test_size=10, budget=5)
    drawn = plan(spec, tmp_path, fake_root)
    assert Counter(r.label for r in drawn.source + drawn.source_val) == {"mel": 10, "nv": 10}
    assert Counter(r.label for r in drawn.val + drawn.pool + drawn.test) == {"mel": 5, "nv": 20}
    assert {r.site for r in drawn.source + drawn.test} == {"beta"}


def test_a_concept_scenario_relabels_the_target_and_not_the_source(fake_root, tmp_path):
    rule = {"bkl": "mel", "mel": "bkl"}
    spec = ScenarioSpec.create("concept", "ham10000", "output", site="alpha", classes=("bkl", "mel", "nv"),
                               relabel=rule, budget=6, val_size=6, pool_size=10)
    same = ScenarioSpec.create("control", "ham10000", "none", site="alpha", classes=("bkl", "mel", "nv"),
                               budget=6, val_size=6, pool_size=10)
    changed, original = plan(spec, tmp_path, fake_root), plan(same, tmp_path, fake_root)
    assert changed.source == original.source and spec.source_key == same.source_key  # one source checkpoint
    for role in ("val", "pool", "target", "test"):
        for new, old in zip(getattr(changed, role), getattr(original, role)):
            assert new.path == old.path and new.label == rule.get(old.label, old.label)
    assert any(r.label == "nv" for r in changed.test) and any(r.label in rule for r in changed.test)


def test_an_acquisition_scenario_takes_source_and_target_from_their_sites(fake_root, tmp_path):
    spec = ScenarioSpec.create("acquisition", "ham10000", "acquisition", site="alpha", target_site="beta",
                               classes=("mel", "nv"), budget=10, val_size=8, pool_size=20)
    drawn = plan(spec, tmp_path, fake_root)
    assert {r.site for r in drawn.source + drawn.source_val} == {"alpha"}
    assert {r.site for r in drawn.target + drawn.val + drawn.test} == {"beta"}
    assert len(drawn.source) + len(drawn.source_val) == 50 and len(drawn.test) == 48 - 8 - 20


def test_missing_data_and_bad_specs_are_one_line_errors(fake_root, tmp_path):
    with pytest.raises(DataError, match="breastmnist.npz"):
        plan(ScenarioSpec.create("control", "breastmnist", "none"), tmp_path, fake_root)
    with pytest.raises(ConfigError, match="corruption"):
        ScenarioSpec.create("noise", "pneumoniamnist", "input")
    with pytest.raises(ConfigError, match="budget"):
        ScenarioSpec.create("control", "pneumoniamnist", "none", budget=300)
    with pytest.raises(DataError, match="budget|needs"):
        plan(ScenarioSpec.create("control", "pneumoniamnist", "none", budget=50, val_size=8, pool_size=60),
             tmp_path, fake_root)


# -- the catalogue -----------------------------------------------------------------------------------------------
def test_the_catalogue_has_24_scenarios_in_6_families_both_budgets_and_starts():
    specs = all_scenarios()
    assert len(specs) >= 24 and len({s.name for s in specs}) == len(specs)
    assert {s.family for s in specs} == set(FAMILIES) and len(FAMILIES) >= 6
    assert {s.budget for s in specs} == {50, 200} and {s.start for s in specs} == {"imagenet", "source"}
    corruptions = {(s.dataset, s.corruption, s.severity) for s in specs if s.level == "input"}
    for dataset in ("pneumoniamnist", "breastmnist", "ham10000"):
        assert {c for d, c, _ in corruptions if d == dataset} >= {"blur", "noise", "contrast", "gamma", "resolution",
                                                                  "jpeg"}
        assert {sev for d, _, sev in corruptions if d == dataset} == {1, 2}
    pairs = select(specs, family="acquisition")
    assert {len(s.classes) for s in pairs} == {2, 3} and all(s.site != s.target_site for s in pairs)
    for spec in specs[::17]:
        assert ScenarioSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.skipif(not (SHARED / "ham10000_sites" / "metadata.csv").is_file()
                    or not (SHARED / "medmnist" / "breastmnist.npz").is_file(),
                    reason=f"shared data not found at {SHARED} (set SHIFTKIT_SHARED)")
def test_every_scenario_of_the_catalogue_fits_the_shared_data(tmp_path):
    seen = set()
    for spec in all_scenarios():
        if spec.variant_key in seen or spec.budget != 200:
            continue
        seen.add(spec.variant_key)
        drawn = plan(spec, tmp_path, SHARED)  # raises when a draw does not fit
        assert len(drawn.target) == 200 and len(drawn.val) == spec.val_size and len(drawn.test) >= 100
        assert len(set(r.label for r in drawn.target)) >= 2
    assert len(seen) >= 24
