"""Per-block descriptors and BN moments from the embedding's own pass, and the shift fingerprint built on them.

Known answers: every architecture gives one descriptor per non-head block with the block's channel count; the
descriptors and BN moments equal what the feature maps give directly; planted input-level shifts (contrast, blur,
noise on the same images) land in the first block of a pre-trained network, not the last; null splits are flagged
no more often than the nominal rate; the BN distance is ~0 for inputs with a layer's own running statistics and
grows, as the Gaussian KL formula says, with a planted shift.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

import shiftkit.features
from shiftkit.data import load_table
from shiftkit.data.synthetic import CLASSES, make_image
from shiftkit.features import extract
from shiftkit.models import ARCHITECTURES, build_model
from shiftkit.models.blocks import BlockProbe, batchnorm_layers, block_output_modules
from shiftkit.models.registry import AdaptedModel
from shiftkit.shift.fingerprint import auc_interval, block_shift, pretraining_distance, shift_peak

CPU = torch.device("cpu")
ALPHA = 0.05


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The profiles run hundreds of small PCAs and logistic regressions; on a shared 2-core machine a second
    OpenBLAS thread makes each ~10x slower (the threads wait on each other), so these tests use one."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield

# Output channels of each non-head block (torchvision's / the Lite0 package's published layer widths).
CHANNELS = {
    "resnet18": [64, 64, 128, 256, 512],
    "resnet50": [64, 256, 512, 1024, 2048],
    "densenet121": [64, 256, 128, 512, 256, 1024, 512, 1024],
    "vgg19": [64, 128, 256, 512, 512],
    "efficientnet_lite0": [16, 40, 80, 112, 1280],
}


# ------------------------------------------------------------------------------------------ blocks per architecture


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_gives_one_descriptor_per_non_head_block(arch):
    torch.manual_seed(0)
    adapted = build_model(arch, 3, "none", image_size=32)
    adapted.model.eval()
    outputs = block_output_modules(adapted)
    assert [b for b, _ in outputs] == [name for name, _ in adapted.blocks[:-1]]  # every block but the head's
    calls: list[str] = []
    prefixes = {p for _, block in adapted.blocks for p in block}
    handles = [m.register_forward_hook(lambda *_, n=n: calls.append(n))
               for n, m in adapted.model.named_modules() if n in prefixes]
    with BlockProbe(adapted) as probe, torch.no_grad():
        adapted.model(torch.randn(3, 3, 32, 32))
    for handle in handles:
        handle.remove()
    for (block, path), (_, block_prefixes) in zip(outputs, adapted.blocks):
        called = [c for c in calls if c in block_prefixes]
        assert called[-1] == path, f"{block}: the pass ends the block at {called[-1]}, not {path}"
    descriptors = probe.descriptors()
    assert list(descriptors) == [b for b, _ in outputs]
    assert [d.shape for d in descriptors.values()] == [(3, 2 * c) for c in CHANNELS[arch]]
    assert all(d.dtype == np.float32 and np.isfinite(d).all() for d in descriptors.values())
    moments = probe.bn_moments()
    assert list(moments) == [path for path, _ in batchnorm_layers(adapted)]
    assert (len(moments) == 0) == (arch == "vgg19")


def test_descriptors_and_bn_moments_equal_the_feature_maps_statistics():
    torch.manual_seed(0)
    adapted = build_model("resnet18", 3, "none", image_size=32)
    adapted.model.eval()
    maps: dict[str, list[torch.Tensor]] = {"layer2": [], "layer1.0.bn1": []}
    hooks = [adapted.model.layer2.register_forward_hook(lambda m, a, out: maps["layer2"].append(out)),
             adapted.model.layer1[0].bn1.register_forward_pre_hook(lambda m, a: maps["layer1.0.bn1"].append(a[0]))]
    batches = [torch.randn(5, 3, 32, 32) * 3 + 40 for _ in range(3)]  # a large offset: moments merged stably
    with BlockProbe(adapted) as probe, torch.no_grad():
        for batch in batches:
            adapted.model(batch)
    for hook in hooks:
        hook.remove()
    out = torch.cat(maps["layer2"]).double().numpy()
    expected = np.concatenate([out.mean(axis=(2, 3)), out.std(axis=(2, 3))], axis=1)
    np.testing.assert_allclose(probe.descriptors()["layer2"], expected, rtol=1e-4, atol=1e-5)
    inputs = torch.cat(maps["layer1.0.bn1"]).double().numpy()
    moments = probe.bn_moments()["layer1.0.bn1"]
    assert moments["block"] == "layer1" and moments["count"] == 15 * 8 * 8
    np.testing.assert_allclose(moments["mean"], inputs.mean(axis=(0, 2, 3)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(moments["var"], inputs.var(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- extract and cache


def test_extract_with_blocks_keeps_the_embeddings_and_the_cache_round_trips(phantom_dir, tmp_path, monkeypatch):
    table = load_table(phantom_dir)
    torch.manual_seed(0)
    adapted = build_model("resnet18", 3, "none", image_size=32)
    plain = extract(table, adapted, CPU, batch_size=8)
    full = extract(table, adapted, CPU, batch_size=8, blocks=True)
    assert plain.blocks is None and plain.bn_moments is None
    np.testing.assert_array_equal(plain.embeddings, full.embeddings)
    assert [d.shape for d in full.blocks.values()] == [(len(table), 2 * c) for c in CHANNELS["resnet18"]]
    assert len(full.bn_moments) == 20  # resnet18: bn1, 2 in each of its 8 basic blocks, 3 in downsample paths

    runs = []
    real = shiftkit.features.head_inputs_and_outputs

    def counted(*args, **kwargs):
        runs.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(shiftkit.features, "head_inputs_and_outputs", counted)
    cache = tmp_path / "cache"
    extract(table, adapted, CPU, batch_size=8, cache_dir=cache)  # an entry without blocks (as before this change)
    again = extract(table, adapted, CPU, batch_size=8, cache_dir=cache)
    assert len(runs) == 1 and again.blocks is None
    np.testing.assert_array_equal(again.embeddings, plain.embeddings)
    extract(table, adapted, CPU, batch_size=8, cache_dir=cache, blocks=True)  # that entry lacks blocks: recomputed
    assert len(runs) == 2
    cached = extract(table, adapted, CPU, batch_size=8, cache_dir=cache, blocks=True)
    assert len(runs) == 2
    assert list(cached.blocks) == list(full.blocks)
    for name in full.blocks:
        np.testing.assert_array_equal(cached.blocks[name], full.blocks[name])
    assert list(cached.bn_moments) == list(full.bn_moments)
    for layer, moments in full.bn_moments.items():
        assert cached.bn_moments[layer]["block"] == moments["block"]
        assert cached.bn_moments[layer]["count"] == moments["count"]
        np.testing.assert_array_equal(cached.bn_moments[layer]["mean"], moments["mean"])
        np.testing.assert_array_equal(cached.bn_moments[layer]["var"], moments["var"])
    plain_again = extract(table, adapted, CPU, batch_size=8, cache_dir=cache)  # the richer entry serves both
    assert len(runs) == 2 and plain_again.blocks is None
    np.testing.assert_array_equal(plain_again.embeddings, plain.embeddings)


# ------------------------------------------------------------------------------------------ where the shift lands


def _contrast(images: np.ndarray) -> np.ndarray:
    mean = images.mean(axis=(1, 2), keepdims=True)
    return (images - mean) * 1.5 + mean


def _blur(images: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.gaussian_filter(image, 1.0) for image in images])


def _noise(images: np.ndarray) -> np.ndarray:
    return images + np.random.default_rng(1).normal(0, 12, images.shape)


@pytest.fixture(scope="module")
def lite0_descriptors():
    """Block descriptors of 160 textured 64 px images through ImageNet-pre-trained EfficientNet-Lite0: the first
    and last 80 unchanged, and the last 80 again with each planted input-level change."""
    rng = np.random.default_rng(0)
    images = np.stack([make_image(CLASSES[i % 3], 64, rng) for i in range(160)]).astype(np.float32)
    adapted = build_model("efficientnet_lite0", 3, "imagenet", image_size=64)
    adapted.model.eval()

    def describe(batch: np.ndarray) -> dict[str, np.ndarray]:
        rgb = torch.from_numpy(np.repeat(np.clip(batch, 0, 255).astype(np.uint8)[:, None], 3, axis=1))
        with BlockProbe(adapted, bn=False) as probe, torch.no_grad():
            adapted.model(adapted.inputs(rgb, CPU))
        return probe.descriptors()

    first, second = images[:80], images[80:]
    return {"first": describe(first), "second": describe(second),
            **{name: describe(change(second)) for name, change in
               (("contrast", _contrast), ("blur", _blur), ("noise", _noise))}}


@pytest.mark.parametrize("change", ["contrast", "blur", "noise"])
def test_planted_input_level_shift_peaks_in_the_first_block(lite0_descriptors, change):
    null = block_shift(lite0_descriptors["first"], lite0_descriptors["second"], permutations=100)
    shifted = block_shift(lite0_descriptors["first"], lite0_descriptors[change], permutations=100)
    excess = [s["mmd"] - n["mmd"] for s, n in zip(shifted, null)]  # MMD² above the null split of the same data
    assert excess[0] > 2 * excess[-1], f"{change}: MMD² above null by block {np.round(excess, 3)}"
    assert shifted[0]["shifted"] and not any(row["shifted"] for row in null)
    assert shifted[0]["auc"] - 0.5 >= shifted[-1]["auc"] - 0.5
    lo, hi = shifted[0]["auc_ci"]
    assert lo <= shifted[0]["auc"] <= hi
    peak = shift_peak(shifted)
    assert peak["index"] == 0 and peak["of"] == 5, peak
    assert max(row["scaled"] for row in peak["profile"]) == 1.0
    assert all(0.0 <= row["scaled"] <= 1.0 for row in peak["profile"])


def test_null_splits_flag_no_block_above_the_nominal_rate(lite0_descriptors):
    """100 random halves of the same 160 images: the BH-corrected profile flags some block in at most 11 of them.
    BH keeps the chance of any false flag at 5% when nothing shifted (P(> 11 of 100) ≈ 0.005); without the
    correction, any of the 5 blocks' tests at 5% flagged 15 of these 100 splits."""
    pooled = {name: np.vstack([lite0_descriptors["first"][name], lite0_descriptors["second"][name]])
              for name in lite0_descriptors["first"]}
    flagged, raw = 0, []
    for seed in range(100):
        order = np.random.default_rng(100 + seed).permutation(160)
        source = {name: values[order[:80]] for name, values in pooled.items()}
        target = {name: values[order[80:]] for name, values in pooled.items()}
        profile = block_shift(source, target, permutations=100, seed=seed, classifier=False)
        flagged += any(row["shifted"] for row in profile)
        raw.extend(row["p_value"] for row in profile)
    assert flagged <= 11, f"a null split was flagged in {flagged} of 100 repetitions"
    assert np.mean(np.asarray(raw) < ALPHA) <= 0.09  # each block's own test is calibrated too (500 tests)


