"""Property-based tests (hypothesis) for manifest parsing and the paper's metrics (issue 8, point 1).

Manifests: arbitrary label strings (commas, quotes, unicode, spaces, ``|`` multi-label), sites, spacing strings,
relative and absolute paths, any column order, round-trip through ``csv`` and :func:`read_manifest`.
Metrics: invariance to the order of samples, bounds, perfect predictions give 1, agreement with scikit-learn.
"""

from __future__ import annotations

import csv
import io
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import average_precision_score, cohen_kappa_score, f1_score, roc_auc_score

from shiftkit.data.table import finite_number, read_manifest
from shiftkit.errors import DataError
from shiftkit.finetune.metrics import compute_metrics

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- manifests ---------------------------------------------------------------------------------------------------

# any character UTF-8 can carry, but NUL: a manifest holding one is refused as not a text file (test_bad_input)
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
LABEL = ANY_TEXT.filter(lambda s: "|" not in s and s.strip())
LABEL_FIELD = st.lists(LABEL, min_size=1, max_size=3).map(lambda parts: "|".join(parts)) | LABEL.map(
    lambda s: f"  {s} ")
NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\~"), min_size=1,
               max_size=10).filter(lambda s: s.strip() not in ("", ".", ".."))
SPACING = st.lists(st.floats(min_value=1e-3, max_value=1e3, allow_nan=False), min_size=1, max_size=3)
SEPARATORS = st.sampled_from([",", "x", " ", ", ", " x "])


def _expected_labels(text: str) -> tuple[str, ...]:
    return tuple(sorted({part.strip() for part in text.split("|") if part.strip()}))


def _csv(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows([header, *rows])
    return out.getvalue()


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("manifests")


counter = itertools.count()


@SETTINGS
@given(
    rows=st.lists(st.tuples(NAME, st.booleans(), LABEL_FIELD, ANY_TEXT, SPACING, SEPARATORS), min_size=1, max_size=6),
    order=st.permutations(["path", "label", "site", "spacing", "note"]),
    padded_header=st.booleans(),
)
def test_manifest_round_trip(manifest_dir, rows, order, padded_header):
    folder = manifest_dir / f"m{next(counter)}"
    folder.mkdir()
    expected, body = [], []
    for index, (name, absolute, label, site, spacing, separator) in enumerate(rows):
        relative = f"sub/{index}_{name.strip()}.png"
        raw = str(folder / relative) if absolute else relative
        fields = {"path": f" {raw} " if index % 2 else raw, "label": label, "site": site,
                  "spacing": separator.join(repr(v) for v in spacing), "note": "free, \"text\""}
        body.append([fields[column] for column in order])
        expected.append(((folder / relative).resolve(), _expected_labels(label), site.strip() or None,
                         tuple(spacing)))
    # labels that are one number written two ways ('0', '00') are refused by design (test_bad_input)
    numbers = {}
    for _, labels, _, _ in expected:
        for label in labels:
            value = finite_number(label)
            assume(value is None or numbers.setdefault(value, label) == label)
    header = [f" {c} " if padded_header else c for c in order]
    manifest = folder / "manifest.csv"
    manifest.write_text(_csv(header, body), encoding="utf-8")

    table = read_manifest(manifest)
    assert [(r.path, r.labels, r.site, r.spacing) for r in table.records] == expected
    assert table.classes == tuple(sorted({label for _, labels, _, _ in expected for label in labels}))
    assert table.multilabel == any("|" in label.strip() for _, _, label, _, _, _ in rows)
    assert table.labeled
    assert [r.origin for r in table.records] == [f"manifest.csv row {i + 2}" for i in range(len(rows))]


@SETTINGS
@given(labels=st.lists(LABEL, min_size=2, max_size=5), blank=st.integers(0, 4),
       whitespace=st.sampled_from(["", " ", "\t", " | "]))
def test_a_blank_label_in_a_labelled_manifest_names_its_row(manifest_dir, labels, blank, whitespace):
    blank %= len(labels)
    folder = manifest_dir / f"b{next(counter)}"
    folder.mkdir()
    rows = [[f"{i}.png", whitespace if i == blank else label] for i, label in enumerate(labels)]
    (folder / "m.csv").write_text(_csv(["path", "label"], rows), encoding="utf-8")
    with pytest.raises(DataError, match=f"m.csv row {blank + 2}: empty label"):
        read_manifest(folder / "m.csv")


@SETTINGS
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=3))
def test_spacing_must_be_positive_and_finite(manifest_dir, values):
    assume(not all(np.isfinite(v) and v > 0 for v in values))
    folder = manifest_dir / f"s{next(counter)}"
    folder.mkdir()
    (folder / "m.csv").write_text(_csv(["path", "label", "spacing"], [["a.png", "x", ",".join(map(repr, values))]]))
    with pytest.raises(DataError, match="m.csv row 2: spacing"):
        read_manifest(folder / "m.csv")


