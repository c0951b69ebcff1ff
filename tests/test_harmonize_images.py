"""Image-level harmonization: resampling, histogram matching, Nyúl, z-score, colour, save/load and the CLI.

Every test plants a known answer: a contrast/brightness shift that matching must undo, landmarks that must land on
the standard scale, a spacing ratio the size must follow, LAB statistics that must equal the reference's.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.data.synthetic import write_dataset
from shiftkit.data.table import load_table
from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.apply import harmonize_table, load_harmonizer, make_harmonizer
from shiftkit.harmonize.colour import Macenko, Reinhard, rgb_to_lab
from shiftkit.harmonize.intensity import HistogramMatching, NyulStandardization, ZScore
from shiftkit.harmonize.resample import Resampler, resample_image

SHARED = Path(os.environ.get("SHIFTKIT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
HAM = SHARED / "data" / "ham10000_sites" / "metadata.csv"
QUANTILES = np.linspace(0.05, 0.95, 19)


def _source_images(n: int = 8, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.gamma(2.0, 20.0, (size, size)) for _ in range(n)]


# ------------------------------------------------------------------------------------------------ histogram matching

@pytest.mark.parametrize("reference", ["average", "pooled"])
def test_histogram_matching_matches_source_quantiles(reference):
    """Tolerance: every 5 %..95 % quantile of the matched target within 1 % of the source's intensity range.
    The source's quantiles: the mean of its images' quantile functions ("average"), or of all its pixels pooled."""
    source = [im * scale for im, scale in zip(_source_images(), np.linspace(0.6, 1.4, 8))]  # images differ
    target = np.random.default_rng(1).normal(120.0, 15.0, (32, 32))  # another shape, location and scale
    pooled = np.concatenate([s.ravel() for s in source])
    if reference == "pooled":
        expected = np.quantile(pooled, QUANTILES)
    else:
        expected = np.mean([np.quantile(s, QUANTILES) for s in source], axis=0)
    span = np.ptp(pooled)
    before = np.abs(np.quantile(target, QUANTILES) - expected).max() / span
    matched = HistogramMatching(match_points=100, reference=reference).fit(source).transform(target)
    after = np.abs(np.quantile(matched, QUANTILES) - expected).max() / span
    assert before > 0.2  # the planted shift is large ...
    assert after < 0.01, after  # ... and matching removes it
    assert matched.shape == target.shape
    other = np.quantile(pooled, QUANTILES) if reference == "average" else np.mean(
        [np.quantile(s, QUANTILES) for s in source], axis=0)
    assert np.abs(np.quantile(matched, QUANTILES) - other).max() / span > 0.015  # the references differ


def test_histogram_matching_is_per_channel_and_keeps_order():
    rng = np.random.default_rng(2)
    source = [np.stack([rng.normal(50, 5, (16, 16)), rng.normal(200, 20, (16, 16)), rng.normal(120, 2, (16, 16))], -1)
              for _ in range(4)]
    target = rng.uniform(0, 255, (16, 16, 3))
    matched = HistogramMatching().fit(source).transform(target)
    for c, mean in enumerate((50, 200, 120)):
        assert abs(matched[..., c].mean() - mean) < 0.05 * mean
        # a monotone map: the pixel order of each channel is unchanged
        assert np.array_equal(np.argsort(target[..., c].ravel(), kind="stable"),
                              np.argsort(matched[..., c].ravel(), kind="stable"))
    with pytest.raises(DataError, match="3-channel"):
        HistogramMatching().fit(source).transform(target[..., 0])


def test_histogram_matching_with_mask_leaves_statistics_of_foreground():
    rng = np.random.default_rng(3)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    source = []
    for _ in range(4):
        image = np.zeros((32, 32))
        image[mask] = rng.normal(100, 10, mask.sum())
        source.append(image)
    target = np.zeros((32, 32))
    target[mask] = rng.normal(30, 3, mask.sum())
    matched = HistogramMatching().fit(source, masks=[mask] * 4).transform(target, mask=mask)
    assert abs(matched[mask].mean() - 100) < 2 and abs(matched[mask].std() - 10) < 1


# --------------------------------------------------------------------------------------------------------- Nyúl

def test_nyul_maps_learned_landmarks_onto_the_standard_scale():
    source = _source_images(n=10)
    nyul = NyulStandardization(scale=(0.0, 100.0)).fit(source)
    standard = np.asarray(nyul.state["standard_landmarks"])[0]
    assert standard[0] == pytest.approx(0.0) and standard[-1] == pytest.approx(100.0)
    assert np.all(np.diff(standard) > 0)
    target = np.exp(np.random.default_rng(4).normal(3.0, 0.5, (32, 32)))  # log-normal: another histogram shape
    before = nyul.image_landmarks(target)[0]
    after = nyul.image_landmarks(nyul.transform(target))[0]
    assert np.abs(before - standard).max() > 10
    # tolerance 0.01 on the 0..100 scale: a percentile interpolates between two neighbouring pixels, which may sit
    # on either side of a landmark where the piecewise-linear map bends
    np.testing.assert_allclose(after, standard, atol=0.01)
    # a source image itself lands on the scale too
    np.testing.assert_allclose(nyul.image_landmarks(nyul.transform(source[0]))[0], standard, atol=0.01)


def test_nyul_default_scale_is_the_sources():
    source = _source_images(n=6)
    nyul = NyulStandardization().fit(source)
    lows = [np.percentile(s, 1) for s in source]
    highs = [np.percentile(s, 99) for s in source]
    standard = nyul.state["standard_landmarks"][0]
    assert standard[0] == pytest.approx(np.mean(lows)) and standard[-1] == pytest.approx(np.mean(highs))


# ------------------------------------------------------------------------------------------------------ z-score

def test_zscore_gives_mean_zero_sd_one_within_mask():
    rng = np.random.default_rng(5)
    mask = np.zeros((24, 24), bool)
    mask[4:20, 6:18] = True
    image = rng.normal(0.0, 1.0, (24, 24)) * 7 + 300
    image[~mask] = 0.0  # background that would distort statistics over the whole image
    zscore = ZScore(scale="unit").fit(_source_images(n=3, size=24))
    out = zscore.transform(image, mask=mask)
    assert out[mask].mean() == pytest.approx(0.0, abs=1e-9)
    assert out[mask].std() == pytest.approx(1.0, abs=1e-9)
    assert abs(zscore.transform(image).mean()) < 1e-9 and abs(out.mean()) > 0.5  # the mask changed the result
    # scale "source": the same standardized image on the source's typical mean/sd
    on_source = ZScore().fit(_source_images(n=3, size=24)).transform(image, mask=mask)
    state = ZScore().fit(_source_images(n=3, size=24)).state
    assert on_source[mask].mean() == pytest.approx(state["source_mean"][0])
    assert on_source[mask].std() == pytest.approx(state["source_sd"][0])


def test_zscore_percentile_clipping_bounds_outliers():
    image = np.random.default_rng(6).normal(0, 1, (32, 32))
    image[0, 0] = 1000.0
    out = ZScore(scale="unit", clip=(1, 99)).fit([image]).transform(image)
    assert out.max() < 4  # without clipping the outlier sits ~31 sd away
    assert ZScore(scale="unit").fit([image]).transform(image).max() > 30


# --------------------------------------------------------------------------------------------------- resampling

def test_resampling_follows_spacing_ratio_and_keeps_extent():
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.random.default_rng(7).uniform(0, 1, (30, 40)).astype(np.float32))
    image.SetSpacing((0.5, 0.8))
    image.SetOrigin((10.0, -5.0))
    out = Resampler(spacing=(1.0, 0.4)).fit().transform(image)
    assert out.GetSize() == (20, 60)  # x: 40 * 0.5 / 1.0; y: 30 * 0.8 / 0.4
    extent_in = np.array(image.GetSize()) * np.array(image.GetSpacing())
    extent_out = np.array(out.GetSize()) * np.array(out.GetSpacing())
    np.testing.assert_allclose(extent_out, extent_in)
    # the field of view's first edge stays put: origin - spacing/2 is unchanged
    np.testing.assert_allclose(np.array(out.GetOrigin()) - np.array(out.GetSpacing()) / 2,
                               np.array(image.GetOrigin()) - np.array(image.GetSpacing()) / 2)


def test_resampling_label_maps_with_nearest_keeps_the_label_set_and_3d_median_spacing():
    import SimpleITK as sitk

    labels = np.zeros((6, 20, 20), np.uint8)
    labels[:, 5:15, 5:15] = 1
    labels[2:4, 8:12, 8:12] = 7
    label_map = sitk.GetImageFromArray(labels)
    label_map.SetSpacing((0.7, 0.7, 2.5))
    resampler = Resampler().fit([(0.7, 0.7, 2.5), (1.0, 1.0, 1.0), (0.9, 0.9, 1.2)])
    assert resampler.target_spacing == (0.9, 0.9, 1.2)  # per-axis median of the source
    nearest = sitk.GetArrayFromImage(resampler.transform(label_map, label=True))
    assert set(np.unique(nearest)) == {0, 1, 7}
    assert nearest.shape == (12, 16, 16)  # z: 6 * 2.5 / 1.2 = 12.5 -> 12; x, y: 20 * 0.7 / 0.9 = 15.6 -> 16
    linear = sitk.GetArrayFromImage(resample_image(label_map, (0.9, 0.9, 1.2), "linear"))
    assert len(set(np.unique(linear)) - {0, 1, 7}) > 0  # linear would invent labels
    bspline = resample_image(label_map, (0.9, 0.9, 1.2), "bspline")
    assert bspline.GetSize() == (16, 16, 12)


# --------------------------------------------------------------------------------------------------------- colour

def _rgb_images(n: int, mean, sd, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(rng.normal(mean, sd, (24, 24, 3)), 0, 255) for _ in range(n)]


def test_reinhard_matches_reference_lab_means_and_sds():
    """Tolerance: 0.1 LAB units (colours stay inside the sRGB gamut, so no clipping)."""
    reference = _rgb_images(5, (190, 140, 150), 12, seed=8)
    target = _rgb_images(1, (120, 100, 160), 8, seed=9)[0]
    reinhard = Reinhard().fit(reference)
    ref_means = np.mean([Reinhard.lab_stats(im)[0] for im in reference], 0)
    ref_sds = np.mean([Reinhard.lab_stats(im)[1] for im in reference], 0)
    mean_before, _ = Reinhard.lab_stats(target)
    mean_after, sd_after = Reinhard.lab_stats(reinhard.transform(target))
    assert np.abs(mean_before - ref_means).max() > 10
    np.testing.assert_allclose(mean_after, ref_means, atol=0.1)
    np.testing.assert_allclose(sd_after, ref_sds, atol=0.1)
    assert rgb_to_lab(np.array([1.0, 1.0, 1.0]))[0] == pytest.approx(100.0, abs=1e-3)  # white is L = 100


def _he_image(stains: np.ndarray, seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    concentrations = np.stack([rng.gamma(2.0, 0.35, size * size), rng.gamma(2.0, 0.25, size * size)])
    return np.clip(240.0 * np.exp(-(stains @ concentrations)).T.reshape(size, size, 3), 0, 255)


def test_macenko_moves_the_stain_vectors_to_the_references():
    unit = lambda m: m / np.linalg.norm(m, axis=0)  # noqa: E731
    reference_stains = unit(np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]]))
    target_stains = unit(np.array([[0.45, 0.20], [0.85, 0.90], [0.30, 0.40]]))
    macenko = Macenko().fit([_he_image(reference_stains, s) for s in range(3)])
    target = _he_image(target_stains, 10)
    estimate = lambda image: macenko.stain_matrix(macenko._od(image))  # noqa: E731
    before = np.abs(estimate(target) - np.asarray(macenko.state["stain_matrix"])).max()
    after = np.abs(estimate(macenko.transform(target)) - np.asarray(macenko.state["stain_matrix"])).max()
    assert before > 0.1 and after < 0.05, (before, after)


# -------------------------------------------------------------------------------------------------- save / load

@pytest.mark.parametrize("method,options,colour", [
    ("histmatch", {"match_points": 50}, False), ("nyul", {"cutoff": (2, 98)}, False),
    ("zscore", {"clip": (1, 99), "foreground": "otsu"}, False), ("colour", {}, True),
    ("colour", {"colour_method": "macenko"}, True),
])
def test_saved_harmonizer_round_trip_gives_identical_output(tmp_path, method, options, colour):
    rng = np.random.default_rng(11)
    if colour:
        source = [_he_image(np.array([[0.6, 0.1], [0.7, 0.95], [0.3, 0.2]]), s) for s in range(3)]
        target = _he_image(np.array([[0.5, 0.2], [0.8, 0.9], [0.3, 0.35]]), 5)
    else:
        source, target = _source_images(4), rng.normal(100, 20, (32, 32))
    fitted = make_harmonizer(method, **options).fit(source)
    path = fitted.save(tmp_path / "h.json")
    loaded = load_harmonizer(path, method)
    assert type(loaded) is type(fitted) and loaded.params() == fitted.params()
    assert np.array_equal(fitted.transform(target), loaded.transform(target))


def test_saved_resampler_round_trip(tmp_path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.arange(400, dtype=np.float32).reshape(20, 20))
    image.SetSpacing((0.3, 0.6))
    fitted = Resampler(interpolator="bspline").fit([(0.5, 0.5), (0.4, 0.8), (0.45, 0.5)])
    loaded = load_harmonizer(fitted.save(tmp_path / "r.json"), "resample")
    a, b = fitted.transform(image), loaded.transform(image)
    assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)) and a.GetSpacing() == b.GetSpacing()


# ------------------------------------------------------------------------------------------ files and the command

def _shifted_copy(source: Path, out: Path, jpeg_every: int = 0) -> Path:
    """A planted intensity shift (lower contrast, brighter) of every image; some saved as JPEG."""
    for i, path in enumerate(sorted(source.rglob("*.png"))):
        shifted = np.clip(40 + 0.6 * np.asarray(Image.open(path)).astype(float), 0, 255).astype(np.uint8)
        target = out / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(shifted).save(target.with_suffix(".jpg") if jpeg_every and i % jpeg_every == 0 else target)
    return out


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("harmonize")
    reference = write_dataset(root / "reference", per_class=8, size=32, seed=0)
    raw = write_dataset(root / "raw", per_class=8, size=32, seed=1)
    return reference, _shifted_copy(raw, root / "target", jpeg_every=5)


def test_cli_writes_layout_manifest_report_and_lowers_mmd(domains, tmp_path):
    reference, target = domains
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "harmonize", str(target), "--method", "histmatch", "--reference", str(reference), "--out", str(out),
        "--image-size", "32", "--permutations", "200", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
    ])
    assert result.exit_code == 0, result.output
    inputs = sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file())
    outputs = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert outputs == sorted(p.with_suffix(".png") for p in inputs)  # same layout; JPEG written as PNG
    with (out / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(inputs) and {r["label"] for r in rows} == {"oval", "round", "spiky"}
    assert all(r["label"] == Path(r["path"]).parts[0] for r in rows)
    table = load_table(out / "manifest.csv")  # directly usable by diagnose / finetune
    assert len(table) == 24 and table.labeled
    report = json.loads((out / "harmonize.json").read_text())
    before, after = report["shift"]["before"]["mmd"], report["shift"]["after"]["mmd"]
    assert before["p_value"] < 0.05  # the planted shift is detected ...
    assert after["statistic"] < before["statistic"] and after["p_value"] > before["p_value"]  # ... and reduced
    assert (out / "harmonizer.json").is_file()
    # the harmonized target now looks like the reference: mean intensity within 3 grey levels
    ref_mean = np.mean([np.asarray(Image.open(p)).mean() for p in reference.rglob("*.png")])
    out_mean = np.mean([np.asarray(Image.open(p)).mean() for p in out.rglob("*.png")])
    tgt_mean = np.mean([np.asarray(Image.open(p)).mean() for p in target.rglob("*.*")])
    assert abs(out_mean - ref_mean) < 3 < abs(tgt_mean - ref_mean)

    # applying the saved harmonizer gives the same files, byte for byte
    again = tmp_path / "again"
    result = CliRunner().invoke(app, ["harmonize", str(target), "--harmonizer", str(out / "harmonizer.json"),
                                      "--out", str(again), "--no-measure"])
    assert result.exit_code == 0, result.output
    for path in outputs:
        assert (again / path).read_bytes() == (out / path).read_bytes()


def test_medical_inputs_keep_geometry_and_resample(tmp_path):
    import SimpleITK as sitk

    rng = np.random.default_rng(12)
    folder = tmp_path / "ct"
    folder.mkdir()
    for i in range(3):
        volume = sitk.GetImageFromArray(rng.normal(-500 + 100 * i, 200, (4, 16, 16)).astype(np.int16))
        volume.SetSpacing((0.8, 0.8, 3.0))
        volume.SetOrigin((1.0, 2.0, 3.0 + i))
        sitk.WriteImage(volume, str(folder / f"scan{i}.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(rng.normal(0, 1, (16, 16)).astype(np.float32)), str(folder / "x.mha"))
    table = load_table(folder)
    reference = table.subset([0, 1, 2])
    new, harmonizer = harmonize_table(reference, reference, "zscore", tmp_path / "z", options={"scale": "unit"})
    assert sorted(p.name for p in (tmp_path / "z").rglob("scan*")) == [f"scan{i}.nii.gz" for i in range(3)]
    out = sitk.ReadImage(str(tmp_path / "z" / "scan2.nii.gz"))
    assert out.GetPixelID() == sitk.sitkFloat32 and out.GetSpacing() == pytest.approx((0.8, 0.8, 3.0))
    assert out.GetOrigin() == pytest.approx((1.0, 2.0, 5.0))
    values = sitk.GetArrayFromImage(out)
    assert values.mean() == pytest.approx(0, abs=1e-4) and values.std() == pytest.approx(1, abs=1e-4)
    assert len(new) == 3
    new, _ = harmonize_table(reference, reference, "resample", tmp_path / "r", options={"spacing": (1.6, 1.6, 1.5)})
    resampled = sitk.ReadImage(str(tmp_path / "r" / "scan0.nii.gz"))
    assert resampled.GetSize() == (8, 8, 8) and resampled.GetSpacing() == pytest.approx((1.6, 1.6, 1.5))
    with pytest.raises(DataError, match="x.mha.*3-D but the image is 2-D"):  # a 3-D spacing for a 2-D image
        harmonize_table(table.subset([3]), reference, "resample", tmp_path / "r2", options={"spacing": (1.6, 1.6, 1.5)})


def test_pngs_without_spacing_cannot_be_resampled_but_manifest_spacing_works(domains, tmp_path):
    reference, _ = domains
    table = load_table(reference)
    with pytest.raises(DataError, match="no spacing"):
        harmonize_table(table, table, "resample", tmp_path / "a")
    manifest = tmp_path / "with_spacing.csv"
    manifest.write_text("path,label,spacing\n" + "".join(
        f"{r.path},{r.labels[0]},0.5x0.5\n" for r in table.records[:3]))
    spaced = load_table(manifest)
    new, harmonizer = harmonize_table(spaced, spaced, "resample", tmp_path / "b", options={"spacing": (1.0, 1.0)})
    assert np.asarray(Image.open(new.records[0].path)).shape == (16, 16)
    assert new.records[0].spacing == (1.0, 1.0) and new.records[0].labels == table.records[0].labels


@pytest.mark.parametrize("case", ["unknown_method", "empty_reference", "wrong_kind", "not_a_harmonizer",
                                  "colour_on_grayscale", "out_is_input"])
def test_cli_user_errors_are_one_line_exit_2(domains, tmp_path, case):
    reference, target = domains
    empty = tmp_path / "empty"
    empty.mkdir()
    zscore = ZScore().fit(_source_images(2)).save(tmp_path / "zscore.json")
    (tmp_path / "report.json").write_text(json.dumps({"covariate": {}}))
    args = {
        "unknown_method": ["--method", "sharpen", "--reference", str(reference)],
        "empty_reference": ["--method", "histmatch", "--reference", str(empty)],
        "wrong_kind": ["--method", "histmatch", "--harmonizer", str(zscore)],
        "not_a_harmonizer": ["--harmonizer", str(tmp_path / "report.json")],
        "colour_on_grayscale": ["--method", "colour", "--reference", str(reference), "--no-measure"],
        "out_is_input": ["--method", "zscore", "--reference", str(reference), "--no-measure"],
    }[case]
    out = reference if case == "out_is_input" else tmp_path / "out"  # reference's PNGs would be overwritten
    before = {p: p.read_bytes() for p in reference.rglob("*.png")}
    result = CliRunner().invoke(app, ["harmonize", str(reference if case == "out_is_input" else target),
                                      "--out", str(out), *args])
    assert before == {p: p.read_bytes() for p in reference.rglob("*.png")}
    assert not (reference / "harmonizer.json").exists()
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0], result.output
    expected = {"unknown_method": "sharpen", "empty_reference": "no images", "wrong_kind": "zscore",
                "not_a_harmonizer": "not a shiftkit harmonizer", "colour_on_grayscale": "RGB",
                "out_is_input": "overwrite the input"}[case]
    assert expected in result.output


# ------------------------------------------------------------------------------------------------------ real data

@pytest.mark.slow
@pytest.mark.skipif(not HAM.is_file(), reason=f"HAM10000 sites not found at {HAM} (set SHIFTKIT_SHARED)")
def test_colour_harmonization_lowers_site_shift_on_ham10000(tmp_path):
    rows = list(csv.DictReader(HAM.open()))
    for site in ("vidir_molemax", "rosendahl"):
        chosen = [r for r in rows if r["site"] == site][:60]
        (tmp_path / f"{site}.csv").write_text("path,label,site\n" + "".join(
            f"{HAM.parent / r['path']},{r['label']},{site}\n" for r in chosen))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "harmonize", str(tmp_path / "vidir_molemax.csv"), "--method", "colour", "--reference",
        str(tmp_path / "rosendahl.csv"), "--out", str(out), "--image-size", "64", "--permutations", "200",
        "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    shift = json.loads((out / "harmonize.json").read_text())["shift"]
    print(f"\nHAM10000 vidir_molemax -> rosendahl, 60 per site, colour: {json.dumps({k: (shift[k]['mmd']['statistic'], shift[k]['domain_classifier']['statistic']) for k in ('before', 'after')})}")
    assert shift["after"]["mmd"]["statistic"] < shift["before"]["mmd"]["statistic"]
    assert shift["after"]["domain_classifier"]["statistic"] < shift["before"]["domain_classifier"]["statistic"]


# ------------------------------------------------------------------------ non-finite and constant inputs (issue 13, 1)

def _with_non_finite(image: np.ndarray, seed: int) -> np.ndarray:
    """A copy with a few NaN, +inf and -inf pixels (what float TIFFs hold outside a field of view)."""
    bad = image.copy()
    flat = bad.reshape(-1)
    spots = np.random.default_rng(seed).choice(flat.size, 6, replace=False)
    flat[spots[:2]], flat[spots[2:4]], flat[spots[4:]] = np.nan, np.inf, -np.inf
    return bad


@pytest.mark.parametrize("method,options", [("histmatch", {}), ("histmatch", {"reference": "pooled"}), ("nyul", {}),
                                            ("zscore", {}), ("zscore", {"clip": (1, 99)}),
                                            ("histmatch", {"foreground": "otsu"})])
def test_non_finite_pixels_are_left_out_of_the_fit_and_kept_in_place(tmp_path, method, options):
    """A few NaN/inf pixels in the reference or the target used to make every output pixel NaN. Now they are left out
    of every statistic and written back unchanged; every other pixel is harmonized as if they were not there
    (within 2 % of the intensity range of the fit without them)."""
    source = [im * s for im, s in zip(_source_images(6), np.linspace(0.7, 1.3, 6))]
    target = np.random.default_rng(3).normal(120.0, 15.0, (32, 32))
    clean = make_harmonizer(method, **options).fit(source)
    fitted = make_harmonizer(method, **options).fit([_with_non_finite(s, i) for i, s in enumerate(source)])
    bad_target = _with_non_finite(target, 99)
    finite = np.isfinite(bad_target)
    out = fitted.transform(bad_target)
    assert np.isfinite(out[finite]).all(), f"{finite.sum() - np.isfinite(out[finite]).sum()} pixels became NaN"
    assert np.array_equal(out[~finite], bad_target[~finite], equal_nan=True)  # left as they were
    span = np.ptp(np.concatenate([s.ravel() for s in source]))
    assert np.abs(out[finite] - clean.transform(target)[finite]).max() / span < 0.02
    saved = json.loads(fitted.save(tmp_path / "h.json").read_text())
    assert "null" not in json.dumps(saved["state"]) and "NaN" not in json.dumps(saved["state"])


@pytest.mark.parametrize("method", ["histmatch", "nyul", "zscore"])
def test_a_reference_of_constant_images_is_refused(method):
    constant = [np.full((16, 16), float(v)) for v in (10, 20, 30)]
    with pytest.raises(DataError, match="constant"):
        make_harmonizer(method).fit(constant)


@pytest.mark.parametrize("method", ["histmatch", "nyul", "zscore"])
def test_an_image_without_a_finite_pixel_is_refused(method):
    source = _source_images(3)
    with pytest.raises(DataError, match="no finite pixel"):
        make_harmonizer(method).fit(source + [np.full((16, 16), np.nan)])
    with pytest.raises(DataError, match="no finite pixel"):
        make_harmonizer(method).fit(source).transform(np.full((16, 16), np.inf))


def _float_tiffs(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image.astype(np.float32), mode="F").save(folder / f"im{i}.tiff")
    return folder


@pytest.mark.parametrize("method", ["histmatch", "nyul", "zscore"])
def test_cli_float_tiffs_with_nan_pixels_give_finite_outputs_and_a_finite_harmonizer(tmp_path, method):
    source = _source_images(4)
    reference = _float_tiffs(tmp_path / "reference", [_with_non_finite(s, i) for i, s in enumerate(source)])
    rng = np.random.default_rng(5)
    target = _float_tiffs(tmp_path / "target", [_with_non_finite(rng.normal(120, 15, (32, 32)), 50 + i)
                                                for i in range(3)])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["harmonize", str(target), "--method", method, "--reference", str(reference),
                                      "--out", str(out), "--no-measure"])
    assert result.exit_code == 0, result.output
    for path in sorted(target.glob("*.tiff")):
        before = np.asarray(Image.open(path), dtype=np.float64)
        after = np.asarray(Image.open(out / path.name), dtype=np.float64)
        finite = np.isfinite(before)
        assert np.isfinite(after[finite]).all() and np.ptp(after[finite]) > 0, path.name
        assert np.array_equal(after[~finite], before[~finite], equal_nan=True)
    state = json.loads((out / "harmonizer.json").read_text())["state"]
    assert "null" not in json.dumps(state) and "NaN" not in json.dumps(state)


def test_cli_a_reference_of_constant_images_is_one_line_exit_2(tmp_path):
    reference = _float_tiffs(tmp_path / "reference", [np.full((16, 16), float(v)) for v in (1, 2, 3)])
    target = _float_tiffs(tmp_path / "target", _source_images(2, size=16))
    result = CliRunner().invoke(app, ["harmonize", str(target), "--method", "zscore", "--reference", str(reference),
                                      "--out", str(tmp_path / "out"), "--no-measure"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "constant" in lines[0] and "Traceback" not in result.output, result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.tiff"))


def test_a_harmonizer_that_would_write_non_finite_or_constant_pixels_is_refused(tmp_path, monkeypatch):
    """The last guard, for every harmonizer kind: outputs are checked before they are written."""
    images = _float_tiffs(tmp_path / "images", _source_images(3, size=16))
    table = load_table(images)
    fitted = ZScore().fit(_source_images(3))
    monkeypatch.setattr(ZScore, "transform", lambda self, image, mask=None: np.full_like(image, np.nan))
    with pytest.raises(DataError, match=r"im0\.tiff.*non-finite"):
        harmonize_table(table, table, "zscore", tmp_path / "a", harmonizer=fitted)
    monkeypatch.setattr(ZScore, "transform", lambda self, image, mask=None: np.full_like(image, 7.0))
    with pytest.raises(DataError, match=r"im0\.tiff.*constant"):
        harmonize_table(table, table, "zscore", tmp_path / "b", harmonizer=fitted)
    assert not list((tmp_path / "a").rglob("*.tiff")) and not list((tmp_path / "b").rglob("*.tiff"))


def test_harmonize_reads_images_through_the_checked_opens(tmp_path, monkeypatch):
    """Odd paths are named for what they are (not 'file not found') and the decoded-size limit of the image
    readers (SHIFTKIT_MAX_IMAGE_GB) holds for harmonize's raw reads too, from the header (issue 13, items 8, 9)."""
    import SimpleITK as sitk

    from shiftkit.data.table import ImageRecord
    from shiftkit.errors import ImageReadError
    from shiftkit.harmonize.apply import read_raw

    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "folder.png").mkdir()
    for path, words in [(Path("/dev/null"), "is a character device, not a file"),
                        (tmp_path / "pipe.png", "is a pipe (FIFO or process substitution), not a file"),
                        (tmp_path / "folder.png", "is a folder, not a file")]:
        with pytest.raises(ImageReadError) as error:
            read_raw(ImageRecord(path, origin="m.csv row 2"))
        assert str(error.value) == f"m.csv row 2: {words} ({path})"
        with pytest.raises(ImageReadError) as error:  # from a folder, the origin is the path: said once
            read_raw(ImageRecord(path, origin=str(path)))
        assert str(error.value) == f"{path}: {words}"
    png = tmp_path / "small.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(png)
    volume = tmp_path / "volume.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((40, 40, 40), np.uint8)), str(volume))
    monkeypatch.setenv("SHIFTKIT_MAX_IMAGE_GB", str(15_000 / 1024**3))  # a 64^2 8-bit PNG needs 20 kB
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", lambda self: pytest.fail("pixels read despite the header"))
    monkeypatch.setattr(sitk, "ReadImage", lambda *a, **k: pytest.fail("pixels read despite the header"))
    with pytest.raises(ImageReadError, match=r"small.png: image is 64x64 pixels, which would take 20 kB to decode, "
                                             r"above the limit of 15 kB per image \(set SHIFTKIT_MAX_IMAGE_GB"):
        read_raw(ImageRecord(png))
    with pytest.raises(ImageReadError, match=r"volume.nii.gz: image is 40x40x40 voxels, which would take 125 kB"):
        read_raw(ImageRecord(volume))
    monkeypatch.setenv("SHIFTKIT_MAX_IMAGE_GB", "lots")  # a mistyped limit is said as such, not "cannot decode"
    with pytest.raises(ConfigError, match="SHIFTKIT_MAX_IMAGE_GB='lots'"):
        read_raw(ImageRecord(png))
    monkeypatch.setenv("SHIFTKIT_MAX_IMAGE_GB", "0")
    assert read_raw(ImageRecord(png)).array.shape == (64, 64, 1)


