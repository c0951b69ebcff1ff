"""Colour-aware harmonizers for RGB images: histogram matching in CIELAB (``labmatch``) and Shades of Gray colour
constancy (``--method colour --colour-method shades_of_gray``).

Every test plants a known answer: colours that per-channel matching invents and LAB matching must not, a colour
cast (known per-channel gains) that must be undone, the gray-world and max-RGB formulas at p = 1 and p = inf, the
reference's illuminant that outputs must take, and byte-identical files from a saved harmonizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.data.synthetic import write_dataset
from shiftkit.errors import ConfigError
from shiftkit.harmonize.base import kinds_of, load_harmonizer, make_harmonizer
from shiftkit.harmonize.colour import rgb_to_lab
from shiftkit.harmonize.constancy import ShadesOfGray, illuminant
from shiftkit.harmonize.lab_match import LabHistogramMatching

SKIN = [(200, 150, 140), (150, 90, 70), (90, 60, 50), (230, 200, 190)]  # skin, brown lesion, dark, light skin
MAUVE = [(180, 140, 150), (120, 80, 90), (210, 180, 200)]  # another site's palette: none of SKIN's hues


def _patches(colours, fractions, seed: int, size: int = 48, noise: float = 4.0) -> np.ndarray:
    """An RGB image (0..255 floats) made of flat colour patches (``fractions`` of the pixels each) plus Gaussian
    noise, as JPEG blocks and skin texture add around a lesion's colours."""
    rng = np.random.default_rng(seed)
    counts = np.round(np.asarray(fractions) * size * size).astype(int)
    counts[-1] = size * size - counts[:-1].sum()
    pixels = np.concatenate([np.tile(np.asarray(c, dtype=float), (k, 1)) for c, k in zip(colours, counts)])
    return np.clip(pixels + rng.normal(0, noise, pixels.shape), 0, 255).reshape(size, size, 3)


def _lab(image: np.ndarray) -> np.ndarray:
    return rgb_to_lab(np.clip(image, 0, 255) / 255.0).reshape(-1, 3)


def _novel_colour_fraction(output: np.ndarray, inputs: list[np.ndarray], delta: float = 10.0) -> float:
    """The fraction of ``output``'s pixels whose chromaticity (CIELAB a*, b*) is more than ``delta`` from that of
    every pixel of every input image: a hue (and saturation) that was in no input. Lightness is left out, so
    making a colour lighter or darker, which intensity matching is meant to do, does not count as a new colour."""
    tree = cKDTree(np.concatenate([_lab(image)[:, 1:] for image in inputs]))
    distance, _ = tree.query(_lab(output)[:, 1:])
    return float(np.mean(distance > delta))


def _bordered(image: np.ndarray, colour) -> np.ndarray:
    """``image`` inside a 4-pixel border of ``colour``: a background that a mask must keep out of the fit."""
    out = np.empty((image.shape[0] + 8, image.shape[1] + 8, 3))
    out[...] = colour
    out[4:-4, 4:-4] = image
    return out


# ------------------------------------------------------------------------------------------------------ labmatch

def test_lab_matching_keeps_hue_correlations_where_per_channel_matching_invents_colours():
    """Per-channel RGB matching moves R, G and B by unrelated maps, so noisy pixels of one patch that sit on
    different sides of a quantile boundary in different channels get hues neither image had; matching L only keeps
    every pixel's a*, b*. Measured: >5% novel pixels for histmatch, none for labmatch, while labmatch does move the
    lightness onto the reference's (L's quantile function within 0.5 L units on average, from more than 5)."""
    reference = [_patches(MAUVE, [0.5, 0.3, 0.2], seed=10 + s) for s in range(3)]
    target = _patches(SKIN, [0.3, 0.35, 0.15, 0.2], seed=99)
    inputs = [target, *reference]
    per_channel = make_harmonizer("histmatch").fit(reference).transform(target)
    lab = make_harmonizer("labmatch").fit(reference)
    matched = lab.transform(target)
    assert isinstance(lab, LabHistogramMatching) and lab.params()["channels"] == "l"
    assert _novel_colour_fraction(per_channel, inputs) > 0.05
    assert _novel_colour_fraction(matched, inputs) < 0.001
    levels = np.linspace(0.005, 0.995, 199)  # L's quantile function; mean gap = Wasserstein-1 distance
    reference_l = np.mean([np.quantile(_lab(image)[:, 0], levels) for image in reference], axis=0)
    gap = lambda image: np.abs(np.quantile(_lab(image)[:, 0], levels) - reference_l).mean()  # noqa: E731
    assert gap(target) > 5 and gap(matched) < 0.5, (gap(target), gap(matched))
    np.testing.assert_allclose(_lab(matched)[:, 1:], _lab(target)[:, 1:], atol=0.5)  # a*, b* kept (in gamut)


