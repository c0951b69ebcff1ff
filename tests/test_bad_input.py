"""Bad input gets one clear line and exit code 2, and leaves no half-written output (issue 8, point 1).

Every case runs through every command in ``COMMANDS``: adding a command (harmonize, audit, ...) is one more
entry there (and one in ``REPORTS`` for its report file). ``python3 tests/test_bad_input.py`` prints the
message and exit code each case gets, as a Markdown table.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.data.synthetic import make_image

runner = CliRunner()

# --batch-size 64: one training batch per epoch
FINETUNE = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "64",
            "--device", "cpu"]
DIAGNOSE = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--permutations", "20",
            "--bootstrap", "10", "--tests", "mmd", "--device", "cpu"]


@dataclass(frozen=True)
class Good:
    """A small valid setup: ``classes`` (folders a/, b/), ``target`` (a flat folder), and their image files."""

    classes: Path
    target: Path

    def images(self, label: str) -> list[Path]:
        return sorted((self.classes / label).iterdir())


# command name -> argv for (DATA under test, out folder, a good second domain, extra options)
COMMANDS: dict[str, Callable[..., list[str]]] = {
    "finetune": lambda data, out, good, *extra: ["finetune", data, "--out", out, *FINETUNE, *extra],
    "diagnose": lambda data, out, good, *extra: ["diagnose", data, good.target, "--out", out, *DIAGNOSE, *extra],
}
REPORTS = {"finetune": "metrics.json", "diagnose": "report.json"}  # where skipped_images is listed


def run(command: str, data: Path, out: Path, good: Good, *extra):
    return runner.invoke(app, [str(a) for a in COMMANDS[command](data, out, good, *extra)])


def _png(path: Path, seed: int, kind: str = "round") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_image(kind, 32, np.random.default_rng(seed))).save(path)
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Good:
    root = tmp_path_factory.mktemp("good")
    for label, kind in (("a", "round"), ("b", "spiky")):
        for i in range(5):
            _png(root / "classes" / label / f"{label}{i}.png", seed=10 * i + len(label), kind=kind)
    for i in range(5):
        _png(root / "target" / f"t{i}.png", seed=100 + i, kind="oval")
    return Good(root / "classes", root / "target")


def _manifest(path: Path, rows: list[tuple], header: str = "path,label") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header.split(","), *rows])
    path.write_text(text.getvalue())
    return path


def _good_rows(good: Good) -> list[tuple]:
    return [(p, label) for label in ("a", "b") for p in good.images(label)]


def _copy(good: Good, root: Path) -> Path:
    data = root / "data"
    shutil.copytree(good.classes, data)
    return data


def _truncate(path: Path, keep: int = 60) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


# -- the bad inputs: each builder returns (DATA, extra options) for one command ------------------------------------

def missing_file(root, good, command):
    return _manifest(root / "m.csv", _good_rows(good) + [("missing.png", "a")]), []


def unreadable_file(root, good, command):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    data = _copy(good, root)
    (data / "a" / "a0.png").chmod(0)
    return data, []


def truncated_png(root, good, command):
    data = _copy(good, root)
    _truncate(data / "b" / "b2.png")
    return data, []


def truncated_jpeg(root, good, command):
    jpeg = root / "cut.jpg"
    Image.fromarray(make_image("oval", 32, np.random.default_rng(0))).save(jpeg, quality=95)
    _truncate(jpeg, len(jpeg.read_bytes()) // 2)
    return _manifest(root / "m.csv", _good_rows(good) + [("cut.jpg", "a")]), []


def dicom_without_pixel_data(root, good, command):
    dicom = root / "nopixels.dcm"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(256, dtype=np.int16).reshape(16, 16)), str(dicom))
    data = dicom.read_bytes()
    dicom.write_bytes(data[: data.find(b"\xe0\x7f\x10\x00")])  # cut at the Pixel Data element
    return _manifest(root / "m.csv", _good_rows(good) + [(dicom, "b")]), []


def text_file_named_png_relative(root, good, command):
    (root / "notes").mkdir()
    (root / "notes" / "scan.png").write_text("not an image")
    return _manifest(root / "m.csv", _good_rows(good) + [("notes/scan.png", "a")]), []


def not_an_image_absolute_path(root, good, command):
    (root / "notes.txt").write_text("not an image")
    return _manifest(root / "m.csv", _good_rows(good) + [(root / "notes.txt", "a")]), []


def not_an_image_relative_path(root, good, command):
    (root / "notes.txt").write_text("not an image")
    return _manifest(root / "m.csv", _good_rows(good) + [("notes.txt", "a")]), []


def manifest_without_path_column(root, good, command):
    return _manifest(root / "m.csv", _good_rows(good), header="file,label"), []


def manifest_without_label_column(root, good, command):
    return _manifest(root / "m.csv", [(p,) for p, _ in _good_rows(good)], header="path"), []


def duplicate_paths(root, good, command):
    rows = _good_rows(good)
    return _manifest(root / "m.csv", rows + [rows[0]]), []


def empty_label(root, good, command):
    rows = _good_rows(good)
    return _manifest(root / "m.csv", rows[:-1] + [(rows[-1][0], "")]), []


def empty_class_folder(root, good, command):
    data = _copy(good, root)
    (data / "c").mkdir()
    return data, []


def manifest_without_rows(root, good, command):
    return _manifest(root / "m.csv", []), []


def manifest_not_utf8(root, good, command):
    path = root / "m.csv"
    path.write_bytes("path,label\ncaf\xe9.png,a\n".encode("latin-1"))
    return path, []


def bad_spacing(root, good, command):
    return _manifest(root / "m.csv", [(p, label, "0.5,-1") for p, label in _good_rows(good)],
                     header="path,label,spacing"), []


def unknown_label_in_target_file(root, good, command):
    if command == "finetune":
        val = _manifest(root / "val.csv", [(good.images("a")[0], "a"), (good.images("b")[0], "cyst")])
        return good.classes, ["--val", val]
    labels = _manifest(root / "labels.csv", [(good.target / "t0.png", "a"), (good.target / "t1.png", "cyst")])
    return good.classes, ["--target-labels", labels]


def domain_of_one_image(root, good, command):
    if command == "finetune":  # one image per class: nothing to split off for validation
        return _manifest(root / "m.csv", [(good.images("a")[0], "a"), (good.images("b")[0], "b")]), []
    return _manifest(root / "m.csv", [(good.images("a")[0], "a")]), []


def missing_data_folder(root, good, command):
    return root / "nope", []


def unknown_bad_image_policy(root, good, command):
    return good.classes, ["--on-bad-image", "ignore"]


def every_image_of_a_class_bad_with_skip(root, good, command):
    data = _copy(good, root)
    for path in (data / "b").iterdir():
        _truncate(path)
    return data, ["--on-bad-image", "skip"]


@dataclass(frozen=True)
class Case:
    build: Callable
    expect: dict  # command -> a fragment of the error line; "*" for any command; None: the command must work

    def fragment(self, command: str) -> str | None:
        return self.expect.get(command, self.expect.get("*"))


CASES = {
    "missing image file": Case(missing_file, {"*": "missing.png: file not found"}),
    "unreadable image file (chmod 000)": Case(unreadable_file, {"*": "a0.png: cannot"}),
    "truncated PNG": Case(truncated_png, {"*": "b2.png: cannot decode image"}),
    "truncated JPEG": Case(truncated_jpeg, {"*": "cut.jpg: cannot decode image"}),
    "DICOM without pixel data": Case(dicom_without_pixel_data, {"*": "nopixels.dcm: DICOM file has no pixel data"}),
    "text file named .png (relative path)": Case(text_file_named_png_relative, {"*": "scan.png: cannot decode image"}),
    "not an image (absolute path)": Case(not_an_image_absolute_path, {"*": "notes.txt: unsupported file type"}),
    "not an image (path relative to manifest)": Case(not_an_image_relative_path, {"*": "notes.txt: unsupported file type"}),
    "manifest without path column": Case(manifest_without_path_column, {"*": "needs a 'path' column"}),
    "manifest without label column": Case(manifest_without_label_column,
                                          {"finetune": "training data needs labels", "diagnose": None}),
    "duplicate path in manifest": Case(duplicate_paths, {"*": "duplicate path"}),
    "empty label in labelled manifest": Case(empty_label, {"*": "empty label"}),
    "empty class folder": Case(empty_class_folder, {"*": "class 'c' has no images"}),
    "manifest without rows": Case(manifest_without_rows, {"*": "has no rows"}),
    "manifest not UTF-8": Case(manifest_not_utf8, {"*": "not UTF-8"}),
    "negative spacing": Case(bad_spacing, {"*": "spacing '0.5,-1' must be positive"}),
    "unknown label in a target/val file": Case(unknown_label_in_target_file,
                                               {"finetune": "val.csv row 3: label 'cyst' is not one of the training",
                                                "diagnose": "labels.csv row 3: label 'cyst' is not one of the source"}),
    "a domain of one image": Case(domain_of_one_image, {"finetune": "too few to split",
                                                        "diagnose": "a shift test needs at least 4"}),
    "missing data folder": Case(missing_data_folder, {"*": "no such file or folder"}),
    "unknown --on-bad-image": Case(unknown_bad_image_policy, {"*": "--on-bad-image must be one of"}),
    "every image of a class bad, with skip": Case(every_image_of_a_class_bad_with_skip,
                                                  {"*": "class 'b' has no readable"}),
}


def _error_line(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.output
    return lines[0]


def _files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file()) if out.exists() else []


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(good, tmp_path, command, case):
    data, extra = CASES[case].build(tmp_path, good, command)
    out = tmp_path / "out"
    result = run(command, data, out, good, *extra)
    fragment = CASES[case].fragment(command)
    if fragment is None:
        assert result.exit_code == 0, result.output
        return
    line = _error_line(result)
    assert line.startswith("error: ") and fragment in line, line
    assert _files(out) == [], "a failed run left files behind"


# -- the policy: skip lists what it left out -----------------------------------------------------------------------

@pytest.mark.parametrize("command", list(COMMANDS))
def test_skip_policy_lists_the_bad_images_in_the_report_and_warns(good, tmp_path, command):
    truncated = _truncate(shutil.copy(good.images("a")[1], tmp_path / "cut.png"))
    rows = _good_rows(good) + [("cut.png", "a"), ("missing.png", "b")]
    data = _manifest(tmp_path / "m.csv", rows)
    result = run(command, data, tmp_path / "out", good, "--on-bad-image", "skip")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / REPORTS[command]).read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped_images"]}
    assert skipped == {"cut.png": "cannot decode image (image file is truncated)", "missing.png": "file not found"}
    assert str(truncated) in {s["path"] for s in report["skipped_images"]}
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "skipped 2 unreadable image(s)" in warning[0], result.output


def test_finetune_finds_bad_images_before_training_and_decodes_each_image_once(good, tmp_path, monkeypatch):
    from shiftkit.finetune import trainer

    data = _copy(good, tmp_path)
    _truncate(data / "b" / "b4.png")
    monkeypatch.setattr(trainer.Trainer, "fit", lambda self: pytest.fail("training started before the check"))
    assert "b4.png" in _error_line(run("finetune", data, tmp_path / "out", good))

    monkeypatch.undo()
    result = run("finetune", data, tmp_path / "skip", good, "--on-bad-image", "skip")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert sum(metrics["sizes"].values()) == 9
    assert metrics["decoded_images"] == 10  # the up-front pass fed the cache: training decoded nothing more


def test_embedding_cache_remembers_skipped_images_and_the_fail_policy_still_fails(good, tmp_path, monkeypatch):
    """diagnose's embedding cache (--cache-dir) stores what was skipped: a cached run reports the same list,
    and a later run with the default policy still stops at the bad image instead of using the cache."""
    import torch
    from torch import nn

    from shiftkit.data import ImageCache, load_table
    from shiftkit.data.preprocess import Preprocessing
    from shiftkit.errors import ImageReadError
    from shiftkit.features import extract
    from shiftkit.models.registry import AdaptedModel

    data = _copy(good, tmp_path)
    _truncate(data / "a" / "a3.png")
    (data / "b" / "b1.png").unlink()
    table = load_table(data)
    manifest = _manifest(tmp_path / "m.csv", [(r.path, r.labels[0]) for r in table.records]
                         + [(data / "b" / "b1.png", "b")])
    table = load_table(manifest)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4), nn.Linear(4, 2))
    adapted = AdaptedModel("tiny", model, "2", [("all", ["0", "1", "2"])], Preprocessing(8, 8), "none")
    decodes = []
    original = ImageCache._decode
    monkeypatch.setattr(ImageCache, "_decode", lambda self, path: decodes.append(path) or original(self, path))
    first = extract(table, adapted, torch.device("cpu"), cache_dir=tmp_path / "cache", on_bad_image="skip")
    assert sorted(Path(s.path).name for s in first.skipped) == ["a3.png", "b1.png"]
    assert first.embeddings.shape == (len(table) - 2, 4)
    decodes.clear()
    again = extract(table, adapted, torch.device("cpu"), cache_dir=tmp_path / "cache", on_bad_image="skip")
    assert decodes == [] and again.skipped == first.skipped
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    with pytest.raises(ImageReadError, match="a3.png: cannot decode image"):
        extract(table, adapted, torch.device("cpu"), cache_dir=tmp_path / "cache")
    with pytest.raises(ImageReadError, match="b1.png: file not found"):  # the disk image cache hashes files first
        ImageCache(Preprocessing(8, 8), disk_dir=tmp_path / "images").get(data / "b" / "b1.png")


def test_a_file_without_read_permission_is_named_even_when_running_as_root(monkeypatch, tmp_path):
    from PIL import Image as PILImage

    from shiftkit.data.readers import read_image
    from shiftkit.errors import ImageReadError

    path = _png(tmp_path / "locked.png", seed=0)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(PILImage, "open", denied)
    with pytest.raises(ImageReadError, match="locked.png: cannot read file \\(permission denied\\)"):
        read_image(path)


def test_a_training_set_one_image_past_a_full_batch_trains(good, tmp_path):
    data = _manifest(tmp_path / "m.csv", _good_rows(good))  # 10 images, --val given: 10 train = 9 + 1
    val = _manifest(tmp_path / "val.csv", [(good.images("a")[0], "a"), (good.images("b")[0], "b")])
    out = tmp_path / "out"
    result = run("finetune", data, out, good, "--val", val, "--batch-size", "9")
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'metrics.json'}" in result.output.replace("\n", "")  # the last line, however wrapped
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sizes"] == {"train": 10, "val": 2} and metrics["epochs_run"] == 1
    # every image trained: the odd one joins the batch before it (BatchNorm has no statistics for a batch of one)
    assert np.isfinite(metrics["history"][0]["train_loss"])


def test_small_labelled_domains_get_a_concept_result(good, tmp_path):
    # 10 labelled images per domain are enough for the concept test; the same folder on both sides: no concept shift
    out = tmp_path / "out"
    result = runner.invoke(app, [str(a) for a in ["diagnose", good.classes, good.classes, "--out", out, *DIAGNOSE]])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    concept = report["concept"]
    assert (concept["n_source"], concept["n_target"]) == (10, 10) and 0.05 < concept["p_value"] <= 1
    assert report["verdict"]["concept"]["level"] == "none"


# -- inputs that look odd but must work ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def odd_but_valid(tmp_path_factory, good) -> Path:
    """Class folders whose images are RGBA PNGs and 16-bit grayscale PNGs."""
    root = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    for label, kind in (("a", "round"), ("b", "spiky")):
        (root / label).mkdir()
        for i in range(3):
            gray = make_image(kind, 32, rng)
            rgba = np.dstack([gray, gray // 2, 255 - gray, rng.integers(0, 256, gray.shape, dtype=np.uint8)])
            Image.fromarray(rgba, "RGBA").save(root / label / f"rgba{i}.png")
            Image.fromarray(gray.astype(np.uint16) * 200 + 1000).save(root / label / f"deep{i}.png")
    return root


def test_rgba_becomes_rgb_and_16_bit_is_windowed(odd_but_valid):
    from shiftkit.data.readers import read_image

    rgba = np.asarray(Image.open(odd_but_valid / "a" / "rgba0.png"))
    assert rgba.shape[2] == 4 and Image.open(odd_but_valid / "a" / "deep0.png").mode.startswith("I;16")
    rgb = read_image(odd_but_valid / "a" / "rgba0.png")
    np.testing.assert_allclose(rgb, rgba[..., :3] / 255.0, atol=1e-6)  # alpha dropped, colours untouched
    raw = np.asarray(Image.open(odd_but_valid / "a" / "deep0.png")).astype(np.float64)
    low, high = np.percentile(raw, (0.5, 99.5))
    windowed = read_image(odd_but_valid / "a" / "deep0.png")
    np.testing.assert_allclose(windowed, np.clip((raw - low) / (high - low), 0, 1), atol=1e-5)
    assert windowed.min() == 0.0 and windowed.max() == 1.0


@pytest.mark.parametrize("command", list(COMMANDS))
def test_rgba_and_16_bit_images_run_through_every_command(odd_but_valid, good, tmp_path, command):
    result = run(command, odd_but_valid, tmp_path / "out", good)  # default policy: fail
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / REPORTS[command]).read_text())["skipped_images"] == []
    assert "warning" not in result.output


# -- issue 13: options, --out, and the order of checks ------------------------------------------------------------

def _features_csv(path: Path, sites=("s1", "s2", "s3"), names=("f1", "f2", "f3"), per_site: int = 8) -> Path:
    rng = np.random.default_rng(0)
    rows = [[site, *(f"{v:.4f}" for v in rng.normal(size=len(names)) + k)] for k, site in enumerate(sites)
            for _ in range(per_site)]
    return _manifest(path, rows, header=",".join(["site", *names]))


def _site_manifest(good: Good, path: Path, sites=("north", "south")) -> Path:
    images = good.images("a") + good.images("b")
    return _manifest(path, [(p, "ab"[i % 2], sites[i % len(sites)]) for i, p in enumerate(images)],
                     header="path,label,site")


# every command that takes --out: argv for (out, good data, scratch folder)
WITH_OUT: dict[str, Callable[[Path, Good, Path], list]] = {
    "diagnose": lambda out, good, tmp: ["diagnose", good.classes, good.target, "--out", out, *DIAGNOSE],
    "finetune": lambda out, good, tmp: ["finetune", good.classes, "--out", out, *FINETUNE],
    "harmonize": lambda out, good, tmp: ["harmonize", good.target, "--method", "zscore", "--reference", good.classes,
                                         "--no-measure", "--out", out],
    "adapt-bn": lambda out, good, tmp: ["adapt-bn", tmp / "no-run", good.target, "--out", out, "--device", "cpu"],
    "combat": lambda out, good, tmp: ["combat", _features_csv(tmp / "f.csv"), "--out", out / "h.csv"],
    "compare": lambda out, good, tmp: ["compare", good.classes, "--out", out, "--archs", "resnet18", "--weights",
                                       "none", "--strategies", "ft", "--lrs", "1e-3", "--seeds", "1", "--epochs", "1",
                                       "--image-size", "32", "--device", "cpu"],
    "audit": lambda out, good, tmp: ["audit", _site_manifest(good, tmp / "sites.csv"), "--out", out, "--arch",
                                     "resnet18", "--weights", "none", "--image-size", "32", "--device", "cpu",
                                     "--min-images-per-site", "4", "--permutations", "20", "--ot-permutations", "20"],
    "demo": lambda out, good, tmp: ["demo", "--out", out, "--epochs", "1", "--device", "cpu"],
}


def invoke(argv: list) -> object:
    return runner.invoke(app, [str(a) for a in argv])


@pytest.mark.parametrize("where", ["under a file", "/proc"])
@pytest.mark.parametrize("command", list(WITH_OUT))
def test_an_unwritable_out_is_one_line_before_any_work(good, tmp_path, command, where):
    """Issue 13, item 7: root ignores permissions, so unwritable means a path under a file, or /proc."""
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "out" if where == "under a file" else Path("/proc/shiftkit-test") / tmp_path.name
    line = _error_line(invoke(WITH_OUT[command](out, good, tmp_path)))
    assert line.startswith("error: --out ") and "cannot create the folder" in line, line


@pytest.mark.parametrize("command", ["diagnose", "audit"])
def test_a_full_disk_while_writing_the_report_leaves_no_half_set(good, tmp_path, monkeypatch, command):
    """Issue 13, item 7: diagnose left report.json and plots/ without report.html when the disk filled up."""
    import errno

    report = {"diagnose": "report.html", "audit": "audit.html"}[command]
    original = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(f".{report}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "out"
    line = _error_line(invoke(WITH_OUT[command](out, good, tmp_path)))
    assert f"{report}: cannot write the file (No space left on device)" in line, line
    assert _files(out) == [], "a failed write left half a set of outputs"


NON_FINITE = {  # (command, option, value) -> the option the message must name
    ("diagnose", "--window", "nan,nan"): "--window 'nan,nan' must be two finite numbers",
    ("diagnose", "--window", "-inf,0"): "--window '-inf,0' must be two finite numbers",
    ("finetune", "--window", "nan,1"): "--window 'nan,1' must be two finite numbers",
    ("audit", "--window", "0,inf"): "--window '0,inf' must be two finite numbers",
    ("harmonize", "--window", "-inf,0"): "--window '-inf,0' must be two finite numbers",
    ("adapt-bn", "--window", "nan,nan"): "--window 'nan,nan' must be two finite numbers",
    ("compare", "--window", "nan,nan"): "--window 'nan,nan' must be two finite numbers",
    ("adapt-bn", "--lr", "nan"): "--lr nan: must be a finite number",
    ("adapt-bn", "--lr", "inf"): "--lr inf: must be a finite number",
    ("adapt-bn", "--lr", "1e30"): "--lr 1e+30: must be at most 10",
    ("adapt-bn", "--lr", "0"): "--lr 0: must be above 0",
    ("audit", "--alpha", "nan"): "--alpha nan: must be a finite number",
    ("audit", "--alpha", "1.5"): "--alpha 1.5: must be below 1",
    ("audit", "--dominance", "inf"): "--dominance inf: must be a finite number",
    ("compare", "--alpha", "nan"): "--alpha nan: must be a finite number",
    ("compare", "--beta", "-inf"): "--beta -inf: must be a finite number",
    ("harmonize", "--spacing", "nan,1"): "--spacing 'nan,1' must be finite numbers",
    ("harmonize", "--clip", "1,inf"): "--clip '1,inf' must be finite numbers",
}


@pytest.mark.parametrize("case", list(NON_FINITE), ids=lambda c: " ".join(c))
def test_non_finite_float_options_are_one_line_naming_the_option(good, tmp_path, case):
    """Issue 13, item 6: --window nan,nan blanked every image with exit 0; --lr nan/inf/1e30 gave a traceback."""
    command, option, value = case
    out = tmp_path / "out"
    line = _error_line(invoke([*WITH_OUT[command](out, good, tmp_path), option, value]))
    assert NON_FINITE[case] in line, line
    assert _files(out) == []


@pytest.mark.parametrize("options, message", [
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
    (["--device", "cuda"], "--device cuda was asked for, but no CUDA GPU is available"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_demo_checks_its_options_before_generating_data(tmp_path, monkeypatch, options, message):
    """Issue 13, item 16: demo generated both hospitals (and, for --epochs 0, ran diagnose) before failing."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "demo"
    line = _error_line(invoke(["demo", "--out", out, *options]))
    assert message in line, line
    assert not out.exists() or _files(out) == []