# -- metrics -----------------------------------------------------------------------------------------------------

@st.composite
def single_label_sets(draw, ties: bool = True):
    """Targets in which every class occurs, and softmax probabilities (possibly tied) for them."""
    classes = draw(st.integers(2, 4))
    n = draw(st.integers(classes + 2, 30))
    rest = draw(hnp.arrays(np.int64, n - classes, elements=st.integers(0, classes - 1)))
    order = draw(st.permutations(range(n)))
    targets = np.concatenate([np.arange(classes), rest])[list(order)]
    elements = st.sampled_from([-1.0, 0.0, 1.0]) if ties and draw(st.booleans()) else \
        st.floats(-6, 6, allow_nan=False, width=32)
    logits = draw(hnp.arrays(np.float64, (n, classes), elements=elements))
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    return targets, probabilities / probabilities.sum(1, keepdims=True)


@st.composite
def multilabel_sets(draw):
    labels = draw(st.integers(2, 4))
    n = draw(st.integers(4, 30))
    truth = draw(hnp.arrays(np.int64, (n, labels), elements=st.integers(0, 1)))
    truth[0], truth[1] = 1, 0  # every label has a positive and a negative example
    scores = draw(hnp.arrays(np.float64, (n, labels), elements=st.floats(0, 1, allow_nan=False, width=32)))
    return truth.astype(np.float32), scores


def _metrics(targets, probabilities, task):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compute_metrics(targets, probabilities, task)


def _task(probabilities) -> str:
    return "binary" if probabilities.shape[1] == 2 else "multiclass"


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] is None) == (b[key] is None), key
        if a[key] is not None:
            assert a[key] == pytest.approx(b[key], abs=1e-9), key


@SETTINGS
@given(data=single_label_sets(), seed=st.integers(0, 2**32 - 1))
def test_single_label_metrics_ignore_sample_order(data, seed):
    targets, probabilities = data
    order = np.random.default_rng(seed).permutation(len(targets))
    task = _task(probabilities)
    _close(_metrics(targets, probabilities, task), _metrics(targets[order], probabilities[order], task))


@SETTINGS
@given(data=multilabel_sets(), seed=st.integers(0, 2**32 - 1))
def test_multilabel_metrics_ignore_sample_order(data, seed):
    truth, scores = data
    order = np.random.default_rng(seed).permutation(len(truth))
    _close(_metrics(truth, scores, "multilabel"), _metrics(truth[order], scores[order], "multilabel"))


@SETTINGS
@given(data=single_label_sets() | multilabel_sets())
def test_metrics_are_within_their_bounds(data):
    targets, scores = data
    task = "multilabel" if targets.ndim == 2 else _task(scores)
    metrics = _metrics(targets, scores, task)
    for name in ("map", "accuracy", "auroc", "f1"):
        assert metrics[name] is not None and 0.0 <= metrics[name] <= 1.0, name
    assert metrics["kappa"] is None or -1.0 <= metrics["kappa"] <= 1.0


@SETTINGS
@given(data=single_label_sets(), confidence=st.floats(0.51, 1.0))
def test_perfect_predictions_score_one(data, confidence):
    targets, _ = data
    classes = int(targets.max()) + 1
    probabilities = np.full((len(targets), classes), (1 - confidence) / (classes - 1))
    probabilities[np.arange(len(targets)), targets] = confidence
    assert _metrics(targets, probabilities, _task(probabilities)) == pytest.approx(
        {"map": 1.0, "accuracy": 1.0, "auroc": 1.0, "kappa": 1.0, "f1": 1.0})