def test_lab_matching_of_all_channels_matches_each_lab_channel():
    """``channels="lab"``: every LAB channel's mean moves onto the reference's (within 1 unit)."""
    reference = [_patches(MAUVE, [0.5, 0.3, 0.2], seed=20 + s) for s in range(3)]
    target = _patches(SKIN, [0.3, 0.35, 0.15, 0.2], seed=21)
    out = make_harmonizer("labmatch", channels="lab").fit(reference).transform(target)
    want = np.mean([_lab(image).mean(0) for image in reference], axis=0)
    assert np.abs(_lab(target).mean(0) - want).max() > 5
    np.testing.assert_allclose(_lab(out).mean(0), want, atol=1.0)


def test_lab_matching_respects_masks():
    """A background (a saturated green border) outside the mask changes neither the fit nor the foreground's
    output: both equal those of the foreground alone."""
    reference = [_patches(MAUVE, [0.5, 0.3, 0.2], seed=30 + s, size=24) for s in range(2)]
    target = _patches(SKIN, [0.3, 0.35, 0.15, 0.2], seed=33, size=24)

    bordered = lambda image: _bordered(image, (20, 220, 30))  # noqa: E731
    mask = np.zeros((32, 32), dtype=bool)
    mask[4:28, 4:28] = True
    plain = LabHistogramMatching().fit(reference)
    masked = LabHistogramMatching().fit([bordered(im) for im in reference], [mask] * len(reference))
    assert masked.state == plain.state
    unmasked = LabHistogramMatching().fit([bordered(im) for im in reference])
    assert unmasked.state != plain.state  # the border does count without the mask
    out = masked.transform(bordered(target), mask)
    np.testing.assert_allclose(out[4:28, 4:28], plain.transform(target), atol=1e-9)


def test_lab_matching_refuses_gray_images_naming_histmatch():
    fitted = LabHistogramMatching().fit([_patches(SKIN, [0.25] * 4, seed=1)])
    for call in (lambda: fitted.transform(np.full((8, 8), 100.0)),
                 lambda: LabHistogramMatching().fit([np.full((8, 8), 100.0)]),
                 lambda: fitted.check_input("8bit", 1, "x.png")):
        with pytest.raises(ConfigError, match="histmatch"):
            call()
    with pytest.raises(ConfigError, match="channels"):
        LabHistogramMatching(channels="rgb")


# ------------------------------------------------------------------------------------------------ shades of gray

CAST = np.array([1.25, 0.95, 0.7])  # a warm illuminant: red up, blue down