# -- one minimum image size, one resampling limit (issue 13, item 10) ---------------------------------------------

def _size_argv(command: str, good: Good, tmp_path: Path, out: Path, size: str) -> list:
    """``command`` on the good data, with ``--image-size size`` (the only thing wrong)."""
    embed = ["--arch", "resnet18", "--weights", "none", "--device", "cpu", "--image-size", size]
    if command == "audit":
        images = good.images("a") + good.images("b")
        sites = _manifest(tmp_path / "sites.csv", [(str(p), p.parent.name, ("north", "south")[i % 2])
                                                   for i, p in enumerate(images)], header="path,label,site")
        return ["audit", sites, "--site-column", "site", "--out", out, "--min-images-per-site", "5", *embed]
    if command == "harmonize":
        return ["harmonize", good.target, "--method", "zscore", "--reference", good.classes, "--out", out,
                "--permutations", "20", *embed]
    argv = COMMANDS[command](good.classes, out, good)
    return [*argv[:argv.index("--image-size") + 1], size, *argv[argv.index("--image-size") + 2:]]


@pytest.mark.parametrize("size", ["1", "31"])
@pytest.mark.parametrize("command", ["finetune", "diagnose", "audit", "harmonize"])
def test_an_image_size_below_the_minimum_is_one_rule_for_every_command(good, tmp_path, command, size):
    from shiftkit.data.preprocess import MIN_IMAGE_SIZE
    from shiftkit.finetune import run as finetune_run

    assert finetune_run.MIN_IMAGE_SIZE is MIN_IMAGE_SIZE == 32  # one constant, imported where it is used
    out = tmp_path / "out"
    result = runner.invoke(app, [str(a) for a in _size_argv(command, good, tmp_path, out, size)])
    assert _error_line(result) == f"error: --image-size must be at least {MIN_IMAGE_SIZE} (got {size})"
    assert _files(out) == [], "a refused run left files behind"