@SETTINGS
@given(data=multilabel_sets())
def test_perfect_multilabel_predictions_score_one(data):
    truth, _ = data
    scores = np.where(truth > 0, 0.9, 0.1)
    assert _metrics(truth, scores, "multilabel") == pytest.approx(
        {"map": 1.0, "accuracy": 1.0, "auroc": 1.0, "kappa": 1.0, "f1": 1.0})


@SETTINGS
@given(data=single_label_sets())
def test_single_label_metrics_agree_with_scikit_learn(data):
    targets, probabilities = data
    n, classes = probabilities.shape
    predicted = probabilities.argmax(1)
    onehot = np.eye(classes)[targets]
    metrics = _metrics(targets, probabilities, _task(probabilities))
    if classes == 2:
        auroc = roc_auc_score(targets, probabilities[:, 1])
    else:
        auroc = roc_auc_score(targets, probabilities, multi_class="ovr", average="macro")
    errors = int((predicted != targets).sum())
    assert metrics["auroc"] == pytest.approx(auroc)
    assert metrics["map"] == pytest.approx(average_precision_score(onehot, probabilities, average="macro"))
    # eq. 6: each error is a false negative for its class and a false positive for the predicted one
    assert metrics["accuracy"] == pytest.approx(1 - 2 * errors / (n * classes))
    assert metrics["f1"] == pytest.approx(f1_score(targets, predicted, labels=list(range(classes)), average="macro",
                                                   zero_division=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = cohen_kappa_score(targets, predicted, labels=list(range(classes)))
    assert (metrics["kappa"] is None) == (not np.isfinite(kappa))
    if metrics["kappa"] is not None:
        assert metrics["kappa"] == pytest.approx(kappa)


@SETTINGS
@given(data=multilabel_sets())
def test_multilabel_metrics_agree_with_scikit_learn(data):
    truth, scores = data
    predicted = (scores >= 0.5).astype(int)
    metrics = _metrics(truth, scores, "multilabel")
    assert metrics["map"] == pytest.approx(average_precision_score(truth, scores, average="macro"))
    assert metrics["auroc"] == pytest.approx(roc_auc_score(truth, scores, average="macro"))
    assert metrics["accuracy"] == pytest.approx(float(np.mean(truth == predicted)))
    assert metrics["f1"] == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0))


# -- user text reaches the terminal, the HTML and the plots literally (issue 13, item 2) ----------------------------
# rich reads "[...]" as markup ("[/]" crashed, "Hospital [north]" printed as "Hospital "); matplotlib read "$...$" as
# mathtext ("$\frac{a$" crashed, and audit then left audit.json without audit.html).

import html as _html  # noqa: E402
import json as _json  # noqa: E402
import types  # noqa: E402

from rich.console import Console  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

HOSTILE = ["[/]", "Hospital [north]", "[bold red]x", "$\\frac{a$", "100% {x}", "a\x07b\x1b[31m", "{}", "$x$ [i]"]
USER_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                    max_size=10).filter(lambda s: s.strip()) | st.sampled_from(HOSTILE)
# names the file system and the CSV/table readers keep as they are (no path separators, no surrounding blanks)
FILE_NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="/\\~"),
                    min_size=1, max_size=10).filter(lambda s: s not in (".", "..")) | st.sampled_from(
    ["[bold]", "[north]", "$\\frac{a$", "100%", "{}", "a[b]c", "[link=x]"])
UI = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
SLOW_UI = settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))


def _names(n: int):
    return st.lists(USER_TEXT, min_size=n, max_size=n, unique_by=lambda s: s.strip())


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=10_000, color_system=None, force_terminal=False), buffer


def _shown(text: str, output: str) -> None:
    """Printable user text appears as typed (rich drops control characters, so those are not checked)."""
    if text.isprintable():  # compared without blanks: rich wraps long lines and titles
        assert "".join(text.split()) in "".join(output.split()), (text, output)


