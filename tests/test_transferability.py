"""Frozen-feature quality (LogME, cross-validated linear probe) and the per-block relative gradient norm."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from shiftkit.data.preprocess import Preprocessing
from shiftkit.models import build_model
from shiftkit.models.registry import AdaptedModel
from shiftkit.shift.transferability import gradient_signal, linear_probe_score, logme


# -- LogME ---------------------------------------------------------------------------------------------------------
def reference_logme(f: np.ndarray, y: np.ndarray, tol: float = 0.01, max_iter: int = 11) -> float:
    """TLlib's ``log_maximum_evidence`` (tllib/ranking/logme.py) re-derived directly: the d x d matrix F^T F
    decomposed, m and the residual formed explicitly, classes ``range(max + 1)``."""
    f = f.astype(np.float64)
    n, d = f.shape
    s, v = np.linalg.eigh(f.T @ f)
    evidences = []
    for c in range(int(y.max()) + 1):
        t = (y == c).astype(np.float64)
        proj = v.T @ (f.T @ t)
        alpha, beta, lam = 1.0, 1.0, 1.0
        for _ in range(max_iter):
            gamma = np.sum(s / (s + lam))
            m = v @ (proj * beta / (alpha + beta * s))
            alpha_de = m @ m
            alpha = gamma / alpha_de
            beta_de = np.sum((t - f @ m) ** 2)
            beta = (n - gamma) / beta_de
            new_lam = alpha / beta
            if abs(new_lam - lam) / lam < tol:
                break
            lam = new_lam
        evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * s))
                    - beta / 2 * beta_de - alpha / 2 * alpha_de - n / 2 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


@pytest.mark.parametrize("n, d, classes", [(200, 16, 3), (40, 64, 4), (60, 60, 2), (300, 5, 5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logme_matches_the_tllib_formula_for_n_above_and_below_d(n, d, classes, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    f = rng.normal(size=(n, d)) + 0.5 * rng.normal(size=(classes, d))[y]
    assert logme(f, y) == pytest.approx(reference_logme(f, y), rel=1e-6)
    converged = dict(tol=1e-12, max_iter=200)
    assert logme(f, y, **converged) == pytest.approx(reference_logme(f, y, **converged), rel=1e-6)


def test_logme_accepts_label_names_and_ignores_their_order():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 90)
    f = rng.normal(size=(90, 8)) + rng.normal(size=(3, 8))[y]
    names = np.array(["nv", "mel", "bcc"])[y]
    assert logme(f, names) == pytest.approx(logme(f, y), rel=1e-12)


def test_logme_is_higher_for_features_that_separate_the_classes_than_for_noise():
    rng = np.random.default_rng(0)
    for n, d in ((150, 32), (30, 128)):  # n > d and n < d
        y = np.arange(n) % 3
        noise = rng.normal(size=(n, d))
        separable = rng.normal(size=(n, d)) + 3.0 * rng.normal(size=(3, d))[y]
        shuffled = logme(separable, rng.permutation(y))
        assert logme(separable, y) > logme(noise, y) + 0.1
        assert logme(separable, y) > shuffled + 0.1  # the same features, labels no longer tied to them


def test_logme_refuses_unusable_input():
    with pytest.raises(ValueError, match="labels"):
        logme(np.zeros((5, 3)) + 1, np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        logme(np.full((5, 3), np.nan), np.zeros(5))
    with pytest.raises(ValueError, match="all zero"):
        logme(np.zeros((5, 3)), np.arange(5) % 2)


# -- linear probe --------------------------------------------------------------------------------------------------
PROBE = dict(bootstrap=300, Cs=(0.01, 0.1, 1.0))


def test_linear_probe_is_at_chance_on_noise_labels_and_its_interval_covers_chance():
    misses, values = 0, {"balanced_accuracy": [], "auroc_macro": []}
    for seed in range(10):
        rng = np.random.default_rng(seed)
        f = rng.normal(size=(120, 10))
        y = rng.permutation(np.arange(120) % 3)
        result = linear_probe_score(f, y, seed=seed, **PROBE)
        assert result["testable"] and result["folds"] == 5
        json.dumps(result)
        for key, chance in (("balanced_accuracy", 1 / 3), ("auroc_macro", 0.5)):
            values[key].append(result[key]["value"])
            assert result[key]["ci_high"] - result[key]["ci_low"] > 0.05  # an interval, not a point
            misses += not (result[key]["ci_low"] <= chance <= result[key]["ci_high"])
            assert result["above_chance"][key] == (result[key]["ci_low"] > chance)
    assert misses <= 3  # 20 intervals at 95 %: one expected
    assert np.mean(values["balanced_accuracy"]) == pytest.approx(1 / 3, abs=0.04)
    assert np.mean(values["auroc_macro"]) == pytest.approx(0.5, abs=0.04)


def test_bootstrap_auroc_is_sklearn_roc_auc_score():
    from sklearn.metrics import roc_auc_score

    from shiftkit.shift.transferability import _auroc_ovr_rows

    rng = np.random.default_rng(0)
    for k in (2, 4):
        y = rng.integers(0, k, (3, 50))
        y[:, :k] = np.arange(k)
        scores = np.round(rng.dirichlet(np.ones(k), (3, 50)), 1) + 1e-3  # coarse: ties, as bootstrap duplicates
        scores /= scores.sum(2, keepdims=True)
        expected = [roc_auc_score(y[i], scores[i][:, 1]) if k == 2 else
                    roc_auc_score(y[i], scores[i], multi_class="ovr") for i in range(3)]
        assert _auroc_ovr_rows(y, scores, k) == pytest.approx(expected, rel=1e-12)


def test_linear_probe_is_high_on_separable_features():
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    f = rng.normal(size=(90, 20)) + 2.5 * rng.normal(size=(3, 20))[y]
    result = linear_probe_score(f, y, **PROBE)
    assert result["balanced_accuracy"]["value"] > 0.9
    assert result["auroc_macro"]["value"] > 0.97
    assert result["above_chance"] == {"balanced_accuracy": True, "auroc_macro": True}
    assert len(result["balanced_accuracy"]["per_fold"]) == 5 and len(result["C_per_fold"]) == 5


def test_linear_probe_lowers_folds_for_a_small_class_and_refuses_a_singleton_class_without_raising():
    rng = np.random.default_rng(1)
    y = np.array(["a"] * 30 + ["b"] * 30 + ["c"] * 3)
    f = rng.normal(size=(63, 6))
    result = linear_probe_score(f, y, **PROBE)
    assert result["testable"] and result["folds"] == 3 and result["folds_requested"] == 5
    assert result["class_counts"] == {"a": 30, "b": 30, "c": 3}
    single = linear_probe_score(f[:61], y[:61], **PROBE)
    assert single["testable"] is False and "'c'" in single["reason"] and single["balanced_accuracy"] is None
    one_class = linear_probe_score(f[:30], y[:30], **PROBE)
    assert one_class["testable"] is False and "one class" in one_class["reason"]
    json.dumps(single)


# -- gradient signal -----------------------------------------------------------------------------------------------
class TinyNet(nn.Module):
    """stem conv -> relu -> mid conv -> relu -> (+ a detached side branch) -> mean pool -> fc."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.mid = nn.Conv2d(4, 5, 3, padding=1)
        self.side = nn.Conv2d(5, 5, 1)
        self.fc = nn.Linear(5, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.mid(torch.relu(self.stem(x))))
        h = h + self.side(h).detach()  # the side block never receives a gradient
        return h.mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def tiny_adapted(seed: int = 0, classes: int = 3) -> AdaptedModel:
    torch.manual_seed(seed)
    blocks = [("stem", ["stem"]), ("mid", ["mid"]), ("side", ["side"]), ("fc", ["fc"])]
    return AdaptedModel(arch="tiny", model=TinyNet(classes), head_path="fc", blocks=blocks,
                        preprocessing=Preprocessing(resize=8, crop=8), weights="none")


