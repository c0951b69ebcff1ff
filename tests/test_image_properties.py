"""Image properties (issue 15, item 5): known answers on synthetic images, the source-versus-target comparison
(a planted property ranked first, a null split flagged at no more than the nominal rate), the raw tap (called once
per decoded image, leaving the embeddings unchanged) and thumbnails."""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage, stats

from shiftkit.data.cache import ImageCache
from shiftkit.data.dataset import ImageDataset, collate
from shiftkit.data.preprocess import Preprocessing
from shiftkit.data.readers import read_image
from shiftkit.data.table import ImageRecord, ImageTable
from shiftkit.data.validate import iter_batches
from shiftkit.shift.image_properties import (
    PROPERTIES,
    PropertyTap,
    arrays_to_properties,
    compare_properties,
    image_properties,
    immerkaer_valid,
    laplacian_valid,
    properties_to_arrays,
    summary_line,
    thumbnail_png,
)


def scene(rng: np.random.Generator, size: int = 64, noise: tuple[float, float] = (0.002, 0.01)) -> np.ndarray:
    """A smooth random texture with a few sharp-edged disks, in [0.15, 0.85], plus faint noise."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), rng.uniform(1.5, 4.0))
    field = (field - field.min()) / (field.max() - field.min())
    yy, xx = np.mgrid[:size, :size]
    for _ in range(3):
        cy, cx, radius = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 12, size / 4)
        field = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2, rng.uniform(0, 1), field)
    image = 0.2 + 0.6 * field + rng.normal(0, rng.uniform(*noise), field.shape)
    return np.clip(image, 0.15, 0.85).astype(np.float32)


def smooth(size: int) -> np.ndarray:
    """A noise-free image with only slow variation (where a noise estimate must read the added noise only)."""
    yy, xx = np.mgrid[:size, :size] / size
    return (0.5 + 0.2 * np.sin(2 * np.pi * xx) * np.cos(np.pi * yy) + 0.1 * yy).astype(np.float32)


# -- one image: known answers ----------------------------------------------------------------------------------------

def test_every_property_is_defined_and_always_present():
    values = image_properties(scene(np.random.default_rng(0)))
    assert list(values) == list(PROPERTIES)
    assert all(isinstance(v, float) for v in values.values())


def test_blurred_copy_is_less_sharp():
    rng = np.random.default_rng(1)
    for _ in range(5):
        image = scene(rng)
        blurred = ndimage.gaussian_filter(image, 1.0)
        sharp, soft = image_properties(image)["sharpness"], image_properties(blurred)["sharpness"]
        assert soft < 0.5 * sharp


def test_darkened_copy_is_darker_and_brightness_is_the_mean():
    image = scene(np.random.default_rng(2))
    assert image_properties(image)["brightness"] == pytest.approx(float(image.mean()), abs=1e-6)
    assert image_properties(image - 0.1)["brightness"] == pytest.approx(float(image.mean()) - 0.1, abs=1e-6)
    assert image_properties(image * 0.5)["brightness"] < image_properties(image)["brightness"]


def test_contrast_reduced_copy_has_lower_contrast_and_the_same_sharpness():
    image = scene(np.random.default_rng(3))
    flat = 0.5 + 0.5 * (image - 0.5)
    before, after = image_properties(image), image_properties(flat)
    assert after["contrast"] == pytest.approx(0.5 * before["contrast"], rel=1e-4)
    assert after["brightness"] == pytest.approx(0.5 + 0.5 * (before["brightness"] - 0.5), abs=1e-6)
    assert after["sharpness"] == pytest.approx(before["sharpness"], rel=1e-3)  # contrast is not read as blur


@pytest.mark.parametrize("size", [200, 1500])  # the whole image, and the tile grid of a large one
@pytest.mark.parametrize("sigma", [0.01, 0.03, 0.08])
def test_added_noise_of_known_sigma_is_recovered(size, sigma):
    rng = np.random.default_rng(4)
    noisy = smooth(size) + rng.normal(0.0, sigma, (size, size)).astype(np.float32)
    assert image_properties(noisy)["noise"] == pytest.approx(sigma, rel=0.15)
    assert image_properties(smooth(size))["noise"] < 0.1 * sigma


def test_sharpness_is_corrected_for_noise():
    """Added noise raises the plain variance of the Laplacian a lot; the corrected sharpness barely moves."""
    rng = np.random.default_rng(5)
    image = scene(rng, 96)
    noisy = image + rng.normal(0.0, 0.03, image.shape).astype(np.float32)
    plain = [ndimage.laplace(x.astype(np.float64))[1:-1, 1:-1].var() / x[1:-1, 1:-1].var() for x in (image, noisy)]
    assert plain[1] > 2 * plain[0]
    assert image_properties(noisy)["sharpness"] == pytest.approx(image_properties(image)["sharpness"], rel=0.3)


def test_stencils_match_scipy():
    tiles = np.random.default_rng(6).random((3, 20, 17)).astype(np.float32)
    np.testing.assert_allclose(laplacian_valid(tiles), ndimage.laplace(tiles, axes=(1, 2))[:, 1:-1, 1:-1], atol=1e-5)
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    expected = np.stack([ndimage.convolve(t, kernel)[1:-1, 1:-1] for t in tiles])
    np.testing.assert_allclose(immerkaer_valid(tiles), expected, atol=1e-5)


def test_colour_cast_moves_its_channel_and_grayscale_has_no_colour():
    rng = np.random.default_rng(7)
    gray = scene(rng)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    cast = rgb.copy()
    cast[..., 0] += 0.1
    base, warm = image_properties(rgb), image_properties(cast)
    assert warm["mean_red"] == pytest.approx(base["mean_red"] + 0.1, abs=1e-6)
    assert warm["mean_green"] == pytest.approx(base["mean_green"], abs=1e-6)
    assert warm["mean_blue"] == pytest.approx(base["mean_blue"], abs=1e-6)
    assert base["chroma"] < 1e-3 < 5 < warm["chroma"]
    assert base["brightness"] == pytest.approx(image_properties(gray)["brightness"], abs=1e-5)
    # CIELAB of sRGB pure red is L 53.24, a 80.09, b 67.20: chroma 104.55
    red = np.zeros((8, 8, 3), np.float32)
    red[..., 0] = 1.0
    assert image_properties(red)["chroma"] == pytest.approx(104.55, abs=0.1)
    assert all(math.isnan(image_properties(gray)[name]) for name in ("mean_red", "mean_green", "mean_blue", "chroma"))


def test_size_aspect_and_spacing_are_read():
    image = np.full((30, 60), 0.5, np.float32)
    values = image_properties(image, spacing=(0.5, 0.7, 2.5))  # x, y, z: the slice thickness is not in-plane
    assert (values["height"], values["width"], values["aspect_ratio"]) == (30.0, 60.0, 2.0)
    assert values["spacing"] == pytest.approx(0.6)
    assert image_properties(image, spacing=0.8)["spacing"] == pytest.approx(0.8)
    assert math.isnan(image_properties(image)["spacing"])
    assert math.isnan(values["sharpness"])  # a flat image has no sharpness, rather than a made-up one


def test_intensities_are_scaled_by_dtype_or_window():
    assert image_properties(np.full((16, 16), 51, np.uint8))["brightness"] == pytest.approx(0.2)
    assert image_properties(np.full((16, 16), 65535, np.uint16))["brightness"] == pytest.approx(1.0)
    hounsfield = np.full((16, 16), -300.0, np.float32)
    assert image_properties(hounsfield, value_range=(-1000.0, 400.0))["brightness"] == pytest.approx(0.5)


def test_a_volume_is_refused():
    with pytest.raises(ValueError, match="slice"):
        image_properties(np.zeros((5, 32, 32), np.float32))


# -- source versus target ------------------------------------------------------------------------------------------

def _sets(plant, n: int = 40, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Two sets of different images from one distribution; ``plant`` applied to the target's."""
    rng = np.random.default_rng(seed)
    source = [image_properties(scene(rng)) for _ in range(n)]
    target = [image_properties(plant(scene(rng), rng)) for _ in range(n)]
    return source, target