def test_compare_follows_the_one_image_size_rule(good, tmp_path, monkeypatch):
    """compare had its own copy of the rule; it now calls shiftkit.data.preprocess.check_image_size, so a change of
    the minimum is one change (shown here by raising it) and the refusal comes before any run starts."""
    import importlib

    from shiftkit.data import preprocess

    compare = importlib.import_module("shiftkit.cli.compare")  # the module (shiftkit.cli.compare is also a function)
    monkeypatch.setattr(preprocess, "MIN_IMAGE_SIZE", 48)
    monkeypatch.setattr(compare, "run_grid", lambda *a, **k: pytest.fail("a run started before the size check"))
    out = tmp_path / "out"
    argv = WITH_OUT["compare"](out, good, tmp_path)
    argv[argv.index("--image-size") + 1] = "40"
    assert _error_line(invoke(argv)) == "error: --image-size must be at least 48 (got 40)"
    assert _files(out) == [], "a refused run left files behind"


def test_resampling_to_a_tiny_spacing_is_refused_before_any_image_is_written(good, tmp_path):
    from shiftkit.harmonize.resample import MAX_RESAMPLED_VOXELS

    rows = [(str(p), "a", "0.5x0.5") for p in good.images("a")]
    data = _manifest(tmp_path / "spaced.csv", rows, header="path,label,spacing")
    out = tmp_path / "out"
    result = runner.invoke(app, ["harmonize", str(data), "--method", "resample", "--spacing", "0.0001,0.0001",
                                 "--reference", str(data), "--out", str(out), "--no-measure"])
    line = _error_line(result)
    assert "a0.png" in line and "160000x160000" in line and "--spacing" in line, line
    assert f"{MAX_RESAMPLED_VOXELS:,}" in line, line
    assert _files(out) == [], "a refused run left files behind"


