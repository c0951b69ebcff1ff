"""``audit --harmonize auto``: each site's harmonizer is chosen on held-out images (issue 16, item 3).

Known answers on tiny grayscale phantoms at three sites (north, south drawn alike; west with a planted contrast
change, an invertible affine intensity map): toward north, west gets a harmonizer chosen and its shift to north and
south falls to the level of the north-south null in the recomputed matrix; south, already matching, gets none and keeps its original files
(referenced in place, byte-identical); north, the reference, is left unchanged. Without a reference site each site
is chosen against the other sites pooled, never including its own images. An unknown candidate is one line, exit 2.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.data.synthetic import make_image
from shiftkit.harmonize.outputs import write_manifest

runner = CliRunner()
PER_SITE, SIZE = 48, 32  # 24 held out per site when choosing
CLI_FAST = ["--image-size", str(SIZE), "--permutations", "100", "--ot-permutations", "50", "--bootstrap", "10",
            "--classifier-pca", "16", "--device", "cpu", "--min-images-per-site", "5", "--no-leave-one-out"]


def _contrast(image: np.ndarray) -> np.ndarray:
    """Another scanner's gain and offset: lower contrast, brighter; affine, so every candidate (histogram matching,
    Nyúl, z-score) can undo it, up to 8-bit rounding (the phantoms span 14-212: nothing clips)."""
    return 0.7 * image + 60.0


def write_sites(root: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for site in ("north", "south", "west"):
        (root / site).mkdir(parents=True, exist_ok=True)
        for i in range(PER_SITE):
            kind = ("round", "oval")[i % 2]
            image = make_image(kind, SIZE, rng).astype(np.float64)
            image = _contrast(image) if site == "west" else image
            Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8)).save(root / site / f"{i:02d}.png")
            rows.append({"path": f"{site}/{i:02d}.png", "diagnosis": kind, "hospital": site})
    manifest = root / "manifest.csv"
    write_manifest(manifest, rows, list(rows[0]))
    return manifest


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit_auto")
    return write_sites(root / "data"), root / "cache"


def test_auto_toward_a_reference_site_fixes_the_changed_site_and_leaves_the_matching_one(sites, tmp_path):
    manifest, cache = sites
    originals = {p: _digest(p) for p in manifest.parent.rglob("*.png")}
    out = tmp_path / "audit"
    result = runner.invoke(app, ["audit", str(manifest), "--site-column", "hospital", "--label-column", "diagnosis",
                                 "--out", str(out), "--cache-dir", str(cache), *CLI_FAST,
                                 "--harmonize", "auto", "--reference-site", "north"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "audit.json").read_text())
    h = report["harmonized"]
    assert h["method"] == "auto" and h["reference"] == "north"
    assert h["selection_settings"]["spec"] == "auto" and h["selection_settings"]["reference"] == "north"
    selection = h["selection"]
    assert list(selection) == ["north", "south", "west"]

    north, south, west = selection["north"], selection["south"], selection["west"]
    assert north["role"] == "reference" and north["chosen"] is None

    # the planted contrast change: clearly shifted on held-out images, and a harmonizer is chosen that undoes it
    assert west["auc_before_ci"][0] > 0.75 and west["mmd_before_p"] < 0.05, west
    assert west["chosen"] in {"histmatch", "nyul", "zscore"} and west["role"] == "harmonized", west["verdict"]
    assert west["auc_after_ci"][1] < west["auc_before"] and west["mmd_after"] < west["mmd_before"]
    assert {c["name"] for c in west["candidates"]} >= {"histmatch", "nyul", "zscore"}
    assert set(west["candidates"][0]) == {"name", "rank", "auc_after", "auc_after_ci", "mmd_after", "reduces",
                                          "content_correlation", "disqualified", "error"}
    # ... and its shift to the others falls to the null level on every image, in the recomputed matrix
    null = h["pairwise"]["north"]["south"]
    assert not null["shifted"] and not report["pairwise"]["north"]["south"]["shifted"]
    for other in ("north", "south"):
        before, after = report["pairwise"][other]["west"], h["pairwise"][other]["west"]
        assert before["shifted"] and before["domain_classifier"]["statistic"] > 0.85, before
        assert not after["shifted"], after
        assert after["mmd"]["statistic"] < 0.2 * before["mmd"]["statistic"]
        assert after["domain_classifier"]["statistic"] < max(0.65, null["domain_classifier"]["statistic"] + 0.1)

    # the matching site: nothing reduces a shift that is not there; its files are referenced as they are
    assert south["chosen"] is None and south["role"] == "unchanged" and south["auc_after"] is None
    assert "no harmonizer reduced the shift" in south["verdict"]
    assert not any(c["reduces"] and not c["disqualified"] for c in south["candidates"])

    rows = list(csv.DictReader((out / "harmonized" / "manifest.csv").open()))
    assert len(rows) == 3 * PER_SITE
    for row in rows:
        path = Path(row["path"])
        if row["site"] == "west":
            assert not path.is_absolute() and (out / "harmonized" / path).is_file()
        else:  # north (reference) and south (none chosen): the original files, referenced in place
            assert path.is_absolute() and path.parent.name == row["site"] and path in originals
    assert {p.name for p in (out / "harmonized").iterdir()} == {"west", "manifest.csv"}
    assert {p: _digest(p) for p in originals} == originals  # no input touched

    html = (out / "audit.html").read_text()
    assert "chosen harmonizer" in html and "held-out AUC before → after" in html
    assert f"<td>{west['chosen']}</td>" in html and "the reference: left unchanged" in html
    lines = result.output.splitlines()
    assert any(line.startswith(f"west: {west['chosen']} (held-out AUC ") for line in lines), result.output
    assert any(line.startswith("south: none (held-out AUC ") for line in lines), result.output


def test_without_a_reference_site_each_site_is_chosen_against_the_others_only(sites, tmp_path, monkeypatch):
    """The pooled reference never holds the site's own images (a site scored against itself would look
    unshifted); the choice gets the audit's embedding settings and the cheap subset."""
    from shiftkit.audit.harmonize_auto import POOLED, harmonize_sites
    from shiftkit.audit.manifest import read_audit_manifest
    from shiftkit.harmonize import selection as selection_module
    from shiftkit.harmonize.measure import MeasureSettings

    manifest, _ = sites
    calls = []

    class Unchosen:
        chosen = None

        def to_dict(self):
            return {"chosen": None, "verdict": "no harmonizer reduced the shift: stub", "candidates": [],
                    "skipped": [], "split": {}, "measure": {"seconds": 0.0},
                    "before": {"auc": 0.5, "auc_ci": [0.3, 0.7], "mmd": 0.0, "mmd_p": 1.0}}

    def fake(input_table, reference_table, candidates, settings, holdout=0.5, on_stage=None, **_):
        calls.append(({r.path for r in input_table.records}, {r.path for r in reference_table.records},
                      candidates, settings))
        return Unchosen()

    monkeypatch.setattr(selection_module, "select_harmonizer", fake)
    data = read_audit_manifest(manifest, "hospital", "diagnosis")
    settings = MeasureSettings(image_size=SIZE, max_images=100, permutations=100)
    table, summaries, choice = harmonize_sites(data, "histmatch,zscore", settings, tmp_path / "h")
    assert len(calls) == 3 and choice["reference"] == POOLED and choice["spec"] == "histmatch,zscore"
    by_site = {site: {r.path for r, s in zip(data.table.records, data.sites) if s == site}
               for site in ("north", "south", "west")}
    for (own, reference, candidates, used), site in zip(calls, ("north", "south", "west")):
        assert own == by_site[site]
        assert reference == set().union(*(by_site[s] for s in by_site if s != site))
        assert candidates == "histmatch,zscore" and used is settings
    assert [r.path for r in table.records] == [r.path for r in data.table.records]  # none chosen: unchanged
    assert all(s["role"] == "unchanged" and s["reference"] == POOLED for s in summaries.values())