PLANTS = {
    "sharpness": lambda x, rng: ndimage.gaussian_filter(x, 1.0),
    "brightness": lambda x, rng: x - 0.08,
    "contrast": lambda x, rng: 0.5 + 0.6 * (x - 0.5),
    "noise": lambda x, rng: x + rng.normal(0.0, 0.03, x.shape).astype(np.float32),
}


@pytest.mark.parametrize("planted", list(PLANTS))
def test_the_planted_property_is_ranked_first(planted):
    rows = compare_properties(*_sets(PLANTS[planted]))
    first = rows[0]
    assert first["property"] == planted and first["rank"] == 1
    assert first["p_adjusted"] < 0.05 and first["significant"]
    assert summary_line(rows).startswith(f"images differ most in {planted}")
    json.dumps(rows, allow_nan=False)  # JSON as it stands


def test_blur_explains_the_lower_noise_estimate():
    rows = {row["property"]: row for row in compare_properties(*_sets(PLANTS["sharpness"]))}
    assert rows["sharpness"]["direction"] == "lower in target"
    noise = rows["noise"]  # a blur lowers the noise estimate as much (it reads fine detail): said to follow from it
    assert noise["significant"] and noise["direction"] == "lower in target"
    assert noise["explained_by"] == "sharpness" and noise["explanation"] and noise["rank"] == 2
    assert summary_line(list(rows.values()), k=2) == "images differ most in sharpness (d = {:.2g})".format(
        rows["sharpness"]["cohens_d"])  # the consequence is not named as a second change
    unrelated = {row["property"]: row for row in compare_properties(*_sets(PLANTS["noise"]))}
    assert unrelated["noise"]["explained_by"] is None  # more noise is not explained away


