"""``shiftkit diagnose`` on small generated domains: report keys, planted shifts found, nulls not flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.data.synthetic import CLASSES, make_image

runner = CliRunner()
FAST = ["--image-size", "64", "--permutations", "200", "--bootstrap", "50", "--device", "cpu"]


def write_domain(root: Path, counts: dict[str, int], seed: int, contrast: float = 1.0, blur: float = 0.0) -> Path:
    """A 'hospital': phantoms per class; another scanner is lower contrast and blurrier."""
    rng = np.random.default_rng(seed)
    for kind, count in counts.items():
        (root / kind).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image = make_image(kind, 64, rng).astype(np.float32)
            image = np.clip(128 + contrast * (image - 128), 0, 255).astype(np.uint8)
            pil = Image.fromarray(image)
            if blur:
                pil = pil.filter(ImageFilter.GaussianBlur(blur))
            pil.save(root / kind / f"{kind}_{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    base = tmp_path_factory.mktemp("domains")
    balanced = {c: 30 for c in CLASSES}
    return {
        "source": write_domain(base / "source", balanced, seed=0),
        "same": write_domain(base / "same", balanced, seed=1),
        "shifted": write_domain(base / "shifted", {"oval": 54, "round": 18, "spiky": 8}, seed=2, contrast=0.5, blur=1.2),
    }


def diagnose(source, target, out, *extra):
    result = runner.invoke(app, ["diagnose", str(source), str(target), "--out", str(out), *FAST, *map(str, extra)])
    return result


def test_report_has_the_documented_keys_and_finds_planted_shifts(domains, tmp_path):
    result = diagnose(domains["source"], domains["shifted"], tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"covariate", "label", "concept", "dataset", "verdict", "settings"} <= set(report)
    for test in ("mmd", "domain_classifier", "ot", "bbsd"):
        assert {"statistic", "p_value"} <= set(report["covariate"][test])
        assert report["covariate"][test]["p_value"] < 0.05, test
    label = report["label"]
    assert {"method", "source_prior", "target_prior", "ci", "p_value"} <= set(label)
    true = {"oval": 54 / 80, "round": 18 / 80, "spiky": 8 / 80}
    assert label["true_target_prior"] == pytest.approx(true)
    l1 = sum(abs(label["target_prior"][c] - true[c]) for c in CLASSES)
    assert l1 < 0.25, label["target_prior"]
    assert label["p_value"] < 0.05
    assert report["verdict"]["covariate"]["level"] in ("mild", "strong")
    assert report["verdict"]["label"]["level"] in ("mild", "strong")
    assert report["concept"] is not None  # the target folder is labelled
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64") >= 2
    assert (tmp_path / "plots" / "embedding.png").is_file()
    assert "Covariate shift" in result.output
    classifier = label["details"]["classifier"]  # what the priors rest on, said in the report
    assert classifier["representation"] in ("embedding", "early-block statistics")
    assert classifier["n_held_out"] == report["dataset"]["n_source"]  # cross-fitted: every source image held out
    page = (tmp_path / "report.html").read_text()
    assert f"on the {classifier['representation']} ({classifier['held_out']})" in page
    for c in CLASSES:  # priors to 3 decimals (a prior of 1e-11 was printed as 1e-11, 0.65661 as 0.6566)
        shown = f"{round(label['target_prior'][c], 3):.4g}"
        assert f'<td class="num">{shown}</td><td>{label["ci"][c][0]:.3f} –' in page


def test_same_scanner_same_priors_is_not_flagged(domains, tmp_path):
    result = diagnose(domains["source"], domains["same"], tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"]["covariate"]["level"] == "none", report["verdict"]
    assert report["verdict"]["label"]["level"] == "none", report["verdict"]


def test_unlabelled_target_folder_still_gets_priors(domains, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(domains["shifted"].rglob("*.png"))[::2]:
        (flat / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    result = diagnose(domains["source"], flat, tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["concept"] is None and report["label"]["true_target_prior"] is None
    assert report["label"]["target_prior"]["oval"] > report["label"]["source_prior"]["oval"]


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_a_target_of_one_image_is_a_clear_error(domains, tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    (single / "a.png").write_bytes(next(domains["shifted"].rglob("*.png")).read_bytes())
    line = _one_line_error(diagnose(domains["source"], single, tmp_path / "out"))
    assert "1 image" in line


def test_unknown_test_name(domains, tmp_path):
    line = _one_line_error(diagnose(domains["source"], domains["same"], tmp_path, "--tests", "mmd,kl"))
    assert "unknown test 'kl'" in line


def test_embeddings_are_cached_by_content(domains, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = diagnose(domains["source"], domains["same"], tmp_path / "a", "--cache-dir", cache, "--tests", "mmd")
    assert first.exit_code == 0, first.output
    import shiftkit.features

    def must_not_run(*args, **kwargs):
        raise AssertionError("the network ran although the embeddings were cached")

    monkeypatch.setattr(shiftkit.features, "head_inputs_and_outputs", must_not_run)
    second = diagnose(domains["source"], domains["same"], tmp_path / "b", "--cache-dir", cache, "--tests", "mmd")
    assert second.exit_code == 0, second.output
    a = json.loads((tmp_path / "a" / "report.json").read_text())["covariate"]["mmd"]
    b = json.loads((tmp_path / "b" / "report.json").read_text())["covariate"]["mmd"]
    assert a["statistic"] == b["statistic"] and a["p_value"] == b["p_value"]


def _dicom(path: Path, spacing: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.integers(0, 1000, (48, 48)).astype(np.int16))
    image.SetSpacing((spacing, spacing))
    image.SetMetaData("0010|0010", "Doe^Jane")  # patient name: must never reach a report
    image.SetMetaData("0010|0020", "PID-4711")
    image.SetMetaData("0008|0070", "AcmeScan")
    sitk.WriteImage(image, str(path))


def test_acquisition_metadata_differences_without_patient_identifiers(tmp_path):
    for name, spacing in (("a", 0.5), ("b", 0.8)):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(6):
            _dicom(folder / f"{i}.dcm", spacing, seed=i + (0 if name == "a" else 100))
    result = diagnose(tmp_path / "a", tmp_path / "b", tmp_path / "out", "--tests", "mmd,domain_classifier")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = {row["field"]: row for row in report["covariate"]["metadata"]}
    assert rows["spacing_x"]["differs"] and not rows["manufacturer"]["differs"]
    for output in (tmp_path / "out").rglob("*"):
        if output.is_file() and output.suffix in (".json", ".html"):
            text = output.read_text()
            assert "Doe^Jane" not in text and "PID-4711" not in text


def test_a_class_too_rare_to_calibrate_leaves_label_shift_unmeasured_but_reports_the_rest(domains, tmp_path):
    source = tmp_path / "source"
    for kind in ("oval", "round"):
        (source / kind).mkdir(parents=True)
        for path in sorted((domains["source"] / kind).glob("*.png"))[:12]:
            (source / kind / path.name).write_bytes(path.read_bytes())
    (source / "spiky").mkdir()
    single = next((domains["source"] / "spiky").glob("*.png"))
    (source / "spiky" / single.name).write_bytes(single.read_bytes())
    result = diagnose(source, domains["shifted"], tmp_path / "out", "--tests", "mmd")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["label"] is None and report["verdict"]["label"]["level"] == "not measured"
    assert "spiky" in report["verdict"]["label"]["reason"]
    assert report["covariate"]["mmd"]["p_value"] < 0.05


def _fake_table(n: int, name: str):
    from shiftkit.data.table import ImageRecord, ImageTable

    records = tuple(ImageRecord(path=Path(f"/nonexistent/{name}_{i}.png")) for i in range(n))
    return ImageTable(records=records, classes=(), source=name)


def test_null_is_not_flagged_above_the_nominal_rate_on_high_dimensional_embeddings():
    """Two samples of one 512-d distribution with a decaying spectrum, through diagnose's own PCA + MMD/OT/BBSD:
    a PCA fitted on one domain only would break exchangeability (it rejected in most runs); the pooled fit does not."""
    from shiftkit.features import Representation
    from shiftkit.shift.diagnose import DiagnoseRequest, Embedded, measure

    scales = 1.0 / np.sqrt(np.arange(1, 513))
    rejections = 0
    repetitions = 20
    for seed in range(repetitions):
        rng = np.random.default_rng(seed)
        source, target = (rng.normal(size=(60, 512)) * scales for _ in range(2))
        data = Embedded(Representation(source.astype(np.float32)), Representation(target.astype(np.float32)),
                        _fake_table(60, "s"), _fake_table(60, "t"), "none", "none")
        request = DiagnoseRequest(source=Path("s"), target=Path("t"), tests=("mmd", "ot", "bbsd"), permutations=100,
                                  pca=32, seed=seed)
        profile = measure(request, data)
        rejections += profile.verdict["covariate"].level != "none"
    assert rejections / repetitions <= 0.15, rejections


def test_partial_target_labels_from_a_relative_folder_use_the_source_class_numbers(domains, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flat = Path("target_flat")
    flat.mkdir()
    images = sorted(domains["shifted"].rglob("*.png"))
    for path in images:
        (flat / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    labelled = [p for p in sorted(flat.iterdir()) if not p.name.startswith("round")][::4]  # oval and spiky only
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(
        f"{(tmp_path / p).resolve()},{p.name.split('_')[0]}\n" for p in labelled))
    result = diagnose(domains["source"], flat, "out", "--target-labels", "labels.csv", "--max-images", "60",
                      "--tests", "mmd")
    assert result.exit_code == 0, result.output
    report = json.loads(Path("out/report.json").read_text())
    counts = report["dataset"]["target_counts"]
    assert list(counts) == list(CLASSES) and counts["round"] == 0  # numbered as the source numbers its classes
    assert counts["oval"] > 0 and counts["spiky"] > 0
    assert report["dataset"]["target_labelled"] == sum(counts.values())
    assert report["concept"] is not None


@pytest.mark.parametrize("option, message", [(["--pca", "-1"], "--pca"), (["--batch-size", "0"], "--batch-size")])
def test_bad_diagnose_options_are_one_line_errors(domains, tmp_path, option, message):
    line = _one_line_error(diagnose(domains["source"], domains["same"], tmp_path, *option))
    assert message in line


def test_a_finetuned_checkpoint_embeds_and_classifies(domains, tmp_path):
    run = tmp_path / "run"
    trained = runner.invoke(app, ["finetune", str(domains["source"]), "--out", str(run), "--arch", "resnet18",
                                  "--weights", "none", "--image-size", "32", "--epochs", "1", "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    result = diagnose(domains["same"], domains["shifted"], tmp_path / "out", "--checkpoint", run,
                      "--tests", "mmd,bbsd")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["arch"] == "resnet18" and report["settings"]["checkpoint"] == str(run)
    assert report["covariate"]["bbsd"]["details"]["dimensions"] == 3  # the model's softmax outputs
    assert set(report["label"]["target_prior"]) == set(CLASSES)


def test_a_checkpoint_folder_without_metrics_is_a_clear_error(domains, tmp_path):
    (tmp_path / "run").mkdir()
    line = _one_line_error(diagnose(domains["source"], domains["same"], tmp_path / "out", "--checkpoint",
                                    tmp_path / "run"))
    assert "not a finetune output folder" in line


def test_diagnose_out_naming_a_file_is_a_one_line_error(domains, tmp_path):
    target = tmp_path / "report"
    target.write_text("keep me")
    line = _one_line_error(diagnose(domains["source"], domains["same"], target))
    assert "is a file, not a folder" in line and target.read_text() == "keep me"


def test_max_images_below_the_number_of_classes_falls_back_to_a_random_subset(domains):
    from shiftkit.data.table import load_table, subsample_table  # diagnose --max-images

    table = load_table(domains["source"])
    for limit in (2, 45):
        subset = subsample_table(table, limit, seed=0)
        assert len(subset) == limit and len({r.path for r in subset.records}) == limit
    assert set(subsample_table(table, 45, seed=0).class_counts().values()) == {15}  # stratified when it can be