# -- odd paths, one CSV reader, --target-labels, label spellings, all-NaN images (issue 13, items 9, 12, 14, 15) -----

ODD_IMAGE_PATHS = {
    # name -> (make it under root, what the error says about it)
    "symlink loop": (lambda root: (os.symlink("loop2.png", root / "loop1.png"), os.symlink("loop1.png", root / "loop2.png"),
                                   root / "loop1.png")[-1], "is a symlink loop"),
    "name over 255 characters": (lambda root: root / ("x" * 300 + ".png"), "file name is too long (304 bytes"),
    "character device": (lambda root: Path("/dev/null"), "is a character device, not a file"),
    "FIFO": (lambda root: (os.mkfifo(root / "pipe.png"), root / "pipe.png")[-1], "is a pipe (FIFO"),
    "folder": (lambda root: ((root / "folder.png").mkdir(), root / "folder.png")[-1], "is a folder, not a file"),
}


@pytest.mark.parametrize("kind", list(ODD_IMAGE_PATHS))
def test_an_odd_image_path_is_described_as_what_it_is(tmp_path, kind):
    """Read directly, through the disk cache (which hashes the file: /dev/zero would never end) and from a
    manifest: one ImageReadError saying what the path is, never a traceback or 'file not found'."""
    from shiftkit.data import ImageCache, load_table
    from shiftkit.data.preprocess import Preprocessing
    from shiftkit.data.readers import read_image
    from shiftkit.errors import ImageReadError

    make, words = ODD_IMAGE_PATHS[kind]
    path = make(tmp_path)
    with pytest.raises(ImageReadError, match=f"^{re.escape(str(path))}: {re.escape(words)}"):
        read_image(path)
    with pytest.raises(ImageReadError, match=re.escape(words)):
        ImageCache(Preprocessing(8, 8), disk_dir=tmp_path / "cache").get(path)
    table = load_table(_manifest(tmp_path / "m.csv", [(path, "a")]))
    assert len(table) == 1