def image_batches(count: int, size: int = 8, batch: int = 6, classes: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator),
             torch.arange(batch) % classes) for _ in range(count)]


def by_block(entries: list[dict]) -> dict[str, dict]:
    return {e["block"]: e for e in entries}


def test_gradient_signal_leaves_resnet_weights_modes_and_grads_as_they_were():
    torch.manual_seed(0)
    adapted = build_model("resnet18", 2, "none", image_size=32)
    model = adapted.model
    model.train()
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}  # BN running statistics included
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    batches = image_batches(7, size=32, batch=4, classes=2)
    entries = gradient_signal(adapted, batches, "cpu", max_batches=2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training for m in model.modules())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())
    assert [(e["index"], e["block"]) for e in entries] == list(enumerate(["stem", "layer1", "layer2", "layer3",
                                                                           "layer4", "fc"]))
    assert all(e["batches"] == 2 and e["relative_gradient"] > 0 for e in entries)
    assert entries[0]["n_tensors"] == 1 and entries[0]["n_norm_tensors"] == 2  # conv1; bn1 skipped as Auto-RGN does
    assert max(e["relative_to_max"] for e in entries) == pytest.approx(1.0)
    json.dumps(entries)


def test_gradient_signal_of_the_head_is_the_analytic_cross_entropy_gradient():
    adapted = tiny_adapted()
    batches = image_batches(1)
    weights = np.array([0.5, 1.0, 2.0])
    images, targets = batches[0]
    with torch.no_grad():
        h = adapted.model.features(adapted.inputs(images, torch.device("cpu"))).double().numpy()
        W, b = adapted.model.fc.weight.double().numpy(), adapted.model.fc.bias.double().numpy()
    logits = h @ W.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = targets.numpy()
    for class_weights in (None, weights):
        w = np.ones(len(y)) if class_weights is None else class_weights[y]
        residual = w[:, None] * (p - np.eye(3)[y]) / len(y)  # d(sum_i w_i CE_i / n) / d logits
        g_W, g_b = residual.T @ h, residual.sum(0)
        expected = np.sqrt((g_W ** 2).sum() + (g_b ** 2).sum()) / np.sqrt((W ** 2).sum() + (b ** 2).sum())
        fc = by_block(gradient_signal(adapted, batches, "cpu", class_weights=class_weights))["fc"]
        assert fc["relative_gradient"] == pytest.approx(expected, rel=1e-5)
        ratios = [np.linalg.norm(g_W) / np.linalg.norm(W), np.linalg.norm(g_b) / np.linalg.norm(b)]
        assert fc["mean_tensor_ratio"] == pytest.approx(np.mean(ratios), rel=1e-5)