def test_a_null_split_is_flagged_at_no_more_than_the_nominal_rate():
    """Random halves of one pool of images (sizes vary, so size and aspect are tested too), 200 splits: each
    property is flagged (BH-adjusted p < 0.05) in at most the nominal share, up to binomial slack, and so is the
    family (BH under the complete null controls the chance of any flag)."""
    rng = np.random.default_rng(8)
    pool = []
    for _ in range(120):
        size = int(rng.integers(40, 72))
        gray = scene(rng, size)[:, : int(rng.integers(32, size + 1))]
        tint = rng.uniform(0.9, 1.1, 3).astype(np.float32)
        pool.append(image_properties(np.clip(gray[..., None] * tint, 0, 1)))
    splits, flags, any_flag = 200, {}, 0
    for _ in range(splits):
        order = rng.permutation(len(pool))
        rows = compare_properties([pool[i] for i in order[:60]], [pool[i] for i in order[60:]])
        flagged = [row["property"] for row in rows if row["significant"]]
        any_flag += bool(flagged)
        for name in flagged:
            flags[name] = flags.get(name, 0) + 1
    tested = [row["property"] for row in rows if row["testable"]]
    assert {"brightness", "sharpness", "noise", "chroma", "height", "aspect_ratio"} <= set(tested)
    limit = stats.binom.ppf(0.999, splits, 0.05) / splits  # 0.095 for 200 splits
    assert max(flags.values(), default=0) / splits <= limit, flags
    print(f"null: any flag in {any_flag}/{splits} splits; per property {flags}")
    assert any_flag / splits <= limit


def test_effect_sizes_and_correction_have_known_answers():
    source = [{"a": v, "b": v} for v in (1.0, 2.0, 3.0, 4.0)]
    target = [{"a": v, "b": w} for v, w in zip((5.0, 6.0, 7.0, 8.0), (1.5, 2.5, 3.5, 3.0))]
    rows = {row["property"]: row for row in compare_properties(source, target)}
    a = rows["a"]
    assert a["rank_biserial"] == 1.0 and a["cohens_d"] == pytest.approx(4.0 / np.std([1, 2, 3, 4], ddof=1))
    assert a["direction"] == "higher in target" and a["rank"] == 1 and rows["b"]["rank"] == 2
    expected = stats.mannwhitneyu([5, 6, 7, 8], [1, 2, 3, 4], alternative="two-sided")
    assert a["p_value"] == pytest.approx(expected.pvalue) and a["statistic"] == expected.statistic
    adjusted = stats.false_discovery_control([a["p_value"], rows["b"]["p_value"]], method="bh")
    assert [a["p_adjusted"], rows["b"]["p_adjusted"]] == pytest.approx(list(adjusted))
    assert (a["source_median"], a["source_q1"], a["source_q3"]) == (2.5, 1.75, 3.25)
    u = stats.mannwhitneyu([1.5, 2.5, 3.5, 3.0], [1, 2, 3, 4]).statistic
    assert rows["b"]["rank_biserial"] == pytest.approx(2 * u / 16 - 1)
    holm = {row["property"]: row for row in compare_properties(source, target, correction="holm")}
    assert holm["a"]["p_adjusted"] >= a["p_adjusted"]


def test_untestable_properties_are_reported_never_raised():
    nan = float("nan")
    source = [{"brightness": 0.1 * i, "chroma": nan, "size": 64.0, "spacing": None, "odd": 1.0 if i == 0 else nan}
              for i in range(5)]
    target = [{"brightness": 0.1 * i + 0.05, "chroma": nan, "size": 64.0, "spacing": 0.5, "odd": 2.0}
              for i in range(5)]
    rows = {row["property"]: row for row in compare_properties(source, target)}
    assert rows["brightness"]["testable"]
    assert rows["chroma"]["reason"] == "not measured in either domain"
    assert rows["size"]["reason"] == "the same value in every image of both domains"
    assert rows["spacing"]["reason"] == "fewer than 2 values in source"
    assert rows["odd"]["reason"] == "fewer than 2 values in source"
    assert all(row["rank"] is None and not row["significant"] for name, row in rows.items() if name != "brightness")
    assert list(rows)[0] == "brightness"  # testable first
    json.dumps(list(rows.values()), allow_nan=False)
    assert compare_properties([], []) == []


