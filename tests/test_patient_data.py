"""Patient identifiers never reach an output (issue 8, point 4).

DICOMs written with SimpleITK carry planted identifiers in their headers (PatientName, PatientID,
PatientBirthDate, AccessionNumber, InstitutionName, ReferringPhysicianName) and a patient name in their file
and folder names. Each command runs on them; every file it writes (JSON, HTML, PNG and its text chunks, NPZ/NPY
caches, checkpoints), and its stdout/stderr, is searched for each identifier. Header identifiers must never
appear; the name in the paths must not appear under ``--anonymize-paths`` (and does appear without it: proof
that the search sees paths). Adding a command is one more ``COMMANDS`` entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.data.synthetic import make_image
from shiftkit.privacy import PATIENT_TAGS, anonymize_path, scrub_path, scrub_text, shown_path

runner = CliRunner()

HEADER_IDENTIFIERS = {
    "0010|0010": "DOE^JOHNATHAN",
    "0010|0020": "PID884211",
    "0010|0030": "19470312",
    "0008|0050": "ACC5519023",
    "0008|0080": "SAINT ELSEWHERE HOSPITAL",
    "0008|0090": "HOUSE^GREGORY",
}
NAME_IN_PATHS = "JOHNATHAN_DOE"
TECHNICAL = {"0008|0060": "CR", "0008|0070": "ACME Imaging"}  # allowed: acquisition metadata

FAST = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--device", "cpu", "--on-bad-image", "skip"]
COMMANDS: dict[str, Callable[..., list]] = {
    "finetune": lambda data, out, cache: ["finetune", data["source"], "--out", out, *FAST, "--epochs", "1",
                                          "--batch-size", "64", "--cache-dir", cache],
    "diagnose": lambda data, out, cache: ["diagnose", data["source"], data["target"], "--out", out, *FAST,
                                          "--permutations", "20", "--bootstrap", "10", "--cache-dir", cache],
}


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    image = sitk.GetImageFromArray(pixels.astype(np.int16))
    for tag, value in {**HEADER_IDENTIFIERS, **TECHNICAL}.items():
        image.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(image)


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dicoms") / f"study_{NAME_IN_PATHS}"
    rng = np.random.default_rng(0)
    for label, kind in (("a", "round"), ("b", "spiky")):
        (root / "source" / label).mkdir(parents=True)
        for i in range(5):
            _write_dicom(root / "source" / label / f"{NAME_IN_PATHS}_{label}{i}.dcm",
                         make_image(kind, 32, rng).astype(np.int16) * 8 - 300)
    (root / "target").mkdir()
    for i in range(5):
        _write_dicom(root / "target" / f"{NAME_IN_PATHS}_t{i}.dcm", make_image("oval", 32, rng).astype(np.int16) * 5)
    bad = root / "source" / "a" / f"{NAME_IN_PATHS}_cut.dcm"  # skipped: its path goes into the report
    bad.write_bytes((root / "source" / "a" / f"{NAME_IN_PATHS}_a0.dcm").read_bytes()[:400])
    return {"root": root, "source": root / "source", "target": root / "target", "bad": bad}


def test_the_planted_identifiers_are_really_in_the_files(dicoms):
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(next((dicoms["source"] / "b").iterdir())))
    reader.ReadImageInformation()
    for tag, value in HEADER_IDENTIFIERS.items():
        assert reader.GetMetaData(tag).strip() == value, PATIENT_TAGS[tag]


def _png_text(path: Path) -> str:
    with Image.open(path) as image:
        return json.dumps(getattr(image, "text", {}) or image.info, default=str)


def _found(identifier: str, out: Path, cache: Path, console: str) -> list[str]:
    """Where ``identifier`` (any case) occurs: output files, cache files, PNG text chunks, the console."""
    needles = {identifier.encode(), identifier.lower().encode(), identifier.upper().encode()}
    places = []
    for folder in (out, cache):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            if path.suffix == ".png":
                data += _png_text(path).encode()
            if any(needle in data for needle in needles):
                places.append(str(path.relative_to(folder.parent)))
    if any(needle.decode() in console for needle in needles):
        places.append("stdout/stderr")
    return places


@pytest.fixture(scope="module", params=list(COMMANDS))
def runs(request, dicoms, tmp_path_factory) -> dict:
    """The command run twice on the DICOMs: with and without --anonymize-paths."""
    command, results = request.param, {"command": request.param}
    for anonymize in (False, True):
        base = tmp_path_factory.mktemp(f"{command}_{anonymize}")
        out, cache = base / "out", base / "cache"
        argv = [str(a) for a in COMMANDS[command](dicoms, out, cache)] + (["--anonymize-paths"] if anonymize else [])
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, result.output
        results[anonymize] = (out, cache, result.output)
    return results


def test_header_identifiers_never_reach_any_output(runs):
    for anonymize in (False, True):
        out, cache, console = runs[anonymize]
        assert any(p.suffix == ".json" for p in out.rglob("*")) and any(cache.rglob("*.np*"))
        for tag, identifier in HEADER_IDENTIFIERS.items():
            assert _found(identifier, out, cache, console) == [], f"{PATIENT_TAGS[tag]} leaked"


def test_names_in_paths_appear_only_without_anonymize_paths(runs):
    out, cache, console = runs[False]
    assert _found(NAME_IN_PATHS, out, cache, console), "the search should see paths (the skipped image's)"
    out, cache, console = runs[True]
    assert _found(NAME_IN_PATHS, out, cache, console) == []


def test_anonymized_paths_are_the_documented_stable_hashes(runs, dicoms):
    report = "metrics.json" if runs["command"] == "finetune" else "report.json"
    plain = json.loads((runs[False][0] / report).read_text())
    hashed = json.loads((runs[True][0] / report).read_text())
    assert [s["path"] for s in plain["skipped_images"]] == [str(dicoms["bad"])]
    assert [s["path"] for s in hashed["skipped_images"]] == [anonymize_path(str(dicoms["bad"]))]
    assert hashed["skipped_images"][0]["reason"] == plain["skipped_images"][0]["reason"]


def test_diagnose_reports_technical_metadata_but_no_identifiers(runs):
    if runs["command"] != "diagnose":
        pytest.skip("acquisition metadata is a diagnose output")
    report = json.loads((runs[True][0] / "report.json").read_text())
    fields = {m["field"]: m for m in report["covariate"]["metadata"]}
    assert "ACME Imaging" in json.dumps(fields["manufacturer"])  # the whitelist is read ...
    assert not set(fields) & {name.lower() for name in PATIENT_TAGS.values()}  # ... and nothing else


def test_privacy_helpers():
    assert anonymize_path("/data/DOE^JOHN/1.dcm") == anonymize_path("/data/DOE^JOHN/1.dcm")
    assert anonymize_path("/data/DOE^JOHN/1.dcm").startswith("path-") and len(anonymize_path("x")) == 17
    assert anonymize_path("a") != anonymize_path("b") != anonymize_path("a", salt="secret")
    assert shown_path(None, True) is None and shown_path(Path("x"), False) == "x"
    message = "cannot identify image file '/data/DOE^JOHN/1.dcm' (1.dcm)"
    scrubbed = scrub_path(message, "/data/DOE^JOHN/1.dcm")
    assert "DOE" not in scrubbed and "1.dcm" not in scrubbed and anonymize_path("/data/DOE^JOHN/1.dcm") in scrubbed
    assert scrub_text("Patient DOE^JOHN, ID 123", ["DOE^JOHN", "123", ""]) == "Patient [removed], ID [removed]"


def test_harmonize_and_audit_outputs_carry_no_header_identifiers(tmp_path):
    rng = np.random.default_rng(1)
    rows = ["path,label,site"]
    for site, kind in (("north", "round"), ("south", "spiky")):
        (tmp_path / site).mkdir()
        for i in range(10):
            _write_dicom(tmp_path / site / f"{i}.dcm", make_image(kind, 32, rng).astype(np.int16) * 8 - 300)
            rows.append(f"{site}/{i}.dcm,{'ab'[i % 2]},{site}")
    (tmp_path / "all.csv").write_text("\n".join(rows) + "\n")
    fast = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--permutations", "20",
            "--device", "cpu"]
    harmonize = runner.invoke(app, ["harmonize", str(tmp_path / "south"), "--method", "zscore", "--reference",
                                    str(tmp_path / "north"), "--out", str(tmp_path / "harmonized"), *fast])
    assert harmonize.exit_code == 0, harmonize.output
    audit = runner.invoke(app, ["audit", str(tmp_path / "all.csv"), "--site-column", "site", "--label-column",
                                "label", "--out", str(tmp_path / "audit"), *fast])
    assert audit.exit_code == 0, audit.output
    assert list((tmp_path / "harmonized").glob("*.mha"))  # the harmonized images themselves are searched too
    for out, console in ((tmp_path / "harmonized", harmonize.output), (tmp_path / "audit", audit.output)):
        for tag, identifier in HEADER_IDENTIFIERS.items():
            assert _found(identifier, out, out, console) == [], f"{PATIENT_TAGS[tag]} leaked into {out.name}"