@UI
@given(classes=_names(3), reason=USER_TEXT)
def test_diagnose_summary_html_and_plots_show_class_names_literally(classes, reason):
    from shiftkit.report import plots
    from shiftkit.report.diagnose import html_page, print_summary
    from shiftkit.report.sections import SectionContext

    classes = [c.strip() for c in classes]
    prior = {c: 1 / 3 for c in classes}
    test = types.SimpleNamespace(statistic=0.1, p_value=0.5, n_source=10, n_target=12, details={})
    label = types.SimpleNamespace(classes=tuple(classes), source_prior=prior, target_prior=prior,
                                  ci={c: (0.1, 0.5) for c in classes}, method="em_bcts", p_value=0.2,
                                  weights={c: 1.0 for c in classes},
                                  details={"classifier": {"classifier": "logistic regression",
                                                          "held_out_balanced_accuracy": 0.8}})
    verdict = {k: types.SimpleNamespace(level="mild", reason=f"{reason} in {classes[0]}")
               for k in ("covariate", "label", "concept")}
    profile = types.SimpleNamespace(covariate={"mmd": test}, label=label, true_target_prior=prior, verdict=verdict,
                                    concept=None, metadata=[], settings={"source": classes[0], "target": classes[1]},
                                    dataset=types.SimpleNamespace(n_source=10, n_target=12, classes=classes,
                                                                  target_labelled=0))
    console, buffer = _console()
    print_summary(profile, console)
    for c in classes:
        _shown(c, buffer.getvalue())
    _shown(f"{reason} in {classes[0]}", buffer.getvalue())
    png = plots.prior_bars(classes, prior, prior, label.ci, prior)
    report = {"skipped_images": [], "recommendation": {"arch": classes[2], "ranking": [], "notes": []}}
    page = html_page(SectionContext(profile, None, report, {"embedding": png, "priors": png}))
    assert _html.escape(f"{reason} in {classes[0]}".strip()) in page or not reason.isprintable()
    assert "<script" not in page.replace(_html.escape("<script"), "")


@UI
@given(sites=_names(3), reason=USER_TEXT)
def test_recommendation_table_shows_arch_domain_and_reasons_literally(sites, reason):
    from shiftkit.cli.recommend import print_recommendation

    recommendation = {"arch": sites[0], "ranking": [{"strategy": "ft", "expected_gain": 1.0, "uncertainty": 0.5,
                                                     "reasons": [reason, f"domain {sites[1]}"]}],
                      "notes": [f"{sites[2]} is not in the paper"]}
    console, buffer = _console()
    print_recommendation(recommendation, console)
    for text in (sites[0], reason, f"domain {sites[1]}", f"{sites[2]} is not in the paper"):
        _shown(text, buffer.getvalue())


@UI
@given(sites=_names(3), classes=_names(2))
def test_audit_summary_html_and_plots_show_site_and_class_names_literally(sites, classes):
    from shiftkit.audit.matrix import shift_matrix
    from shiftkit.audit.report import heatmap_png, print_image_summary, priors_png, site_scatter_png

    sites, classes = [s.strip() for s in sites], [c.strip() for c in classes]
    rng = np.random.default_rng(0)
    per_site = np.repeat(sites, 8)
    matrix = shift_matrix(rng.normal(size=(len(per_site), 3)), list(per_site), pca=0, permutations=20,
                          ot_permutations=20, ot_projections=10, seed=0)
    labels = {"classes": classes, "sites": {s: {"prior": {c: 0.5 for c in classes},
                                                "estimated": {"prior": {c: 0.5 for c in classes}}} for s in sites},
              "pairs": [{"a": sites[0], "b": sites[1], "tv_actual": 0.2}]}
    profile = [{"block": "stem", "mmd": 0.2, "p_adjusted": 0.01, "shifted": True},
               {"block": "head", "mmd": 0.1, "p_adjusted": 0.2, "shifted": False}]
    fingerprint = {"blocks": ["stem", "head"], "correction": "bh", "permutations": 20,
                   "pairs": [{"a": sites[0], "b": sites[1], "peak": {"block": "stem", "index": 0, "of": 2,
                                                                     "shifted": True},
                              "profile": profile, "properties": [],
                              "summary": f"peaks at block 1 of 2 (stem) in {sites[0]}"}]}
    audit = types.SimpleNamespace(matrix=matrix, harmonized=None, labels=labels, fingerprint=fingerprint,
                                  settings={"seconds": {"embed": 1.0, "matrix": 1.0, "total": 2.0}})
    console, buffer = _console()
    print_image_summary(audit, console)
    for s in sites:
        _shown(s, buffer.getvalue())
    assert heatmap_png([("MMD", matrix.grid("mmd", "statistic"), None)], sites)[:4] == b"\x89PNG"
    assert site_scatter_png([("PCA", rng.normal(size=(len(per_site), 2)))], per_site)[:4] == b"\x89PNG"
    assert priors_png(labels)[:4] == b"\x89PNG"
    from shiftkit.audit.report import pair_depth_png

    assert pair_depth_png(fingerprint)[:4] == b"\x89PNG"  # site names in the tick labels, drawn literally


