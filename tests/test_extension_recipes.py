"""CONTRIBUTING.md's four recipes, followed from outside the package: a covariate test, a harmonizer, a strategy
(with a hyperparameter of its own) and a report section, each registered in this one file and then used by the
commands and their reports end to end, with nothing else changed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.data.synthetic import write_dataset
from shiftkit.finetune.strategies import STRATEGY_CLASSES, ParamGroup, Strategy, register as register_strategy
from shiftkit.harmonize.base import Harmonizer, register as register_harmonizer
from shiftkit.report import sections
from shiftkit.shift import registry
from shiftkit.shift.stats import TestResult

runner = CliRunner()
FAST = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "8", "--device", "cpu"]


# -- (a) a covariate test: one function, one register call -----------------------------------------------------
def mean_gap_test(source, target, *, seed=0):
    """Toy test: the L1 distance between the domain means; p-value 1 (it claims nothing)."""
    s, t = np.asarray(source, float), np.asarray(target, float)
    return TestResult(test="mean_gap", statistic=float(np.abs(s.mean(0) - t.mean(0)).sum()), p_value=1.0,
                      n_source=len(s), n_target=len(t), seed=seed)


# -- (b) a harmonizer: one class with @register (registered once per process: the registry refuses a second class) --
@register_harmonizer("toy_gain")
class ToyGain(Harmonizer):
    """Moves each image's mean part of the way (``strength``) to the reference's mean intensity."""

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__()
        self.strength = float(strength)

    def fit(self, images, masks=None):
        means = [float(np.nanmean(image)) for image, _ in self.fit_images(images, masks)]
        self.state = {"mean": float(np.mean(means))}
        return self

    def transform(self, image, mask=None):
        image = np.asarray(image, dtype=np.float64)
        return image + self.strength * (self._require_fitted()["mean"] - np.nanmean(image))


# -- (c) a strategy that reads a hyperparameter (here an existing one, rgn_batches, as its number of stem blocks) --
class ToyStemAndHead(Strategy):
    """Trains the first ``rgn_batches`` named parameters of the backbone and the head."""

    def param_groups(self):
        stem = [n for n in self.params if n not in self.head_names][: self.config.rgn_batches]
        return [ParamGroup(stem + list(self.head_names), self.lr)]


# -- (d) a report section: measure (its report.json content), html, terminal -----------------------------------
def _brightness(ctx):
    return {"source": float(np.mean(ctx.data.source.embeddings)), "target": float(np.mean(ctx.data.target.embeddings))}


def _brightness_html(page, content, ctx):
    page.table(["domain", "mean embedding value"], [["source", content["source"]], ["target", content["target"]]])


def _brightness_terminal(console, content):
    console.print(f"toy section: source {content['source']:.3f}, target {content['target']:.3f}")


@pytest.fixture
def toys():
    registry.register("mean_gap", label="mean gap (toy)", short="mean gap", input="reduced", run=mean_gap_test)
    register_strategy("toy_stem_head")(ToyStemAndHead)
    sections.register("toy_embedding_mean", title="Toy: mean embedding value", measure=_brightness,
                      html=_brightness_html, terminal=_brightness_terminal, before="settings")
    yield
    registry.unregister("mean_gap")  # the other tests see the built-in registries
    STRATEGY_CLASSES.pop("toy_stem_head", None)
    sections.unregister("toy_embedding_mean")


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    return write_dataset(root / "a", per_class=8, size=32, seed=0), write_dataset(root / "b", per_class=8, size=32, seed=1)


def test_a_registered_covariate_test_and_report_section_reach_diagnose_json_html_and_terminal(toys, domains, tmp_path):
    source, target = domains
    result = runner.invoke(app, ["diagnose", str(source), str(target), "--out", str(tmp_path / "d"),
                                 "--tests", "mmd,mean_gap", "--permutations", "20", "--bootstrap", "10", *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    gap = report["covariate"]["mean_gap"]
    assert gap["statistic"] > 0 and gap["n_source"] == 24 and gap["n_target"] == 24
    assert set(report["toy_embedding_mean"]) == {"source", "target"}
    html = (tmp_path / "d" / "report.html").read_text()
    assert "mean gap (toy)" in html and "Toy: mean embedding value" in html
    assert html.index("Toy: mean embedding value") < html.index("<h2>Settings</h2>")  # placed before "settings"
    assert "mean gap (toy)" in result.output and "toy section: source" in result.output


def test_a_registered_covariate_test_runs_in_the_site_matrix(toys):
    from shiftkit.audit.matrix import shift_matrix

    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 1, (20, 4)), rng.normal(2, 1, (20, 4))])
    matrix = shift_matrix(x, ["a"] * 20 + ["b"] * 20, pca=0, measures=("mmd", "mean_gap"), permutations=20)
    pair = matrix.to_dict()["pairwise"]["a"]["b"]["mean_gap"]
    assert pair["statistic"] == pytest.approx(np.abs(x[:20].mean(0) - x[20:].mean(0)).sum())


def test_an_unknown_test_name_lists_the_registered_ones(toys):
    with pytest.raises(registry.UnknownTestError, match="mean_gap"):
        registry.get("nope")


def test_a_registered_harmonizer_is_a_method_of_harmonize_and_round_trips(domains, tmp_path):
    source, target = domains
    out = tmp_path / "h"
    result = runner.invoke(app, ["harmonize", str(target), "--reference", str(source), "--method", "toy_gain",
                                 "--out", str(out), "--no-measure"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "harmonizer.json").read_text())
    assert saved["kind"] == "toy_gain" and saved["params"] == {"strength": 1.0}
    again = runner.invoke(app, ["harmonize", str(target), "--harmonizer", str(out / "harmonizer.json"),
                                "--out", str(tmp_path / "h2"), "--no-measure"])
    assert again.exit_code == 0, again.output
    first = sorted(p.read_bytes() for p in out.rglob("*.png"))
    assert first and first == sorted(p.read_bytes() for p in (tmp_path / "h2").rglob("*.png"))


def test_a_registered_strategy_trains_through_finetune_and_reads_its_hyperparameter(toys, domains, tmp_path):
    source, _ = domains
    result = runner.invoke(app, ["finetune", str(source), "--strategy", "toy_stem_head", "--epochs", "1",
                                 "--rgn-batches", "2", "--out", str(tmp_path / "f"), *FAST])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert metrics["strategy"] == "toy_stem_head" and len(metrics["history"]) == 1
    assert metrics["config"]["strategy"]["rgn_batches"] == 2
    # it trained what it said: resnet18's first two tensors (conv1.weight 64x3x7x7, bn1.weight 64) and the head
    assert metrics["history"][0]["trainable_params"] == 64 * 3 * 7 * 7 + 64 + (512 * 3 + 3)