def test_the_disk_cache_never_reads_an_endless_device(tmp_path):
    from shiftkit.data import ImageCache
    from shiftkit.data.preprocess import Preprocessing
    from shiftkit.errors import ImageReadError

    with pytest.raises(ImageReadError, match="/dev/zero: is a character device, not a file"):
        ImageCache(Preprocessing(8, 8), disk_dir=tmp_path / "cache").get(Path("/dev/zero"))


def test_odd_image_paths_are_skipped_under_skip_and_one_line_otherwise(good, tmp_path):
    odd = [make(tmp_path) for make, _ in ODD_IMAGE_PATHS.values()]
    data = _manifest(tmp_path / "m.csv", _good_rows(good) + [(p, "a") for p in odd])
    result = run("diagnose", data, tmp_path / "out", good, "--on-bad-image", "skip")
    assert result.exit_code == 0, result.output
    reasons = [s["reason"] for s in json.loads((tmp_path / "out" / "report.json").read_text())["skipped_images"]]
    assert len(reasons) == len(odd)
    for (_, words), reason in zip(ODD_IMAGE_PATHS.values(), reasons):
        assert reason.startswith(words), reasons
    line = _error_line(run("diagnose", data, tmp_path / "fail", good))
    assert "loop1.png: is a symlink loop" in line, line