def _scenes(n: int, seed: int) -> list[np.ndarray]:
    """Dermoscopy-like scenes: skin of a random tone with a darker lesion of random size; values stay below 180
    so that a cast of up to 1.4x is not clipped."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        skin = rng.uniform([140, 100, 90], [170, 130, 120])
        lesion = skin * rng.uniform(0.35, 0.6, 3)
        yy, xx = np.mgrid[:32, :32]
        inside = (yy - 16) ** 2 + (xx - 16) ** 2 < rng.uniform(5, 12) ** 2
        image = np.where(inside[..., None], lesion, skin) + rng.normal(0, 3, (32, 32, 3))
        images.append(np.clip(image, 0, 180))
    return images


def _chromaticity_spread(a: np.ndarray, b: np.ndarray) -> float:
    """How far apart the per-channel mean ratios of ``a`` to ``b`` are, relative to their mean: 0 when ``a`` is
    ``b`` up to brightness, about 0.3 for the planted cast."""
    ratio = a.reshape(-1, 3).mean(0) / b.reshape(-1, 3).mean(0)
    return float(np.ptp(ratio) / ratio.mean())


@pytest.mark.parametrize("p", [1.0, 6.0, "inf"])
def test_shades_of_gray_undoes_a_planted_colour_cast(p):
    originals = _scenes(6, seed=0)
    casted = [image * CAST for image in originals]
    harmonizer = ShadesOfGray(p=p, target="neutral").fit(_scenes(3, seed=1))
    for original, cast in zip(originals, casted):
        assert _chromaticity_spread(cast, original) > 0.4
        after = _chromaticity_spread(harmonizer.transform(cast), harmonizer.transform(original))
        assert after < 0.01, after
        out = harmonizer.transform(cast)
        assert out.mean() == pytest.approx(cast.mean(), rel=1e-9)  # brightness kept (nothing clipped here)


def test_shades_of_gray_p1_is_gray_world_and_p_inf_is_max_rgb():
    """The direct formulas: gray-world scales channel c by mean(I) / mean(I_c); max-RGB by k / max(I_c), with k
    keeping the image's mean intensity."""
    image = _scenes(1, seed=5)[0] * CAST
    gray_world = image * image.mean() / image.reshape(-1, 3).mean(0)
    np.testing.assert_allclose(ShadesOfGray(p=1, target="neutral").fit([image]).transform(image), gray_world,
                               rtol=1e-10)
    means, tops = image.reshape(-1, 3).mean(0), image.reshape(-1, 3).max(0)
    max_rgb = image / tops * means.sum() / (means / tops).sum()
    for p in ("inf", float("inf"), "Infinity"):
        np.testing.assert_allclose(ShadesOfGray(p=p, target="neutral").fit([image]).transform(image), max_rgb,
                                   rtol=1e-10)
    p6 = ShadesOfGray(p=6, target="neutral").fit([image]).transform(image)
    assert np.abs(p6 - gray_world).max() > 1 and np.abs(p6 - max_rgb).max() > 1  # p = 6 is neither
    for bad in (0.5, "warm", float("nan")):
        with pytest.raises(ConfigError, match="p"):
            ShadesOfGray(p=bad)


def test_shades_of_gray_maps_onto_the_references_illuminant():
    """``target="reference"``: images under another cast come out under the reference's illuminant (the same
    images as the reference set would show under it, up to brightness)."""
    reference = [image * CAST for image in _scenes(6, seed=2)]
    fitted = ShadesOfGray().fit(reference)
    want = np.mean([illuminant(image, 6.0) for image in reference], axis=0)
    np.testing.assert_allclose(fitted.state["target_illuminant"], want / np.linalg.norm(want), rtol=1e-12)
    other_cast = np.array([0.8, 1.0, 1.3])
    for scene in _scenes(4, seed=3):
        out = fitted.transform(scene * other_cast)
        np.testing.assert_allclose(illuminant(out, 6.0), fitted.state["target_illuminant"], atol=1e-9)
        assert _chromaticity_spread(scene * other_cast, scene * CAST) > 0.5
        assert _chromaticity_spread(out, fitted.transform(scene * CAST)) < 0.01
    neutral = ShadesOfGray(target="neutral").fit(reference)
    np.testing.assert_allclose(neutral.state["target_illuminant"], np.full(3, 3 ** -0.5))


