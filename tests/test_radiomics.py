"""``shiftkit radiomics``: PyRadiomics features from images and masks (matched against PyRadiomics' own baseline),
failed cases reported by name, serial = parallel, deep ROI features, approximate lesion masks."""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from typer.testing import CliRunner

from shiftkit.cli import app

SHARED = Path(os.environ.get("SHIFTKIT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CASES_DIR = SHARED / "data" / "pyradiomics_cases"
CASES = ("brain1", "brain2", "breast1", "lung1", "lung2")
CLASSES = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm", "shape")
HAS_RADIOMICS = importlib.util.find_spec("radiomics") is not None
needs_radiomics = pytest.mark.skipif(not HAS_RADIOMICS, reason="PyRadiomics not installed (pip install 'shiftkit[radiomics]')")

runner = CliRunner()


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def write_manifest(path: Path, rows: list[dict], columns: tuple[str, ...] = ("path", "mask", "site")) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def textured_case(folder: Path, name: str, seed: int, size: int = 48, box=(10, 34, 8, 40)) -> dict:
    """A grayscale PNG with a random texture and a 0/255 rectangle mask (a case PyRadiomics computes everything on)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 230, size=(size, size)).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    top, bottom, left, right = box
    mask[top:bottom, left:right] = 255
    Image.fromarray(image).save(folder / f"{name}.png")
    Image.fromarray(mask).save(folder / f"{name}_mask.png")
    return {"path": f"{name}.png", "mask": f"{name}_mask.png", "site": f"site{seed % 2}"}


# -- the PyRadiomics baseline ---------------------------------------------------------------------------------------

def baseline(cls: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """{case: {feature: value}} of ``baseline_<cls>.csv`` (one column per case), and each case's settings row."""
    with (CASES_DIR / "baseline" / f"baseline_{cls}.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    header = rows[0]
    values = {case: {row[0]: row[header.index(case)] for row in rows[1:]} for case in CASES}
    return values, {case: values[case]["diagnostics_Configuration_Settings"] for case in CASES}


# Mesh-based shape features (marching cubes). brain1's mask has two separate volumes (its diagnostics say
# VolumeNum 2), and for it PyRadiomics 3.1.4 gives these four up to 0.092% away from the baseline, which was written
# by PyRadiomics 2.0.1b1 (the diagnostics_Versions_PyRadiomics row); every other case matches them to 1e-11.
MESH_FEATURES = {"original_shape_MeshVolume", "original_shape_SurfaceArea", "original_shape_SurfaceVolumeRatio",
                 "original_shape_Sphericity"}
RTOL = 1e-6
MESH_RTOL = 2e-3


@needs_radiomics
@pytest.mark.skipif(not CASES_DIR.is_dir(), reason=f"PyRadiomics test volumes not found at {CASES_DIR} "
                                                    "(set SHIFTKIT_SHARED to the shared folder)")
def test_extraction_matches_the_pyradiomics_baseline_on_its_five_test_volumes(tmp_path):
    """All five cases, all seven 3-D classes (107 features each), through the CLI with 2 processes, against
    PyRadiomics' baseline (baseline_<class>.csv, the column named after the case). The baseline's settings row
    (diagnostics_Configuration_Settings) is the same for every case and class; it becomes the parameter file.

    Tolerance: rtol 1e-6. Not exact because the baseline stores values as decimal text (some with 12 significant
    digits) computed by PyRadiomics 2.x with older NumPy; the differences seen are 1e-16..5e-12 apart from the four
    mesh features of brain1 (MESH_RTOL, see above). PyRadiomics' own test suite accepts 3% (testUtils.checkResult);
    1e-6 still fails on any change of discretisation, mask or settings (one bin-width step moves features by %)."""
    settings = set()
    expected = {}
    for cls in CLASSES:
        values, rows = baseline(cls)
        settings.update(rows.values())
        for case in CASES:
            expected.setdefault(case, {}).update({k: float(v) for k, v in values[case].items()
                                                  if k.startswith("original_")})
    assert len(settings) == 1, "the baseline's cases were extracted with different settings"
    setting = {k: v for k, v in ast.literal_eval(settings.pop()).items() if v is not None}
    assert setting["binWidth"] == 25 and setting["label"] == 1 and setting["voxelArrayShift"] == 2000
    params = tmp_path / "baseline_params.json"
    params.write_text(json.dumps({"imageType": {"Original": {}}, "featureClass": {c: None for c in CLASSES},
                                  "setting": setting}))
    manifest = write_manifest(tmp_path / "cases.csv", [
        {"path": str(CASES_DIR / f"{case}_image.nrrd"), "mask": str(CASES_DIR / f"{case}_label.nrrd"),
         "site": case.rstrip("12")} for case in CASES])
    out = tmp_path / "features.csv"
    result = runner.invoke(app, ["radiomics", "extract", str(manifest), "--out", str(out), "--params", str(params),
                                 "--workers", "2"])
    assert result.exit_code == 0, result.output
    _, rows = read_table(out)
    assert [r["site"] for r in rows] == ["brain", "brain", "breast", "lung", "lung"]
    worst = {}
    for case, row in zip(CASES, rows):
        assert len(expected[case]) == 107
        for name, value in expected[case].items():
            got = float(row[name])
            tolerance = MESH_RTOL if name in MESH_FEATURES else RTOL
            assert got == pytest.approx(value, rel=tolerance, abs=1e-12), (case, name, got, value)
            worst[name] = max(worst.get(name, 0.0), abs(got - value) / max(abs(value), 1e-12))
    assert max(v for k, v in worst.items() if k not in MESH_FEATURES) < 1e-9  # in fact: all but the mesh are ~exact


# -- known answers on synthetic 2-D cases ---------------------------------------------------------------------------

@needs_radiomics
def test_2d_known_answers_constant_roi_area_and_rgb_luminance(tmp_path):
    """A constant region's firstorder Mean is the constant (and its Variance 0); shape2D's PixelSurface is the
    pixel count x spacing²; an RGB PNG is extracted on its BT.601 luminance; --spacing keeps both."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, size=(40, 50)).astype(np.uint8)
    gray[8:32, 8:42] = 100  # the constant region, two pixels wider than the mask on each side
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 10:40] = 1  # 20 x 30 = 600 pixels
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[...] = (200, 100, 50)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    volume = sitk.GetImageFromArray(gray.astype(np.int16))
    volume.SetSpacing((0.5, 0.5))
    sitk.WriteImage(volume, str(tmp_path / "gray.nrrd"))
    label = sitk.GetImageFromArray(mask)
    label.CopyInformation(volume)
    sitk.WriteImage(label, str(tmp_path / "mask.nrrd"))
    manifest = write_manifest(tmp_path / "m.csv", [
        {"path": "gray.png", "mask": "mask.png", "site": "a"},
        {"path": "rgb.png", "mask": "mask.png", "site": "a"},
        {"path": "gray.nrrd", "mask": "mask.nrrd", "site": "b"}])
    out = tmp_path / "f.csv"
    result = runner.invoke(app, ["radiomics", "extract", str(manifest), "--out", str(out), "--workers", "1",
                                 "--bin-width", "5"])
    assert result.exit_code == 0, result.output
    header, rows = read_table(out)
    assert header[:4] == ["case_id", "path", "mask", "site"] and len(header) == 4 + 101
    png, colour, nrrd = rows
    assert float(png["original_firstorder_Mean"]) == 100.0
    assert float(png["original_firstorder_Variance"]) == 0.0
    assert float(png["original_shape2D_PixelSurface"]) == 600.0
    assert float(colour["original_firstorder_Mean"]) == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50, rel=1e-6)
    assert float(nrrd["original_shape2D_PixelSurface"]) == pytest.approx(600 * 0.25, rel=1e-12)
    assert float(nrrd["original_firstorder_Mean"]) == 100.0
    # resampled to half the spacing (nearest-neighbour mask, linear image): same area in mm², same constant
    again = tmp_path / "resampled.csv"
    result = runner.invoke(app, ["radiomics", "extract", str(manifest), "--out", str(again), "--workers", "1",
                                 "--bin-width", "5", "--spacing", "0.25,0.25"])
    assert result.exit_code == 0, result.output
    _, resampled = read_table(again)
    assert float(resampled[2]["original_shape2D_PixelSurface"]) == pytest.approx(150.0, rel=1e-9)
    assert float(resampled[2]["original_firstorder_Mean"]) == pytest.approx(100.0, rel=1e-6)
    assert float(resampled[0]["original_shape2D_PixelSurface"]) == pytest.approx(600.0, rel=1e-9)
    summary = json.loads((tmp_path / "resampled.json").read_text())
    assert summary["radiomics"]["spacing"] == [0.25, 0.25] and summary["radiomics"]["dimensions"] == [2]


# -- bad cases ------------------------------------------------------------------------------------------------------

@needs_radiomics
def test_bad_cases_are_reported_by_name_and_the_others_kept(tmp_path):
    good = [textured_case(tmp_path, f"good{i}", i) for i in range(2)]
    textured_case(tmp_path, "other", 5)
    empty = np.zeros((48, 48), np.uint8)
    Image.fromarray(empty).save(tmp_path / "empty_mask.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "small_mask.png")
    two = np.zeros((48, 48), np.uint8)
    two[10:20, 10:20], two[30:40, 30:40] = 2, 3
    Image.fromarray(two).save(tmp_path / "two_labels.png")
    rows = good + [
        {"case_id": "empty", "path": "other.png", "mask": "empty_mask.png", "site": "site0"},
        {"case_id": "geometry", "path": "other.png", "mask": "small_mask.png", "site": "site1"},
        {"case_id": "absent", "path": "other.png", "mask": "other_mask.png", "site": "site0", "mask_label": "3"},
        {"case_id": "missing", "path": "nowhere.png", "mask": "other_mask.png", "site": "site1"},
        {"case_id": "ambiguous", "path": "other.png", "mask": "two_labels.png", "site": "site1"},
    ]
    for row in good:
        row["case_id"] = row["path"]
    manifest = write_manifest(tmp_path / "m.csv", rows, ("case_id", "path", "mask", "site", "mask_label"))
    out = tmp_path / "f.csv"
    result = runner.invoke(app, ["radiomics", "extract", str(manifest), "--out", str(out), "--workers", "2"])
    assert result.exit_code == 0, result.output
    _, kept = read_table(out)
    assert [r["case_id"] for r in kept] == ["good0.png", "good1.png"]
    _, failures = read_table(tmp_path / "f.failures.csv")
    reasons = {f["case_id"]: f["reason"] for f in failures}
    assert set(reasons) == {"empty", "geometry", "absent", "missing", "ambiguous"}
    assert "the mask is empty" in reasons["empty"]
    assert "mask geometry does not match the image" in reasons["geometry"] and "32x32" in reasons["geometry"]
    assert "no voxel with label 3 (mask_label column)" in reasons["absent"] and "labels present: 255" in reasons["absent"]
    assert "file not found" in reasons["missing"]
    assert "several labels (2, 3)" in reasons["ambiguous"]
    assert "5 of 7 case(s) failed" in result.output
    for name in reasons:  # one line each, by name
        assert sum(line.strip().startswith(f"{name}:") for line in result.output.splitlines()) == 1
    summary = json.loads((tmp_path / "f.json").read_text())
    assert summary["n_extracted"] == 2 and summary["n_failed"] == 5

    # every case failing is a user error: one line, exit code 2, the failures still listed
    only_bad = write_manifest(tmp_path / "bad.csv", rows[2:], ("case_id", "path", "mask", "site", "mask_label"))
    (tmp_path / "g.csv").write_text("an older run's table\n")  # removed: it is not this run's result
    line = error_line(runner.invoke(app, ["radiomics", "extract", str(only_bad), "--out", str(tmp_path / "g.csv"),
                                          "--workers", "1"]))
    assert "none of the 5 cases could be extracted" in line and not (tmp_path / "g.csv").exists()
    assert len(read_table(tmp_path / "g.failures.csv")[1]) == 5


@needs_radiomics
def test_manifest_and_option_mistakes_are_one_line(tmp_path):
    row = textured_case(tmp_path, "a", 0)
    no_mask = write_manifest(tmp_path / "nomask.csv", [row], ("path", "site"))
    assert "needs columns path, mask and site; missing mask" in error_line(
        runner.invoke(app, ["radiomics", "extract", str(no_mask), "--out", str(tmp_path / "f.csv")]))
    twice = write_manifest(tmp_path / "twice.csv", [row, row])
    assert "row 3: duplicate image and mask 'a.png|a_mask.png' (also row 2)" in error_line(
        runner.invoke(app, ["radiomics", "extract", str(twice), "--out", str(tmp_path / "f.csv")]))
    good = write_manifest(tmp_path / "good.csv", [row])
    bad_params = tmp_path / "bad.yaml"
    bad_params.write_text("setting:\n  binWidthh: 5\n")
    assert "not a valid PyRadiomics parameter file" in error_line(runner.invoke(
        app, ["radiomics", "extract", str(good), "--out", str(tmp_path / "f.csv"), "--params", str(bad_params)]))
    assert "--filters 'sobel' is not a filter" in error_line(runner.invoke(
        app, ["radiomics", "extract", str(good), "--out", str(tmp_path / "f.csv"), "--filters", "log,sobel"]))
    assert "would overwrite the manifest" in error_line(runner.invoke(
        app, ["radiomics", "extract", str(good), "--out", str(good)]))
    assert (tmp_path / "good.csv").read_text().startswith("path,mask,site")


def test_missing_pyradiomics_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "radiomics", None)  # "import radiomics" now raises ImportError
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "a.png", "mask": "b.png", "site": "x"}])
    line = error_line(runner.invoke(app, ["radiomics", "extract", str(manifest), "--out", str(tmp_path / "f.csv")]))
    assert "PyRadiomics is not installed" in line and "pip install 'shiftkit[radiomics]'" in line


# -- parallel = serial ----------------------------------------------------------------------------------------------

@needs_radiomics
def test_parallel_and_serial_extractions_write_identical_tables(tmp_path):
    rows = [textured_case(tmp_path, f"c{i}", i) for i in range(6)]
    for i, row in enumerate(rows):
        row["label"], row["age"] = ("mel", "nv")[i % 2], str(40 + i)
    manifest = write_manifest(tmp_path / "m.csv", rows, ("path", "mask", "site", "label", "age"))
    outputs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.csv"
        result = runner.invoke(app, ["radiomics", "extract", str(manifest), "--out", str(out), "--workers", workers,
                                     "--filters", "log"])
        assert result.exit_code == 0, result.output
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    header, table = read_table(tmp_path / "w2.csv")
    assert header[:6] == ["case_id", "path", "mask", "site", "label", "age"]
    assert any(h.startswith("log-sigma-1-0-mm-") and "_glcm_" in h for h in header)
    assert len({r["original_firstorder_Mean"] for r in table}) == 6  # different textures, different features
    summary = json.loads((tmp_path / "w2.json").read_text())
    assert summary["workers"] == 2 and summary["radiomics"]["bin_width"].startswith("binWidth 5")


# -- deep ROI features ----------------------------------------------------------------------------------------------

def test_roi_crop_and_largest_slice_known_answers():
    from shiftkit.radiomics.deep import largest_slice, roi_crop

    image = np.arange(100 * 120, dtype=np.float32).reshape(100, 120)
    mask = np.zeros((100, 120), bool)
    mask[40:60, 50:60] = True  # 20 x 10 box centred at (50, 55)
    crop = roi_crop(image, mask, margin=0.1)
    assert crop.shape == (24, 24)  # ceil(20 x 1.2)
    assert crop[12, 12] == image[50, 55]  # centred on the box
    corner = np.zeros((100, 120), bool)
    corner[0:10, 0:10] = True
    edge = roi_crop(image, corner, margin=0.5)  # leaves the image: edge pixels extend it
    assert edge.shape == (20, 20) and edge[0, 0] == image[0, 0]
    volume = np.zeros((5, 30, 30), bool)
    volume[1, 5:10, 5:10], volume[3, 5:20, 5:20], volume[4, 0:3, 0:3] = True, True, True
    assert largest_slice(volume) == 3


def test_deep_crop_of_a_volume_comes_from_its_largest_axial_slice(tmp_path):
    from shiftkit.radiomics.deep import DeepOptions, case_crop
    from shiftkit.radiomics.extract import ExtractionSettings
    from shiftkit.radiomics.manifest import Case
    from shiftkit.radiomics.params import RadiomicsParams

    z, y, x = np.mgrid[:5, :32, :32]
    volume = sitk.GetImageFromArray((100 * z + x).astype(np.int16))  # each slice its own values
    volume.SetSpacing((0.8, 0.8, 2.5))
    label = np.zeros((5, 32, 32), np.uint8)
    label[1, 2:6, 2:6] = 1  # 16 voxels
    label[3, 10:20, 5:15] = 1  # 100 voxels: the largest slice
    mask = sitk.GetImageFromArray(label)
    mask.CopyInformation(volume)
    sitk.WriteImage(volume, str(tmp_path / "v.nrrd"))
    sitk.WriteImage(mask, str(tmp_path / "v_label.nrrd"))
    case = Case("v", tmp_path / "v.nrrd", tmp_path / "v_label.nrrd", "v.nrrd", "v_label.nrrd", "a")
    settings = ExtractionSettings(RadiomicsParams({}, "test", "", None))
    crop = case_crop(case, settings, DeepOptions(arch="resnet18", window=(0.0, 1000.0)))
    assert crop.shape == (12, 12)  # ceil(10 x 1.2), square
    assert crop[6, 6] == pytest.approx((300 + 10) / 1000)  # slice 3, column 10 (the box's centre), windowed


@needs_radiomics
def test_deep_features_have_the_embedding_width_and_are_deterministic(tmp_path):
    from shiftkit.radiomics.deep import DeepOptions, build_deep_model, deep_features
    from shiftkit.radiomics.run import ExtractRequest, run_extraction

    rows = [textured_case(tmp_path, f"d{i}", 10 + i) for i in range(3)]
    rows.append({**rows[0], "case_id": "copy of d0"})
    for row in rows:
        row.setdefault("case_id", row["path"])
    manifest = write_manifest(tmp_path / "m.csv", rows, ("case_id", "path", "mask", "site"))
    options = DeepOptions(arch="efficientnet_lite0", image_size=64, device="cpu")
    extraction = run_extraction(ExtractRequest(manifest, workers=1, deep=options))
    header, table = extraction.table.header, extraction.table.rows
    deep = [j for j, h in enumerate(header) if h.startswith("deep_")]
    assert [header[j] for j in deep] == [f"deep_{j}" for j in range(1280)]  # EfficientNet-Lite0's penultimate width
    assert header[deep[0] - 1].startswith("original_")  # after the PyRadiomics features
    matrix = np.array([[float(row[j]) for j in deep] for row in table])
    again, names, failures, info = deep_features(extraction.manifest.cases, extraction.results, extraction.settings,
                                                 options, build_deep_model(options))
    assert not failures and names == [header[j] for j in deep] and info["embedding_dimension"] == 1280
    assert np.array_equal(matrix, again)  # deterministic: a second pass gives the same numbers, bit for bit
    assert np.array_equal(matrix[0], matrix[3])  # the same crop in another row of the batch: the same features
    assert not np.allclose(matrix[0], matrix[1])  # another lesion: other features
    assert np.isfinite(matrix).all() and matrix.std() > 0

    reduced = tmp_path / "pca.csv"
    result = runner.invoke(app, ["radiomics", "extract", str(manifest), "--out", str(reduced), "--workers", "1",
                                 "--deep", "efficientnet_lite0", "--deep-image-size", "64", "--deep-pca", "2",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    header, _ = read_table(reduced)
    assert [h for h in header if h.startswith("deep_")] == ["deep_0", "deep_1"]
    summary = json.loads((tmp_path / "pca.json").read_text())
    assert summary["n_deep_features"] == 2 and summary["deep"]["pca"]["components"] == 2
    assert "unknown architecture" in error_line(runner.invoke(
        app, ["radiomics", "extract", str(manifest), "--out", str(tmp_path / "x.csv"), "--deep", "alexnet"]))


# -- approximate lesion masks ---------------------------------------------------------------------------------------

def skin(size: int = 96, centre=(50, 44), axes=(18, 26), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Light skin with noise, dark vignetting corners and a dark elliptical lesion (RGB), and the lesion's mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    lesion = ((yy - centre[0]) / axes[0]) ** 2 + ((xx - centre[1]) / axes[1]) ** 2 <= 1
    radius = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    base = np.where(radius > 1.25, 40.0, 210.0)  # the lens' dark corners
    base = np.where(lesion, 90.0, base) + rng.normal(0, 8, (size, size))
    rgb = np.stack([base, base * 0.8, base * 0.7], axis=-1).clip(0, 255).astype(np.uint8)
    return rgb, lesion


def test_segmentation_finds_a_planted_dark_lesion_not_the_dark_corners():
    from shiftkit.radiomics.segment import segment_lesion

    rgb, truth = skin()
    found = segment_lesion(rgb)
    iou = (found.mask & truth).sum() / (found.mask | truth).sum()
    assert iou > 0.9, iou
    assert found.components >= 2  # the corners were dark too, and were not chosen
    assert not found.touches_border and found.warning is None


@needs_radiomics
def test_masks_command_writes_a_manifest_that_extract_reads(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows, areas = [], []
    for i in range(4):
        rgb, truth = skin(centre=(48 + i, 46 - i), axes=(14 + 2 * i, 20), seed=i)
        Image.fromarray(rgb).save(images / f"ISIC_{i}.jpg", quality=95)
        rows.append({"path": f"images/ISIC_{i}.jpg", "site": f"s{i % 2}", "label": ("mel", "nv")[i % 2], "age": 50})
        areas.append(truth.sum())
    Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(images / "blank.png")
    rows.append({"path": "images/blank.png", "site": "s0", "label": "nv", "age": 1})
    metadata = write_manifest(tmp_path / "metadata.csv", rows, ("path", "label", "site", "age"))
    out = tmp_path / "lesions"
    result = runner.invoke(app, ["radiomics", "masks", str(metadata), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "images/blank.png: the image is uniform" in result.output
    header, manifest_rows = read_table(out / "manifest.csv")
    assert header == ["path", "mask", "site", "label"] and len(manifest_rows) == 4
    mask = np.asarray(Image.open(out / manifest_rows[0]["mask"]))
    assert set(np.unique(mask)) == {0, 255}
    summary = json.loads((out / "masks.json").read_text())
    assert summary["n_masks"] == 4 and summary["n_failed"] == 1 and "approximate" in summary["method"]
    features = tmp_path / "features.csv"
    result = runner.invoke(app, ["radiomics", "extract", str(out / "manifest.csv"), "--out", str(features),
                                 "--workers", "1"])
    assert result.exit_code == 0, result.output
    _, extracted = read_table(features)
    assert [r["label"] for r in extracted] == ["mel", "nv", "mel", "nv"]
    for row, area in zip(extracted, areas):  # the automatic mask's area is the planted lesion's, within 10%
        assert math.isclose(float(row["original_shape2D_PixelSurface"]), area, rel_tol=0.1)