@pytest.mark.parametrize("spec, message", [
    ("auto,magic", "--harmonize 'auto,magic': unknown harmonizer candidate 'magic'"),
    ("histmatch,colour:nope", "unknown harmonizer candidate 'colour:nope'"),
])
def test_unknown_candidate_is_one_line_exit_2(sites, tmp_path, spec, message):
    manifest, _ = sites
    result = runner.invoke(app, ["audit", str(manifest), "--site-column", "hospital", "--out", str(tmp_path / "o"),
                                 "--device", "cpu", "--harmonize", spec])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert "--method" not in result.output
    assert not (tmp_path / "o" / "audit.json").exists()


def _tests(auc: float, per_class: int, mmd: float) -> dict:
    return {"domain_classifier": {"statistic": auc, "n_source": per_class, "n_target": per_class,
                                  "details": {"n_used": 2 * per_class}},
            "mmd": {"statistic": mmd}}


def test_a_shift_that_is_not_measurable_is_never_reduced():
    """A chance dip of the after AUC below 0.5 must not count as reducing a shift that was not there (measured: a
    site matching its twin, z-scored toward a pooled reference holding an outlier, got a new shift to the twin)."""
    from shiftkit.harmonize.selection import reduces_shift

    after = _tests(0.42, 400, 0.001)
    assert not reduces_shift(_tests(0.62, 24, 0.015), after)  # before interval ~0.46-0.78 reaches chance
    assert reduces_shift(_tests(0.62, 400, 0.015), after)  # the same AUC, measured on enough images
    assert not reduces_shift(_tests(0.62, 400, 0.0005), after)  # MMD² rose: the two tests disagree