def _invoke(argv: list) -> object:
    result = CliRunner().invoke(app_cli(), [str(a) for a in argv])
    assert result.exit_code == 0, (argv, result.output)
    assert "Traceback" not in result.output
    return result


def app_cli():
    from shiftkit.cli import app

    return app


def _feature_table(path: Path, sites: list[str], features: list[str], per_site: int = 6) -> Path:
    rng = np.random.default_rng(0)
    rows = [[site, *(f"{v:.4f}" for v in rng.normal(size=len(features)) + k)] for k, site in enumerate(sites)
            for _ in range(per_site)]
    path.write_text(_csv(["site", *features], rows), encoding="utf-8")
    return path


CSV_TEXT = USER_TEXT.filter(lambda s: s == s.strip() and s.isprintable() and s.lower() not in ("site", "nan"))


@SLOW_UI
@given(sites=st.lists(CSV_TEXT, min_size=3, max_size=3, unique=True),
       features=st.lists(CSV_TEXT.filter(lambda s: not s.isdigit()), min_size=2, max_size=2, unique=True))
def test_combat_and_the_features_audit_show_sites_and_feature_names_literally(tmp_path_factory, sites, features):
    assume(not set(sites) & set(features) and not {"f0", "f1"} & set(features))
    folder = tmp_path_factory.mktemp("features")
    table = _feature_table(folder / "f.csv", sites, [*features, "f0", "f1"])  # two plain ones: EB needs two
    result = _invoke(["combat", table, "--out", folder / "h.csv"])
    for site in sites:
        _shown(site, result.output)
    _invoke(["audit", table, "--features-table", "--out", folder / "audit", "--no-combat"])
    page = (folder / "audit" / "audit.html").read_text()
    for site in sites:
        assert _html.escape(site) in page


@SLOW_UI
@given(domain=USER_TEXT.filter(lambda s: s.isprintable()), arch=USER_TEXT.filter(lambda s: s.isprintable()))
def test_recommend_shows_domain_and_arch_literally(tmp_path_factory, domain, arch):
    report = tmp_path_factory.mktemp("report") / "report.json"
    report.write_text(_json.dumps({"dataset": {"n_source": 200, "n_target": 100, "classes": ["a", "b"],
                                               "class_counts": {"a": 100, "b": 100}},
                                   "covariate": {}, "verdict": {}, "settings": {"arch": "resnet50"}}))
    result = CliRunner().invoke(app_cli(), ["recommend", str(report), "--domain", domain, "--arch", arch])
    assert "Traceback" not in result.output and result.exit_code in (0, 2), result.output
    if result.exit_code == 0:
        _shown(arch, result.output)


@SLOW_UI
@given(names=st.lists(FILE_NAME, min_size=4, max_size=4, unique_by=str.lower))
def test_harmonize_shows_file_names_literally_in_the_terminal_and_the_report(tmp_path_factory, names):
    from PIL import Image

    from shiftkit.data.synthetic import make_image

    folder = tmp_path_factory.mktemp("names")
    for i, name in enumerate(names):
        for domain in ("[ref]$", "in[bold]"):
            (folder / domain).mkdir(exist_ok=True)
            Image.fromarray(make_image("round", 32, np.random.default_rng(i))).save(folder / domain / f"{name}.png")
    out = folder / "out [i] $\\frac{a$"
    result = _invoke(["harmonize", folder / "in[bold]", "--method", "zscore", "--reference", folder / "[ref]$",
                      "--no-measure", "--out", out])
    _shown(str(out / "report.html"), result.output)
    assert (out / "report.html").is_file()