def test_shades_of_gray_estimates_the_illuminant_in_the_mask_only():
    """A saturated blue border outside the mask changes neither the fitted illuminant nor the gains (the
    border pixels are still corrected by them); without the mask it does."""
    scenes = _scenes(3, seed=4)

    bordered = lambda image: _bordered(image, (10, 30, 200))  # noqa: E731
    mask = np.zeros((40, 40), dtype=bool)
    mask[4:36, 4:36] = True
    plain = ShadesOfGray().fit(scenes)
    masked = ShadesOfGray().fit([bordered(im) for im in scenes], [mask] * 3)
    np.testing.assert_allclose(masked.state["target_illuminant"], plain.state["target_illuminant"], rtol=1e-12)
    unmasked = ShadesOfGray().fit([bordered(im) for im in scenes])
    assert np.abs(np.subtract(unmasked.state["target_illuminant"], plain.state["target_illuminant"])).max() > 0.05
    target = _scenes(1, seed=6)[0] * CAST
    out = masked.transform(bordered(target), mask)
    np.testing.assert_allclose(out[4:36, 4:36], plain.transform(target), rtol=1e-12)
    np.testing.assert_allclose(out[0, 0], np.clip(np.array([10, 30, 200]) * plain.gains(target), 0, 255))


def test_reinhard_stays_the_colour_default():
    assert kinds_of("colour")[:3] == ("reinhard", "macenko", "shades_of_gray")
    assert type(make_harmonizer("colour")).__name__ == "Reinhard"
    assert isinstance(make_harmonizer("colour", colour_method="shades_of_gray", p=2), ShadesOfGray)


def test_infinite_p_survives_save_and_load(tmp_path):
    image = _scenes(1, seed=7)[0] * CAST
    fitted = ShadesOfGray(p=float("inf")).fit(_scenes(2, seed=8))
    path = fitted.save(tmp_path / "sog.json")
    assert json.loads(path.read_text())["params"]["p"] == "inf"
    loaded = load_harmonizer(path, "colour")
    assert np.array_equal(loaded.transform(image), fitted.transform(image))


# -------------------------------------------------------------------------------------------------------- the CLI

def _png_csv(folder: Path, images: list[np.ndarray], name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, image in enumerate(images):
        path = folder / f"{name}_{i}.png"
        Image.fromarray(np.round(image).astype(np.uint8)).save(path)
        rows.append(f"{path},{'ab'[i % 2]}\n")
    manifest = folder / f"{name}.csv"
    manifest.write_text("path,label\n" + "".join(rows))
    return manifest


@pytest.mark.parametrize("args,kind", [
    (["--method", "colour", "--colour-method", "shades_of_gray"], "shades_of_gray"),
    (["--method", "labmatch", "--foreground", "otsu"], "labmatch"),
])
def test_cli_saved_harmonizer_gives_byte_identical_files(tmp_path, args, kind):
    reference = _png_csv(tmp_path / "ref", [image * CAST for image in _scenes(4, seed=11)], "ref")
    target = _png_csv(tmp_path / "tgt", [image * np.array([0.8, 1.0, 1.3]) for image in _scenes(4, seed=12)], "tgt")
    runner = CliRunner()
    result = runner.invoke(app, ["harmonize", str(target), "--reference", str(reference), *args,
                                 "--out", str(tmp_path / "out"), "--no-measure"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "harmonizer.json").read_text())
    assert saved["kind"] == kind
    again = runner.invoke(app, ["harmonize", str(target), "--harmonizer", str(tmp_path / "out" / "harmonizer.json"),
                                "--out", str(tmp_path / "again"), "--no-measure"])
    assert again.exit_code == 0, again.output
    outputs = sorted((tmp_path / "out").rglob("*.png"))
    assert len(outputs) == 4
    for path in outputs:
        twin = tmp_path / "again" / path.relative_to(tmp_path / "out")
        assert twin.read_bytes() == path.read_bytes()
    inputs = sorted((tmp_path / "tgt").glob("*.png"))
    assert any(np.abs(np.asarray(Image.open(a), dtype=float) - np.asarray(Image.open(b), dtype=float)).max() > 5
               for a, b in zip(inputs, outputs))  # it did change the images


def test_cli_labmatch_on_gray_images_is_one_line_exit_2(tmp_path):
    gray = write_dataset(tmp_path / "gray", per_class=2, size=16, seed=0)
    result = CliRunner().invoke(app, ["harmonize", str(gray), "--method", "labmatch", "--reference", str(gray),
                                      "--out", str(tmp_path / "out"), "--no-measure"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0] and "histmatch" in lines[0], result.output
    assert not (tmp_path / "out" / "harmonizer.json").exists()