def test_shift_peak_breaks_auc_ties_with_mmd_and_says_so():
    rows = [{"block": "a", "index": 0, "auc": 1.0, "mmd": 0.2}, {"block": "b", "index": 1, "auc": 1.0, "mmd": 0.5},
            {"block": "c", "index": 2, "auc": 0.7, "mmd": 0.9}]
    peak = shift_peak(rows)
    assert (peak["block"], peak["by"]) == ("b", "mmd")
    rows[1]["auc"] = 0.99  # a saturated classifier: 0.99 against 1.0 is a tie, the MMD² decides
    assert (shift_peak(rows)["block"], shift_peak(rows)["by"]) == ("b", "mmd")
    rows[1]["auc"] = 0.95
    peak = shift_peak(rows)
    assert (peak["block"], peak["by"]) == ("a", "auc")
    assert [row["scaled"] for row in peak["profile"]] == pytest.approx([1.0, 0.45 / 0.5, 0.2 / 0.5])


def test_auc_interval_narrows_with_samples_and_covers_the_estimate():
    small, large = auc_interval(0.8, 20, 20), auc_interval(0.8, 2000, 2000)
    assert small[0] < large[0] < 0.8 < large[1] < small[1]
    assert large[1] - large[0] < 0.05


# --------------------------------------------------------------------------------------- distance from pre-training


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn1(self.conv(self.bn0(x))).mean(dim=(2, 3)))