def test_gradient_signal_multilabel_uses_per_label_bce():
    adapted = tiny_adapted()
    images, _ = image_batches(1)[0]
    targets = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float32)
    with torch.no_grad():
        h = adapted.model.features(adapted.inputs(images, torch.device("cpu"))).double().numpy()
        W, b = adapted.model.fc.weight.double().numpy(), adapted.model.fc.bias.double().numpy()
    residual = (1 / (1 + np.exp(-(h @ W.T + b))) - targets.numpy()) / targets.numel()
    expected = np.sqrt(((residual.T @ h) ** 2).sum() + (residual.sum(0) ** 2).sum()) / np.sqrt(
        (W ** 2).sum() + (b ** 2).sum())
    fc = by_block(gradient_signal(adapted, [(images, targets)], "cpu", task="multilabel"))["fc"]
    assert fc["relative_gradient"] == pytest.approx(expected, rel=1e-5)


def test_gradient_signal_detached_block_is_zero_and_rescaling_a_block_divides_its_ratio_by_the_square():
    adapted = tiny_adapted()
    batches = image_batches(3)
    base = by_block(gradient_signal(adapted, batches, "cpu", max_batches=3))
    assert base["side"]["relative_gradient"] == 0.0 and base["side"]["mean_tensor_ratio"] == 0.0
    assert all(base[name]["relative_gradient"] > 0 for name in ("stem", "mid", "fc"))
    # ReLU is positively homogeneous: stem x 10 and mid's weight / 10 compute the same function, so the stem's
    # gradient is 10 x smaller and its weights 10 x larger: its ratio drops exactly 100-fold; the head's is unchanged.
    with torch.no_grad():
        adapted.model.stem.weight.mul_(10)
        adapted.model.stem.bias.mul_(10)
        adapted.model.mid.weight.div_(10)
    scaled = by_block(gradient_signal(adapted, batches, "cpu", max_batches=3))
    assert scaled["stem"]["relative_gradient"] == pytest.approx(base["stem"]["relative_gradient"] / 100, rel=1e-4)
    assert scaled["stem"]["mean_tensor_ratio"] == pytest.approx(base["stem"]["mean_tensor_ratio"] / 100, rel=1e-4)
    assert scaled["fc"]["relative_gradient"] == pytest.approx(base["fc"]["relative_gradient"], rel=1e-4)


def test_gradient_signal_reads_at_most_max_batches_and_refuses_none():
    adapted = tiny_adapted()
    remaining = iter(image_batches(9))
    entries = gradient_signal(adapted, remaining, "cpu", max_batches=4)
    assert {e["batches"] for e in entries} == {4} and len(list(remaining)) == 5
    assert [e["block"] for e in entries] == ["stem", "mid", "side", "fc"]
    with pytest.raises(ValueError, match="no batches"):
        gradient_signal(adapted, [], "cpu")