def test_a_manifest_that_is_a_pipe_a_device_or_a_loop_is_one_line(good, tmp_path):
    """``shiftkit diagnose <(cat m.csv) ...`` passes /dev/fd/63, a pipe."""
    os.mkfifo(tmp_path / "fifo.csv")
    os.symlink("b.csv", tmp_path / "a.csv")
    os.symlink("a.csv", tmp_path / "b.csv")
    cases = {
        tmp_path / "fifo.csv": "fifo.csv: the manifest is a pipe (FIFO or process substitution), not a file; save the "
                               "manifest to a .csv file and pass that",
        Path("/dev/null"): "/dev/null: the manifest is a character device, not a file",
        tmp_path / "a.csv": "a.csv: the manifest is a symlink loop",
        tmp_path / ("m" * 300 + ".csv"): "file name is too long (304 bytes; the file system allows 255)",
    }
    for data, fragment in cases.items():
        line = _error_line(run("diagnose", data, tmp_path / "out", good))
        assert fragment in line, line
    read, write = os.pipe()  # a real process substitution: /dev/fd/N
    try:
        line = _error_line(run("diagnose", Path(f"/dev/fd/{read}"), tmp_path / "out", good))
        assert f"/dev/fd/{read}: the manifest is a pipe (FIFO or process substitution)" in line, line
    finally:
        os.close(read)
        os.close(write)


def test_a_nul_byte_in_a_manifest_is_one_line(good, tmp_path):
    from shiftkit.data import load_table
    from shiftkit.errors import DataError

    path = tmp_path / "m.csv"
    path.write_bytes(b"path,label\na.png,a\nb\x00.png,b\n")
    with pytest.raises(DataError, match=r"m.csv line 3: manifest contains a NUL byte"):
        load_table(path)


