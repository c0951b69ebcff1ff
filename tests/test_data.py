"""Tests for the data layer: tables, readers, preprocessing, caching and splitting.

Every image is written into a temporary folder by the test itself (PIL or SimpleITK); nothing is downloaded.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from shiftkit.data import (
    ImageCache,
    ImageDataset,
    ImageRecord,
    ImageTable,
    Preprocessing,
    ReadOptions,
    load_table,
    read_image,
    stratified_split,
)
from shiftkit.errors import DataError, ImageReadError

# --------------------------------------------------------------------------------------------------------------
# helpers


def _gray(seed: int = 0, shape: tuple[int, int] = (12, 10)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _png(path: Path, array: np.ndarray | None = None, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_gray(seed) if array is None else array).save(path)
    return path


def _csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _window(x: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((x.astype(np.float64) - low) / (high - low), 0.0, 1.0)


def _percentile_window(x: np.ndarray) -> np.ndarray:
    low, high = np.percentile(x.astype(np.float32), (0.5, 99.5))
    return _window(x, low, high)


# --------------------------------------------------------------------------------------------------------------
# load_table: (a) class folders


def test_class_folders_sorted_classes_and_labels(tmp_path):
    # created in non-sorted order; a stray text file must be ignored
    for name, count in (("zeta", 2), ("alpha", 3), ("mid", 1)):
        for i in range(count):
            _png(tmp_path / name / f"{name}_{i}.png", seed=i)
    (tmp_path / "alpha" / "notes.txt").write_text("not an image")

    table = load_table(tmp_path)

    assert table.classes == ("alpha", "mid", "zeta")
    assert table.labeled
    assert not table.multilabel
    assert table.task == "multiclass"
    assert len(table) == 6
    targets = table.targets()
    assert targets.dtype == np.int64
    for record, target in zip(table.records, targets):
        assert record.labels == (record.path.parent.name,)
        assert table.classes[target] == record.path.parent.name
    assert table.class_counts() == {"alpha": 3, "mid": 1, "zeta": 2}


def test_class_folders_two_classes_is_binary(tmp_path):
    _png(tmp_path / "neg" / "a.png")
    _png(tmp_path / "pos" / "b.png")
    table = load_table(tmp_path)
    assert table.task == "binary"
    assert list(table.targets()) == [0, 1]


def test_class_folders_empty_class_is_an_error_naming_it(tmp_path):
    _png(tmp_path / "benign" / "a.png")
    (tmp_path / "malignant").mkdir()
    with pytest.raises(DataError, match="malignant"):
        load_table(tmp_path)


def test_class_folder_with_only_non_images_is_an_error(tmp_path):
    _png(tmp_path / "benign" / "a.png")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="other"):
        load_table(tmp_path)


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DataError):
        load_table(tmp_path / "nope")


# --------------------------------------------------------------------------------------------------------------
# load_table: (b) flat folder


def test_flat_folder_is_unlabeled(tmp_path):
    for i in range(3):
        _png(tmp_path / f"img_{i}.png", seed=i)
    (tmp_path / "list.txt").write_text("x")

    table = load_table(tmp_path)

    assert len(table) == 3
    assert table.labeled is False
    assert table.classes == ()
    assert all(r.labels == () for r in table.records)
    assert sorted(r.path.name for r in table.records) == ["img_0.png", "img_1.png", "img_2.png"]
    with pytest.raises(DataError):
        table.targets()


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError):
        load_table(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# load_table: (c) CSV manifests


def test_manifest_relative_and_absolute_paths(tmp_path, monkeypatch):
    data = tmp_path / "data"
    rel = _png(data / "img" / "x.png")
    elsewhere = _png(tmp_path / "other" / "y.png", seed=1)
    manifest = _csv(data / "manifest.csv", f"path,label\nimg/x.png,cat\n{elsewhere},dog\n")
    # the working directory is NOT the CSV's folder, so resolving against the cwd would be wrong
    monkeypatch.chdir(tmp_path)

    table = load_table(manifest)

    assert [r.path for r in table.records] == [rel.resolve(), elsewhere.resolve()]
    assert all(r.path.is_file() for r in table.records)
    assert table.classes == ("cat", "dog")
    assert list(table.targets()) == [0, 1]
    assert table.task == "binary"
    assert not table.multilabel


def test_manifest_multilabel_multi_hot_targets(tmp_path):
    manifest = _csv(tmp_path / "m.csv", "path,label\na.png,pneumonia|effusion\nb.png,effusion\nc.png,nodule|pneumonia\n")
    table = load_table(manifest)
    assert table.multilabel is True
    assert table.task == "multilabel"
    assert table.classes == ("effusion", "nodule", "pneumonia")
    expected = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 1]], dtype=np.float32)
    targets = table.targets()
    assert targets.shape == (3, 3)
    np.testing.assert_array_equal(targets, expected)
    assert table.class_counts() == {"effusion": 2, "nodule": 1, "pneumonia": 2}


def test_manifest_site_and_spacing_columns(tmp_path):
    manifest = _csv(
        tmp_path / "m.csv",
        "path,label,site,spacing\n"
        "a.png,x,hospital_a,\"0.5,0.5\"\n"
        "b.png,y,hospital_b,0.7x0.8\n"
        "c.png,x,,1.25\n"
        "d.png,y,hospital_a,\n",
    )
    records = load_table(manifest).records
    assert [r.site for r in records] == ["hospital_a", "hospital_b", None, "hospital_a"]
    assert records[0].spacing == (0.5, 0.5)
    assert records[1].spacing == (0.7, 0.8)
    assert records[2].spacing == (1.25,)
    assert records[3].spacing is None


def test_manifest_without_label_column_is_unlabeled(tmp_path):
    manifest = _csv(tmp_path / "m.csv", "path\na.png\nb.png\n")
    table = load_table(manifest)
    assert len(table) == 2
    assert table.labeled is False


def test_manifest_missing_path_column(tmp_path):
    manifest = _csv(tmp_path / "m.csv", "file,label\na.png,x\n")
    with pytest.raises(DataError, match="path"):
        load_table(manifest)


def test_manifest_duplicate_path_names_the_row(tmp_path):
    manifest = _csv(tmp_path / "m.csv", "path,label\na.png,x\nb.png,y\na.png,y\n")
    with pytest.raises(DataError, match="row 4") as excinfo:
        load_table(manifest)
    assert "a.png" in str(excinfo.value)


def test_manifest_duplicate_via_relative_and_absolute_path(tmp_path):
    image = _png(tmp_path / "a.png")
    manifest = _csv(tmp_path / "m.csv", f"path,label\na.png,x\n{image},y\n")
    with pytest.raises(DataError, match="row 3"):
        load_table(manifest)


def test_manifest_empty_label_in_labelled_manifest(tmp_path):
    manifest = _csv(tmp_path / "m.csv", "path,label\na.png,x\nb.png,\nc.png,y\n")
    with pytest.raises(DataError, match="row 3"):
        load_table(manifest)


@pytest.mark.parametrize("spacing", ["abc", "-1", "0", "0.5,-0.5", "nan"])
def test_manifest_bad_spacing(tmp_path, spacing):
    manifest = _csv(tmp_path / "m.csv", f"path,label,spacing\na.png,x,1.0\nb.png,y,\"{spacing}\"\n")
    with pytest.raises(DataError, match="row 3"):
        load_table(manifest)


def test_manifest_with_no_rows_is_an_error(tmp_path):
    with pytest.raises(DataError):
        load_table(_csv(tmp_path / "m.csv", "path,label\n"))


def test_non_csv_file_is_an_error(tmp_path):
    with pytest.raises(DataError):
        load_table(_png(tmp_path / "a.png"))


# --------------------------------------------------------------------------------------------------------------
# ImageTable.with_classes


def _table(labels: list[str]) -> ImageTable:
    records = tuple(
        ImageRecord(path=Path(f"/x/{i}.png"), labels=(label,), origin=f"m.csv row {i + 2}") for i, label in enumerate(labels)
    )
    return ImageTable(records=records, classes=tuple(sorted(set(labels))), source="m.csv")


def test_with_classes_refuses_unknown_label():
    table = _table(["a", "b", "zebra"])
    with pytest.raises(DataError, match="zebra") as excinfo:
        table.with_classes(("a", "b"))
    assert "row 4" in str(excinfo.value)


def test_with_classes_adopts_vocabulary_and_order():
    table = _table(["a", "b", "a"])
    adopted = table.with_classes(("c", "b", "a"))
    assert adopted.classes == ("c", "b", "a")
    assert list(adopted.targets()) == [2, 1, 2]
    with pytest.raises(DataError, match="'c'"):
        adopted.require_all_classes()


# --------------------------------------------------------------------------------------------------------------
# read_image: PIL formats


def test_read_8bit_grayscale_png_divides_by_255(tmp_path):
    array = _gray(3, (9, 13))
    out = read_image(_png(tmp_path / "g.png", array))
    assert out.dtype == np.float32
    assert out.shape == (9, 13)
    np.testing.assert_array_equal(out, array.astype(np.float32) / 255.0)


def test_read_rgb_jpeg_shape(tmp_path):
    array = np.zeros((20, 30, 3), dtype=np.uint8)
    array[...] = (200, 40, 120)
    path = tmp_path / "c.jpg"
    Image.fromarray(array).save(path, quality=95)
    out = read_image(path)
    assert out.shape == (20, 30, 3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(0, 1)), np.array([200, 40, 120]) / 255.0, atol=4 / 255)


def test_read_rgba_png_drops_alpha(tmp_path):
    array = np.zeros((6, 7, 4), dtype=np.uint8)
    array[...] = (10, 20, 30, 128)
    path = tmp_path / "rgba.png"
    Image.fromarray(array, mode="RGBA").save(path)
    out = read_image(path)
    assert out.shape == (6, 7, 3)
    np.testing.assert_array_equal(out[0, 0], np.array([10, 20, 30], dtype=np.float32) / 255.0)


def _u16(seed: int = 0, shape: tuple[int, int] = (40, 50)) -> np.ndarray:
    return np.random.default_rng(seed).integers(100, 60000, shape).astype(np.uint16)


def test_read_16bit_png_percentile_window(tmp_path):
    array = _u16()
    path = tmp_path / "u16.png"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    out = read_image(path)
    assert out.shape == array.shape
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out, _percentile_window(array), atol=1e-6)
    # 0.5 % at each end are clipped, not more
    n = array.size
    assert 0 < (out == 0).sum() <= 0.01 * n
    assert 0 < (out == 1).sum() <= 0.01 * n


def test_read_16bit_png_explicit_window(tmp_path):
    array = _u16(1)
    path = tmp_path / "u16.png"
    Image.fromarray(array).save(path)
    low, high = 10000.0, 30000.0
    out = read_image(path, ReadOptions(window=(low, high)))
    np.testing.assert_allclose(out, _window(array, low, high), rtol=1e-6, atol=1e-7)
    assert (out[array <= low] == 0).all() and (out[array >= high] == 1).all()


def test_read_tiff_8bit_and_float(tmp_path):
    array = _gray(4, (8, 9))
    path8 = tmp_path / "g.tif"
    Image.fromarray(array).save(path8)
    np.testing.assert_array_equal(read_image(path8), array.astype(np.float32) / 255.0)

    floats = np.random.default_rng(5).normal(0, 100, (16, 12)).astype(np.float32)
    path_f = tmp_path / "f.tiff"
    Image.fromarray(floats, mode="F").save(path_f)
    out = read_image(path_f, ReadOptions(window=(-50.0, 50.0)))
    np.testing.assert_allclose(out, _window(floats, -50.0, 50.0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image_raises_naming_the_path(tmp_path, suffix):
    array = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / f"full{suffix}"
    Image.fromarray(array).save(full)
    data = full.read_bytes()
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as excinfo:
        read_image(broken)
    assert str(broken) in str(excinfo.value)


def test_text_file_renamed_png_raises_naming_the_path(tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image\n")
    with pytest.raises(ImageReadError) as excinfo:
        read_image(fake)
    assert str(fake) in str(excinfo.value)


def test_missing_file_raises(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(ImageReadError) as excinfo:
        read_image(missing)
    assert str(missing) in str(excinfo.value)


def test_unsupported_suffix_raises(tmp_path):
    other = tmp_path / "a.gifx"
    other.write_bytes(b"\x00")
    with pytest.raises(ImageReadError):
        read_image(other)


# --------------------------------------------------------------------------------------------------------------
# read_image: SimpleITK formats


def _volume(depth: int = 5) -> np.ndarray:
    # slice k holds 100*k + a 0..59 in-plane ramp, so every slice is distinguishable
    ramp = np.arange(6 * 10, dtype=np.float32).reshape(6, 10)
    return np.stack([100.0 * k + ramp for k in range(depth)]).astype(np.float32)


def test_nifti_volume_middle_slice_and_slice_index(tmp_path):
    volume = _volume(5)
    path = tmp_path / "vol.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(path))
    window = ReadOptions(window=(0.0, 1000.0))

    middle = read_image(path, window)
    assert middle.shape == (6, 10)
    np.testing.assert_allclose(middle, volume[2] / 1000.0, rtol=1e-6)

    for k in (0, 4):
        out = read_image(path, ReadOptions(window=(0.0, 1000.0), slice_index=k))
        np.testing.assert_allclose(out, volume[k] / 1000.0, rtol=1e-6)


@pytest.mark.parametrize("index", [5, 17, -1])
def test_nifti_slice_out_of_range(tmp_path, index):
    path = tmp_path / "vol.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(_volume(5)), str(path))
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path, ReadOptions(slice_index=index))
    assert str(path) in str(excinfo.value)


def test_mha_2d(tmp_path):
    array = np.random.default_rng(7).normal(0, 300, (14, 11)).astype(np.float32)
    path = tmp_path / "img.mha"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    out = read_image(path, ReadOptions(window=(-400.0, 200.0)))
    assert out.shape == (14, 11)
    np.testing.assert_allclose(out, _window(array, -400.0, 200.0), rtol=1e-6, atol=1e-6)


def test_nrrd_2d_percentile_window(tmp_path):
    array = _u16(8, (15, 17))
    path = tmp_path / "img.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    out = read_image(path)
    assert out.shape == (15, 17)
    np.testing.assert_allclose(out, _percentile_window(array), atol=1e-6)


def test_mha_rgb_uint8(tmp_path):
    array = np.random.default_rng(9).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=True), str(path))
    out = read_image(path)
    assert out.shape == (5, 6, 3)
    np.testing.assert_array_equal(out, array.astype(np.float32) / 255.0)


def _dicom_ramp() -> np.ndarray:
    return (np.arange(12 * 16, dtype=np.int32).reshape(12, 16) * 10 - 500).astype(np.int16)  # -500 .. 1410


def _write_dicom(path: Path, array: np.ndarray, photometric: str = "MONOCHROME2") -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    if photometric != "MONOCHROME2":
        # GDCM's writer always emits MONOCHROME2 (a SetMetaData("0028|0004", ...) is overwritten), so the tag is
        # patched in the file; both values have the same length, keeping the DICOM element lengths valid.
        data = path.read_bytes()
        assert data.count(b"MONOCHROME2") == 1
        path.write_bytes(data.replace(b"MONOCHROME2", photometric.encode()))
    return path


def test_dicom_int16_windowed(tmp_path):
    array = _dicom_ramp()
    path = _write_dicom(tmp_path / "ct.dcm", array)
    out = read_image(path, ReadOptions(window=(-200.0, 800.0)))
    assert out.shape == (12, 16)
    np.testing.assert_allclose(out, _window(array, -200.0, 800.0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(read_image(path), _percentile_window(array), atol=1e-6)


def test_dicom_monochrome1_tag_is_really_in_the_file(tmp_path):
    path = _write_dicom(tmp_path / "m1.dcm", _dicom_ramp(), "MONOCHROME1")
    image = sitk.ReadImage(str(path))
    assert image.GetMetaData("0028|0004").strip() == "MONOCHROME1"


def test_dicom_monochrome1_has_inverted_polarity(tmp_path):
    array = _dicom_ramp()  # same stored pixels in both files, only the photometric interpretation differs
    mono2 = read_image(_write_dicom(tmp_path / "m2.dcm", array, "MONOCHROME2"))
    mono1 = read_image(_write_dicom(tmp_path / "m1.dcm", array, "MONOCHROME1"))
    # MONOCHROME2: the lowest stored value is black; MONOCHROME1: the lowest stored value is white
    assert mono2[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert mono1[0, 0] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Preprocessing


@pytest.mark.parametrize(
    "arch, resize, crop",
    [("resnet50", 232, 224), ("densenet121", 256, 224), ("vgg19", 256, 224), ("resnet18", 256, 224)],
)
def test_for_arch_paper_sizes(arch, resize, crop):
    pre = Preprocessing.for_arch(arch)
    assert (pre.resize, pre.crop) == (resize, crop)
    assert pre.mean == (0.485, 0.456, 0.406)
    assert pre.std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("arch, resize", [("resnet50", 66), ("densenet121", 73), ("vgg19", 73)])
def test_for_arch_scaled_sizes(arch, resize):
    pre = Preprocessing.for_arch(arch, image_size=64)
    # 64 * 232 / 224 = 66.29 -> 66 ; 64 * 256 / 224 = 73.14 -> 73
    assert (pre.resize, pre.crop) == (resize, 64)


def test_for_arch_efficientnet_lite_uses_tf_normalisation():
    pre = Preprocessing.for_arch("efficientnet_lite0")
    assert (pre.resize, pre.crop) == (256, 224)
    assert pre.mean == pytest.approx((127 / 255,) * 3)
    assert pre.std == pytest.approx((128 / 255,) * 3)


def test_preprocessing_key_depends_on_sizes():
    assert Preprocessing(resize=66, crop=64).key() != Preprocessing(resize=73, crop=64).key()
    assert Preprocessing(resize=73, crop=64).key() != Preprocessing(resize=73, crop=60).key()


def test_geometric_keeps_aspect_ratio_before_crop():
    # 40 x 80 image, white in columns [20, 40) (the second quarter).
    # Aspect kept: resize to 32 x 64, white in columns [16, 32); the centre crop takes [16, 48) -> left half white.
    # Squashed to 32 x 32 (wrong): white would be columns [8, 16) of the crop -> only a quarter white.
    image = np.zeros((40, 80), dtype=np.float32)
    image[:, 20:40] = 1.0
    out = Preprocessing(resize=32, crop=32).geometric(image)
    assert out.dtype == torch.uint8
    assert tuple(out.shape) == (1, 32, 32)
    column_means = out[0].float().mean(dim=0)
    # the antialiasing filter blurs one pixel at the crop's edge and at the white/black boundary
    assert (column_means[1:15] > 250).all() and column_means[0] > 200
    assert (column_means[17:] < 5).all()
    assert 0.45 < (out[0].float() / 255).mean().item() < 0.55


def test_geometric_tall_image_crops_centre_rows():
    # 90 x 30: shorter side 30 -> 15, so 45 x 15, crop 15 x 15 from rows [15, 30) -> only the middle third.
    image = np.zeros((90, 30), dtype=np.float32)
    image[30:60] = 1.0
    out = Preprocessing(resize=15, crop=15).geometric(image)
    assert tuple(out.shape) == (1, 15, 15)
    assert (out[0, 1:-1] == 255).all()  # interior rows: white; the edge rows pick up some antialiasing blur
    assert (out[0, [0, -1]] > 200).all()


def test_geometric_rgb_gives_three_channels():
    image = np.zeros((20, 30, 3), dtype=np.float32)
    image[..., 0] = 1.0
    image[..., 2] = 0.5
    out = Preprocessing(resize=16, crop=12).geometric(image)
    assert tuple(out.shape) == (3, 12, 12)
    assert out.dtype == torch.uint8
    assert (out[0] == 255).all() and (out[1] == 0).all()
    assert ((out[2].int() - 128).abs() <= 1).all()


def test_normalize_grayscale_to_three_channels_imagenet():
    batch = torch.tensor([[[[0, 255], [128, 255]]]], dtype=torch.uint8)  # N=1, C=1, 2 x 2
    out = Preprocessing(resize=2, crop=2).normalize(batch)
    assert tuple(out.shape) == (1, 3, 2, 2)
    assert out.dtype == torch.float32
    # by hand: (1 - 0.485) / 0.229 = 2.24891, (1 - 0.456) / 0.224 = 2.42857, (1 - 0.406) / 0.225 = 2.64
    assert out[0, :, 0, 1].tolist() == pytest.approx([2.248908, 2.428571, 2.64], abs=1e-5)
    # 0 -> -mean / std: -2.117904, -2.035714, -1.804444
    assert out[0, :, 0, 0].tolist() == pytest.approx([-2.117904, -2.035714, -1.804444], abs=1e-5)
    # 128 / 255 = 0.501961 -> (0.501961 - 0.485) / 0.229 = 0.074065
    assert out[0, 0, 1, 0].item() == pytest.approx(0.074065, abs=1e-5)


def test_normalize_rgb_keeps_channels():
    batch = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = Preprocessing(resize=4, crop=4).normalize(batch)
    assert tuple(out.shape) == (2, 3, 4, 4)
    assert out[1, 2, 3, 3].item() == pytest.approx((1 - 0.406) / 0.225, abs=1e-5)


# --------------------------------------------------------------------------------------------------------------
# ImageCache and ImageDataset


@pytest.fixture
def small_set(tmp_path) -> Path:
    root = tmp_path / "set"
    for c, name in enumerate(("a", "b")):
        for i in range(3):
            _png(root / name / f"{name}{i}.png", _gray(10 * c + i, (20, 24)))
    return root


PRE = Preprocessing(resize=16, crop=16)


def _all(dataset: ImageDataset) -> list[torch.Tensor]:
    return [dataset[i][0] for i in range(len(dataset))]


def test_dataset_twice_decodes_each_file_once(small_set):
    table = load_table(small_set)
    cache = ImageCache(PRE)
    dataset = ImageDataset(table, cache)
    first = _all(dataset)
    second = _all(dataset)
    assert cache.decodes == len(table) == 6
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    image, target = dataset[4]
    assert tuple(image.shape) == (1, 16, 16) and image.dtype == torch.uint8
    assert int(target) == 1


def test_warm_then_iterate_decodes_once(small_set):
    table = load_table(small_set)
    cache = ImageCache(PRE)
    dataset = ImageDataset(table, cache)
    seen = []
    dataset.warm(threads=2, on_image=lambda: seen.append(1))
    _all(dataset)
    assert len(seen) == 6
    assert cache.decodes == 6


def test_memory_bound_zero_disables_memory_cache(small_set):
    dataset = ImageDataset(load_table(small_set), cache := ImageCache(PRE, max_memory_bytes=0))
    _all(dataset)
    _all(dataset)
    assert cache.decodes == 12


def test_disk_cache_serves_a_new_cache_without_decoding(small_set, tmp_path):
    table = load_table(small_set)
    disk = tmp_path / "cache"
    first_cache = ImageCache(PRE, disk_dir=disk)
    first = _all(ImageDataset(table, first_cache))
    assert first_cache.decodes == 6
    assert len(list(disk.rglob("*.npy"))) == 6

    second_cache = ImageCache(PRE, disk_dir=disk)
    second = _all(ImageDataset(table, second_cache))
    assert second_cache.decodes == 0
    for a, b in zip(first, second):
        assert a.dtype == b.dtype == torch.uint8
        assert torch.equal(a, b)


def test_disk_cache_key_follows_content_not_name(small_set, tmp_path):
    table = load_table(small_set)
    disk = tmp_path / "cache"
    before = _all(ImageDataset(table, ImageCache(PRE, disk_dir=disk)))

    # a renamed copy with the same bytes is served from disk
    copy = tmp_path / "renamed.png"
    shutil.copy(table.records[0].path, copy)
    cache = ImageCache(PRE, disk_dir=disk)
    assert torch.equal(cache.get(copy), before[0])
    assert cache.decodes == 0

    # changing one file's content changes its key: that file alone is decoded again
    changed = table.records[2].path
    _png(changed, 255 - _gray(99, (20, 24)))
    cache = ImageCache(PRE, disk_dir=disk)
    after = _all(ImageDataset(table, cache))
    assert cache.decodes == 1
    assert not torch.equal(after[2], before[2])
    assert torch.equal(after[2], PRE.geometric(read_image(changed)))
    assert all(torch.equal(after[i], before[i]) for i in range(6) if i != 2)


def test_disk_cache_key_follows_preprocessing_and_read_options(small_set, tmp_path):
    table = load_table(small_set)
    disk = tmp_path / "cache"
    _all(ImageDataset(table, ImageCache(PRE, disk_dir=disk)))

    other = Preprocessing(resize=20, crop=12)
    cache = ImageCache(other, disk_dir=disk)
    images = _all(ImageDataset(table, cache))
    assert cache.decodes == 6
    assert all(tuple(image.shape) == (1, 12, 12) for image in images)

    cache = ImageCache(PRE, ReadOptions(window=(0.0, 1.0)), disk_dir=disk)
    _all(ImageDataset(table, cache))
    assert cache.decodes == 6
    assert len(list(disk.rglob("*.npy"))) == 18


def test_damaged_disk_entry_is_rebuilt(small_set, tmp_path):
    table = load_table(small_set)
    disk = tmp_path / "cache"
    before = _all(ImageDataset(table, ImageCache(PRE, disk_dir=disk)))
    for entry in disk.rglob("*.npy"):
        entry.write_bytes(b"garbage")
    cache = ImageCache(PRE, disk_dir=disk)
    after = _all(ImageDataset(table, cache))
    assert cache.decodes == 6
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_dataset_unlabeled_target_is_minus_one(tmp_path):
    for i in range(2):
        _png(tmp_path / f"{i}.png", seed=i)
    dataset = ImageDataset(load_table(tmp_path), ImageCache(PRE))
    assert int(dataset[1][1]) == -1


# --------------------------------------------------------------------------------------------------------------
# stratified_split


def _imbalanced_table() -> ImageTable:
    labels = ["a"] * 40 + ["b"] * 24 + ["c"] * 8
    order = np.random.default_rng(0).permutation(len(labels))
    return _table([labels[i] for i in order])


def _counts(table: ImageTable) -> Counter:
    return Counter(r.labels[0] for r in table.records)


def test_stratified_split_keeps_every_class_and_proportions():
    table = _imbalanced_table()
    train, val = stratified_split(table, 0.25, seed=0)
    assert len(train) + len(val) == len(table)
    assert len(val) == 18
    assert {r.path for r in train.records}.isdisjoint({r.path for r in val.records})
    assert {r.path for r in train.records} | {r.path for r in val.records} == {r.path for r in table.records}
    original = _counts(table)
    for part in (train, val):
        counts = _counts(part)
        assert set(counts) == {"a", "b", "c"}
        for name in original:
            assert counts[name] / len(part) == pytest.approx(original[name] / len(table), abs=0.06)
    assert train.classes == val.classes == table.classes


def test_stratified_split_is_deterministic_per_seed():
    table = _imbalanced_table()

    def paths(seed):
        train, val = stratified_split(table, 0.25, seed)
        return [r.path for r in train.records], [r.path for r in val.records]

    assert paths(3) == paths(3)
    assert paths(3) != paths(4)


def test_a_file_is_hashed_once_while_unchanged_and_again_when_replaced(tmp_path, monkeypatch):
    import hashlib

    from shiftkit.data import cache

    path = tmp_path / "a.png"
    path.write_bytes(b"first")
    reads = []
    real_sha1 = hashlib.sha1
    monkeypatch.setattr(cache.hashlib, "sha1", lambda *a: reads.append(1) or real_sha1(*a))
    first = cache.file_digest(path)
    assert cache.file_digest(path) == first and len(reads) == 1  # the second call reads nothing
    replacement = tmp_path / "b.png"
    replacement.write_bytes(b"other bytes")
    replacement.replace(path)  # same name, new content (another inode)
    assert cache.file_digest(path) == real_sha1(b"other bytes").hexdigest() and len(reads) == 2