# ------------------------------------------------------------------------------- --out is never an input (issue 13, 5)

@pytest.mark.parametrize("case", ["out_is_the_reference", "out_holds_the_input_manifest", "out_holds_the_harmonizer",
                                  "out_is_the_input_with_jpegs", "out_inside_the_input", "out_inside_the_reference"])
def test_cli_harmonize_refuses_an_out_that_is_an_input(domains, tmp_path, case):
    import shutil

    reference = shutil.copytree(domains[0], tmp_path / "reference")
    target = shutil.copytree(domains[1], tmp_path / "target")  # holds JPEGs, whose outputs are PNGs
    lists = tmp_path / "lists"
    lists.mkdir()
    manifest = lists / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in sorted(target.rglob("*.*"))))
    saved = ZScore().fit(_source_images(2)).save(tmp_path / "fitted" / "harmonizer.json")
    args = {
        "out_is_the_reference": [str(target), "--out", str(reference), "--method", "zscore",
                                 "--reference", str(reference)],
        "out_holds_the_input_manifest": [str(manifest), "--out", str(lists), "--method", "zscore",
                                         "--reference", str(reference)],
        "out_holds_the_harmonizer": [str(target), "--out", str(saved.parent), "--harmonizer", str(saved)],
        "out_is_the_input_with_jpegs": [str(target), "--out", str(target) + "/.", "--method", "zscore",
                                        "--reference", str(reference)],
        # a folder is read whole: harmonized images inside it would join the input (or reference) next time
        "out_inside_the_input": [str(target), "--out", str(target / "harmonized"), "--method", "zscore",
                                 "--reference", str(reference)],
        "out_inside_the_reference": [str(target), "--out", str(reference / "round" / "harmonized"), "--method", "zscore",
                                     "--reference", str(reference)],
    }[case]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = CliRunner().invoke(app, ["harmonize", *args, "--no-measure"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "choose another --out" in lines[0] and "Traceback" not in result.output, result.output
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".shiftkit.lock"}
    assert after == before  # nothing replaced, nothing added