def test_domains_that_differ_without_spread_are_testable():
    """Every source image 64 px wide, every target 128: no spread, so d is infinite (reported as None) and the
    rank-biserial says the separation is complete."""
    rows = compare_properties([{"width": 64.0}] * 10, [{"width": 128.0}] * 10)
    assert rows[0]["testable"] and rows[0]["rank_biserial"] == 1.0 and rows[0]["cohens_d"] is None
    assert rows[0]["significant"]
    assert "width" in summary_line(rows)


def test_properties_round_trip_through_npz():
    rows = [image_properties(scene(np.random.default_rng(i))) for i in range(3)]
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=np.zeros((3, 2)), **properties_to_arrays(rows))
    buffer.seek(0)
    with np.load(buffer) as stored:
        back = arrays_to_properties(stored)
    assert back is not None and len(back) == 3
    for before, after in zip(rows, back):
        assert list(after) == list(before)
        np.testing.assert_array_equal(list(after.values()), list(before.values()))  # NaN colour stays NaN
    assert arrays_to_properties({"embeddings": np.zeros((3, 2))}) is None


# -- thumbnails ----------------------------------------------------------------------------------------------------

def _chunks(png: bytes) -> list[str]:
    names, offset = [], 8
    while offset < len(png):
        length, kind = struct.unpack(">I4s", png[offset:offset + 8])
        names.append(kind.decode())
        offset += 12 + length
    return names


def test_thumbnail_is_small_pixels_only_and_percentile_scaled():
    image = smooth(300)[:, :200].copy()
    image[0, 0] = 1e6  # one outlier must not flatten the rest
    png = thumbnail_png(image, size=96)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and set(_chunks(png)) == {"IHDR", "IDAT", "IEND"}  # no text chunk
    with Image.open(io.BytesIO(png)) as thumb:
        assert thumb.mode == "L" and thumb.size == (64, 96)
        pixels = np.asarray(thumb)
    assert pixels.min() == 0 and pixels.max() == 255 and 50 < np.median(pixels) < 205
    rgb = np.stack([smooth(20)] * 3, axis=2)
    with Image.open(io.BytesIO(thumbnail_png(rgb, size=96))) as thumb:
        assert thumb.mode == "RGB" and thumb.size == (96, 96)  # a tiny image is enlarged, pixel for pixel
    with Image.open(io.BytesIO(thumbnail_png(np.zeros((10, 10), np.float32)))) as thumb:
        assert np.asarray(thumb).max() == 0  # a flat image stays flat


# -- the raw tap ---------------------------------------------------------------------------------------------------

def _table(root: Path) -> ImageTable:
    """Eight PNGs of different sizes, gray and RGB, two of them with a manifest spacing."""
    rng = np.random.default_rng(9)
    records = []
    for i in range(8):
        size = (40 + 4 * i, 48)
        gray = (scene(rng, 48)[: size[0] % 48 or 48] * 255).astype(np.uint8)
        array = np.stack([gray] * 3, axis=2) if i % 2 else gray
        path = root / f"im{i}.png"
        Image.fromarray(array).save(path)
        records.append(ImageRecord(path, ("a" if i < 4 else "b",), spacing=(0.5, 0.5) if i < 2 else None))
    return ImageTable(tuple(records), ("a", "b"))


def _pass(dataset: ImageDataset) -> list[torch.Tensor]:
    return [images for images, _ in iter_batches(dataset, 3, "fail", [], collate)]