def _write_table(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("separator, words", [(";", "semicolons (';')"), ("\t", "tabs")])
def test_a_manifest_with_another_separator_is_refused_naming_it(good, tmp_path, separator, words):
    from shiftkit.audit.manifest import read_audit_manifest
    from shiftkit.data import load_table
    from shiftkit.errors import DataError

    rows = "".join(f"{p}{separator}{label}{separator}north\n" for p, label in _good_rows(good))
    path = _write_table(tmp_path / "m.csv", f"path{separator}label{separator}site\n{rows}")
    expected = f"m.csv: the manifest's columns are separated by {words}, not commas"
    with pytest.raises(DataError, match=re.escape(expected)):
        load_table(path)
    with pytest.raises(DataError, match=re.escape(expected)):
        read_audit_manifest(path, "site")


def test_a_utf16_manifest_is_read_with_its_bom_and_refused_without(good, tmp_path):
    from shiftkit.data import load_table
    from shiftkit.errors import DataError

    text = "path,label\n" + "".join(f"{p},{label}\n" for p, label in _good_rows(good))
    assert len(load_table(_write_table(tmp_path / "bom.csv", text, "utf-16"))) == 10
    with pytest.raises(DataError, match="nobom.csv: manifest looks like UTF-16 text without a byte-order mark; save "
                                        "it as UTF-8 CSV"):
        load_table(_write_table(tmp_path / "nobom.csv", text, "utf-16-le"))
    with pytest.raises(DataError, match=r"latin.csv line 2: manifest is not UTF-8 text \(byte 0xe9\)"):
        load_table(_write_table(tmp_path / "latin.csv", "path,label\ncaf\xe9.png,a\n", "latin-1"))


def test_a_features_table_with_semicolons_and_decimal_commas_is_one_line(tmp_path):
    """A spreadsheet in a comma-decimal locale: audit --features-table used to raise AttributeError."""
    rows = "".join(f"p{i};{'AB'[i % 2]};{i},5;{2 * i},25\n" for i in range(8))
    table = _write_table(tmp_path / "features.csv", "id;site;original_firstorder_Mean;original_glcm_Contrast\n" + rows)
    result = runner.invoke(app, ["audit", str(table), "--features-table", "--site-column", "site",
                                 "--out", str(tmp_path / "out")])
    assert _error_line(result) == (f"error: {table}: the features table's columns are separated by semicolons (';'), "
                                   "not commas; save it as a comma-separated CSV (with '.' as the decimal point)")


def test_target_labels_merge_with_the_targets_own_labels_and_refuse_a_conflict(good, tmp_path):
    from shiftkit.errors import DataError
    from shiftkit.shift.diagnose import _with_target_labels

    from shiftkit.data import load_table

    target = load_table(good.classes)  # labelled: 5 a + 5 b
    agreeing = _manifest(tmp_path / "same.csv", [(good.images("a")[0], "a")])
    merged = _with_target_labels(target, agreeing)
    assert [r.labels for r in merged.records] == [r.labels for r in target.records]  # 10 labels kept, not 1
    assert merged.classes == ("a", "b")
    conflicting = _manifest(tmp_path / "other.csv", [(good.images("a")[1], "b")])
    with pytest.raises(DataError, match=r"other.csv row 2: --target-labels gives 'b' for a1.png, which the target "
                                        r"already labels 'a' \(.*a1.png\); remove one of the two"):
        _with_target_labels(target, conflicting)
    unlabelled = load_table(good.target)  # partial labels on an unlabelled target still work as before
    partial = _with_target_labels(unlabelled, _manifest(tmp_path / "t.csv", [(good.target / "t0.png", "a")]))
    assert [r.labels for r in partial.records] == [("a",), (), (), (), ()] and partial.classes == ("a",)


def test_labels_that_are_one_number_written_two_ways_are_refused(good, tmp_path):
    from shiftkit.audit.manifest import read_audit_manifest
    from shiftkit.data import load_table
    from shiftkit.errors import DataError

    images = good.images("a") + good.images("b")
    spellings = ["0", "1", "0.0", "1.0"]
    path = _manifest(tmp_path / "m.csv", [(p, spellings[i % 4], "north") for i, p in enumerate(images)],
                     header="path,label,site")
    message = r"m.csv row 4: label '0.0' is label '0' \(m.csv row 2\) written another way; they would become two classes"
    with pytest.raises(DataError, match=message):
        load_table(path)
    with pytest.raises(DataError, match=message):
        read_audit_manifest(path, "site", "label")
    same = _manifest(tmp_path / "ok.csv", [(p, str(i % 2), "north") for i, p in enumerate(images)],
                     header="path,label,site")
    assert load_table(same).classes == ("0", "1")


def test_an_all_nan_float_tiff_is_a_bad_image_not_a_black_one(good, tmp_path):
    from shiftkit.data.readers import read_image
    from shiftkit.errors import ImageReadError

    nan = tmp_path / "nan.tif"
    Image.fromarray(np.full((32, 32), np.nan, np.float32)).save(nan)
    with pytest.raises(ImageReadError, match="nan.tif: image has no finite pixel values \\(all NaN or infinite\\)"):
        read_image(nan)
    partly = tmp_path / "partly.tif"
    array = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    array[0, 0] = np.nan
    Image.fromarray(array).save(partly)
    assert np.isfinite(read_image(partly)).all()
    data = _manifest(tmp_path / "m.csv", _good_rows(good) + [(nan, "a")])
    result = run("diagnose", data, tmp_path / "out", good, "--on-bad-image", "skip")
    assert result.exit_code == 0, result.output
    skipped = json.loads((tmp_path / "out" / "report.json").read_text())["skipped_images"]
    assert [s["reason"] for s in skipped] == ["image has no finite pixel values (all NaN or infinite)"]


# -- --out never in the data a command reads (issue 13, item 5, for diagnose, finetune, compare, audit) ------------

OUT_IN_DATA = {  # case -> (command, which folder of the data, how the message names it)
    "diagnose source": ("diagnose", "classes", "source"),
    "diagnose target": ("diagnose", "target", "target"),
    "finetune": ("finetune", "classes", "data"),
    "compare": ("compare", "classes", "data"),
}


@pytest.mark.parametrize("where", ["is", "inside"])
@pytest.mark.parametrize("case", list(OUT_IN_DATA))
def test_an_out_in_a_data_folder_is_refused_before_any_work(good, tmp_path, case, where):
    """diagnose SRC TGT --out SRC wrote plots/ into a class-folder SRC (a new class 'plots' the next time);
    --out SRC/results made 'results' a class. Every command reading a data folder refuses both, writing nothing."""
    command, folder, what = OUT_IN_DATA[case]
    copy = Good(shutil.copytree(good.classes, tmp_path / "classes"), shutil.copytree(good.target, tmp_path / "target"))
    data = getattr(copy, folder)
    out = data if where == "is" else data / "results"
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    line = _error_line(invoke(WITH_OUT[command](out, copy, tmp_path)))
    if where == "is":
        assert line == (f"error: --out {out} is the {what} ({data}): writing there would overwrite the {what}'s "
                        "files or mix the outputs into them; choose another --out"), line
    else:
        assert line == (f"error: --out {out} is inside the {what} folder ({data}), which is read whole as data: the "
                        f"outputs would become part of the {what} (a new class, or more images) the next time it is "
                        "read; choose another --out"), line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written or replaced
    assert not (data / "results").exists()


def test_audit_never_writes_its_report_over_the_table_it_reads(tmp_path):
    out = tmp_path / "out"
    table = _features_csv(out / "audit.json")  # a features table saved under the report's name
    before = table.read_bytes()
    line = _error_line(invoke(["audit", table, "--features-table", "--out", out]))
    assert line == f"error: --out {out} would overwrite the features table {table}; choose another --out", line
    assert table.read_bytes() == before and sorted(out.iterdir()) == [table]


HOSTILE_NAMES = ("Hospital [north]", "Hospital [south]", "$\\frac{a$")  # rich markup, and matplotlib mathtext


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, good) -> Path:
    """Class folders and file names that are rich markup and mathtext, and a manifest with such sites."""
    root = tmp_path_factory.mktemp("hostile")
    for k, (label, kind) in enumerate((("[bold]a $x$", "round"), ("b [/i] $\\frac{a$", "spiky"))):
        for i in range(5):
            _png(root / "classes" / label / f"[{i}] 100% {{}}.png", seed=10 * i + k, kind=kind)
    rows = [(p, p.parent.name, HOSTILE_NAMES[i % 3]) for i, p in enumerate(sorted((root / "classes").rglob("*.png")))]
    _manifest(root / "sites.csv", rows + [(good.target / f"t{i}.png", rows[i][1], HOSTILE_NAMES[i % 3])
                                          for i in range(5)], header="path,label,site")
    return root