def _tiny() -> AdaptedModel:
    net = _Tiny().eval()
    net.bn0.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    net.bn0.running_var.copy_(torch.tensor([0.25, 4.0, 1.0]))
    blocks = [("first", ["bn0"]), ("second", ["conv", "bn1"]), ("head", ["fc"])]
    return AdaptedModel("tiny", net, "fc", blocks, preprocessing=None, weights="none")


def _first_block_distance(adapted: AdaptedModel, delta: float, scale: float) -> dict:
    """Inputs N(running_mean + delta·sd, (scale·sd)²) per channel, 8 batches, through the probe."""
    mean = adapted.model.bn0.running_mean.view(1, 3, 1, 1)
    sd = adapted.model.bn0.running_var.sqrt().view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(0)
    with BlockProbe(adapted, descriptors=False) as probe, torch.no_grad():
        for _ in range(8):
            adapted.model(mean + delta * sd + scale * sd * torch.randn(16, 3, 16, 16, generator=generator))
    return pretraining_distance(adapted, probe.bn_moments())[0]


def test_bn_distance_is_zero_at_the_running_statistics_and_grows_with_a_planted_shift():
    adapted = _tiny()
    matched = _first_block_distance(adapted, 0.0, 1.0)
    assert matched["block"] == "first" and matched["layers"] == 1 and matched["channels"] == 3
    assert matched["kl"] < 1e-3 and matched["mean_shift"] < 0.02
    distances = [_first_block_distance(adapted, delta, scale) for delta, scale in
                 ((0.5, 1.0), (1.0, 1.0), (1.0, 2.0), (2.0, 2.0))]
    kls = [d["kl"] for d in distances]
    assert all(a < b for a, b in zip([matched["kl"]] + kls, kls))
    # KL(N(m + δσ, s²σ²) || N(m, σ²)) = (s² + δ² - 1)/2 - ln s  (eps is 1e-5, negligible at these variances)
    for (delta, scale), d in zip(((0.5, 1.0), (1.0, 1.0), (1.0, 2.0), (2.0, 2.0)), distances):
        assert d["kl"] == pytest.approx((scale**2 + delta**2 - 1) / 2 - np.log(scale), rel=0.05, abs=2e-3)
        assert d["mean_shift"] == pytest.approx(delta, rel=0.05, abs=0.02)