def test_tap_sees_each_decoded_image_once_before_preprocessing(tmp_path):
    table = _table(tmp_path)
    pre = Preprocessing(resize=32, crop=32)
    plain_cache, tapped_cache = ImageCache(pre, max_memory_bytes=0), ImageCache(pre, max_memory_bytes=0)
    seen: list[int] = []
    tap = PropertyTap()

    def counting(index, array, record, header):
        seen.append(index)
        tap(index, array, record, header)

    plain = _pass(ImageDataset(table, plain_cache))
    tapped = _pass(ImageDataset(table, tapped_cache, on_raw=counting))
    assert all(torch.equal(a, b) for a, b in zip(plain, tapped)) and len(plain) == len(tapped)
    assert sorted(seen) == list(range(8)) and tap.calls == 8 and tapped_cache.decodes == plain_cache.decodes == 8
    assert tap.missing(range(8)) == [] and not tap.errors and tap.seconds > 0
    for i, row in enumerate(tap.rows(range(8))):
        expected = image_properties(read_image(table.records[i].path), table.records[i].spacing)
        np.testing.assert_allclose(list(row.values()), list(expected.values()), equal_nan=True)
        assert row["height"] == Image.open(table.records[i].path).size[1]  # the raw image, not the 32-px crop
    rows = tap.rows(range(8))
    assert [r["spacing"] for r in rows[:2]] == [0.5, 0.5] and all(math.isnan(r["spacing"]) for r in rows[2:])
    assert math.isnan(rows[0]["chroma"]) and not math.isnan(rows[1]["chroma"])


def test_tap_leaves_the_embeddings_unchanged(tmp_path):
    from shiftkit.features import head_inputs_and_outputs
    from shiftkit.models import build_model

    table = _table(tmp_path)
    torch.manual_seed(0)
    adapted = build_model("resnet18", 2, "none", image_size=32)
    outputs = []
    for tap in (None, PropertyTap(workers=2)):
        dataset = ImageDataset(table, ImageCache(adapted.preprocessing, max_memory_bytes=0), on_raw=tap)
        embeddings, logits, _ = head_inputs_and_outputs(adapted, iter_batches(dataset, 4, "fail", [], collate),
                                                        torch.device("cpu"))
        outputs.append((embeddings, logits))
        if tap is not None:
            tap.close()
            assert tap.calls == 8 and tap.missing(range(8)) == []
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


def test_a_cache_hit_skips_the_tap_and_says_so(tmp_path):
    table = _table(tmp_path)
    pre = Preprocessing(resize=32, crop=32)
    memory = ImageCache(pre)  # holds what it decoded
    first, second = PropertyTap(), PropertyTap()
    _pass(ImageDataset(table, memory, on_raw=first))
    _pass(ImageDataset(table, memory, on_raw=second))
    assert first.calls == 8 and second.calls == 0 and second.missing(range(8)) == list(range(8))
    disk = tmp_path / "disk"
    _pass(ImageDataset(table, ImageCache(pre, disk_dir=disk, max_memory_bytes=0)))
    later = PropertyTap()
    _pass(ImageDataset(table, ImageCache(pre, disk_dir=disk, max_memory_bytes=0), on_raw=later))
    assert later.calls == 0 and len(later.missing(range(8))) == 8
    assert all(math.isnan(v) for v in later.rows([3])[0].values())


def test_tap_takes_spacing_from_a_medical_header(tmp_path):
    import SimpleITK as sitk

    volume = sitk.GetImageFromArray((np.random.default_rng(10).random((5, 24, 20)) * 1000).astype(np.int16))
    volume.SetSpacing((0.7, 0.9, 3.0))
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(volume, str(path))
    header: dict = {}
    slice_ = read_image(path, header=header)
    assert list(header) == ["spacing"] and header["spacing"] == pytest.approx((0.7, 0.9)) and slice_.shape == (24, 20)
    tap = PropertyTap()
    table = ImageTable((ImageRecord(path, ("a",)), ImageRecord(path, ("a",), spacing=(2.0, 2.0))), ("a",))
    _pass(ImageDataset(table, ImageCache(Preprocessing(resize=32, crop=32), max_memory_bytes=0), on_raw=tap))
    assert tap.properties[0]["spacing"] == pytest.approx(0.8)  # from the header
    assert tap.properties[1]["spacing"] == pytest.approx(2.0)  # the manifest overrides it
    assert (tap.properties[0]["height"], tap.properties[0]["width"]) == (24.0, 20.0)  # the slice the readers take


def test_tap_keeps_the_decode_signature_that_callers_wrap(tmp_path, monkeypatch):
    """``ImageCache._decode(path)`` keeps its one argument with a tap (tests wrap it to count decodes)."""
    table = _table(tmp_path)
    decodes: list[Path] = []
    original = ImageCache._decode
    monkeypatch.setattr(ImageCache, "_decode", lambda self, path: decodes.append(path) or original(self, path))
    tap = PropertyTap()
    _pass(ImageDataset(table, ImageCache(Preprocessing(resize=32, crop=32), max_memory_bytes=0), on_raw=tap))
    assert len(decodes) == 8 and tap.calls == 8