@pytest.mark.parametrize("command", ["diagnose", "audit", "finetune then adapt-bn", "compare", "demo"])
def test_markup_and_mathtext_in_user_strings_are_shown_literally_by_every_command(hostile, good, tmp_path,
                                                                                  monkeypatch, command):
    """Issue 13, item 2: "[/]" in a label, site or path crashed with MarkupError; "Hospital [north]" printed as
    "Hospital "; "$\\frac{a$" crashed matplotlib, and audit left audit.json without audit.html."""
    out = tmp_path / "out [i] $\\frac{a$ [/]"
    classes = hostile / "classes"
    if command == "diagnose":
        argv = ["diagnose", classes, classes, "--out", out, *DIAGNOSE, "--domain", "[/]X-ray"]
    elif command == "audit":
        argv = ["audit", hostile / "sites.csv", "--out", out, "--label-column", "label", "--arch", "resnet18",
                "--weights", "none", "--image-size", "32", "--device", "cpu", "--min-images-per-site", "4",
                "--permutations", "20", "--ot-permutations", "20", "--bootstrap", "10"]
    elif command == "compare":
        argv = WITH_OUT["compare"](out, good, tmp_path)
    elif command == "demo":  # the pipeline itself is tested in test_demo.py; here its printing, from a saved summary
        from shiftkit.demo import pipeline

        metrics = {"accuracy": 0.5, "auroc": 0.5, "f1": 0.5}
        summary = {"found_vs_planted": [{"shift": "label", "planted": "[/]", "found": "$\\frac{a$ [b]"}],
                   "recommendation": {"ranking": [{"strategy": "ft", "expected_gain": 0.0, "uncertainty": 1.0,
                                                   "reasons": ["[/]"]}]},
                   "finetune": {"strategy": "ft", "epochs_run": 1, "val_hospital_a": metrics,
                                "test_hospital_b": metrics},
                   "adabn": {"test_hospital_b_before": metrics, "test_hospital_b_after": metrics},
                   "estimate": {"method": "ac", "flags": ["[/]"],
                                "accuracy": {"estimate": 0.5, "interval": [0.4, 0.6], "measured": 0.5},
                                "balanced_accuracy": {"method": "$\\frac{a$", "estimate": 0.5,
                                                      "interval": [0.4, 0.6], "measured": 0.5}},
                   "seconds": 1.0, "outputs": {"diagnose": str(out / "diagnose" / "report.html")}}
        monkeypatch.setattr(pipeline, "run_demo", lambda request, hooks: summary)
        argv = ["demo", "--out", out, "--epochs", "1", "--device", "cpu"]
    else:
        argv = ["finetune", classes, "--out", out, *FINETUNE]
    result = invoke(argv)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    flat = "".join(result.output.split())
    assert "".join(str(out).split()) in flat, result.output
    if command == "audit":
        assert "[north]" in result.output and "[south]" in result.output, result.output  # were "Hospital "
        assert (out / "audit.html").is_file() and "Hospital [north]" in (out / "audit.html").read_text()
    if command == "diagnose":
        assert (out / "report.html").is_file() and "[bold]a $x$" in (out / "report.html").read_text()
    if command.startswith("finetune"):
        adapted = invoke(["adapt-bn", out, classes, "--out", tmp_path / "adapted [/]", "--device", "cpu"])
        assert adapted.exit_code == 0 and "adapted[/]" in "".join(adapted.output.split()), adapted.output


if __name__ == "__main__":  # the table for the report: every bad input, per command, message and exit code
    import tempfile

    class _Skip(Exception):
        pass

    pytest.skip = lambda reason: (_ for _ in ()).throw(_Skip(reason))  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for label, kind in (("a", "round"), ("b", "spiky")):
            for i in range(5):
                _png(base / "classes" / label / f"{label}{i}.png", seed=10 * i + len(label), kind=kind)
        for i in range(5):
            _png(base / "target" / f"t{i}.png", seed=100 + i, kind="oval")
        fixture = Good(base / "classes", base / "target")
        print("| bad input | command | exit | message |\n|---|---|---|---|")
        for number, (name, case) in enumerate(CASES.items()):
            for command in COMMANDS:
                root = base / f"case{number}_{command}"
                root.mkdir()
                try:
                    data, extra = case.build(root, fixture, command)
                except _Skip as exc:
                    print(f"| {name} | {command} | — | skipped: {exc} |")
                    continue
                result = run(command, data, root / "out", fixture, *extra)
                text = " ".join(result.output.split()).replace(str(base), "…").replace("|", "\\|")
                print(f"| {name} | {command} | {result.exit_code} | {text[:220] if result.exit_code else 'works'} |")
