"""The diagnose report: ``report.json`` (machines), ``report.html`` + ``plots/*.png`` (people), a rich summary."""

from __future__ import annotations

import html as html_text
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shiftkit.io import json_text, write_files
from shiftkit.report import plots
from shiftkit.recommend.recommender import ShiftFacts, recommend
from shiftkit.report.html import Page
from shiftkit.shift.diagnose import Embedded
from shiftkit.shift.profile import ShiftProfile

TEST_NAMES = {
    "mmd": "MMD² (RBF, permutation)",
    "domain_classifier": "domain classifier (AUC)",
    "ot": "sliced Wasserstein (permutation)",
    "bbsd": "BBSD: KS per output (Bonferroni)",
}
STYLE = {"none": "green", "mild": "yellow", "strong": "bold red", "undecided": "magenta", "not measured": "dim"}


def _plots(profile: ShiftProfile, data: Embedded) -> dict[str, bytes]:
    figures = {"embedding": plots.embedding_scatter(data.source.embeddings, data.target.embeddings,
                                                    profile.settings["seed"])}
    label = profile.label
    if label is not None:
        figures["priors"] = plots.prior_bars(list(label.classes), label.source_prior, label.target_prior,
                                             label.ci, profile.true_target_prior)
    bbsd = profile.covariate.get("bbsd")
    if bbsd is not None and bbsd.details.get("ks"):
        figures["per_dimension"] = plots.per_dimension(bbsd.details["ks"], bbsd.details["p_values"],
                                                       "classifier output" if label is not None else "PCA dimension")
    return figures


def _html(profile: ShiftProfile, figures: dict[str, bytes], skipped: list[dict] = (),
          recommended: dict | None = None) -> str:
    s = profile.settings
    page = Page(f"Shift diagnosis: {s['source']} → {s['target']}")
    page.heading("Verdict")
    for name, verdict in profile.verdict.items():
        page.parts.append(f'<p><b>{name} shift</b>: <span class="verdict-{verdict.level.split()[0]}">'
                          f"{html_text.escape(verdict.level)}</span> — {html_text.escape(verdict.reason)}</p>")
    d = profile.dataset
    page.paragraph(f"{d.n_source} source and {d.n_target} target images; classes: {', '.join(d.classes) or 'none'}"
                   f"; {d.target_labelled} target images labelled.", "note")
    page.heading("Covariate shift, P(X)")
    page.table(["test", "statistic", "p-value", "n source", "n target", "details"],
               [[TEST_NAMES.get(n, n), t.statistic, t.p_value, t.n_source, t.n_target, _details(n, t)]
                for n, t in profile.covariate.items()])
    page.image(figures["embedding"], "embedding scatter")
    if "per_dimension" in figures:
        page.image(figures["per_dimension"], "per-dimension shift")
    differing = [m for m in profile.metadata if m["differs"]]
    if differing:
        page.paragraph("Acquisition metadata that differs between the domains:")
        page.table(["field", "source", "target"], [[m["field"], m["source"], m["target"]] for m in differing])
    page.heading("Label shift, P(Y)")
    if profile.label is None:
        page.paragraph(profile.verdict["label"].reason)
    else:
        label = profile.label
        true = profile.true_target_prior or {}
        page.table(["class", "source prior", "target prior (estimated)", "95% interval", "weight q/p", "true target"],
                   [[c, label.source_prior[c], label.target_prior[c],
                     f"{label.ci[c][0]:.3f} – {label.ci[c][1]:.3f}", label.weights.get(c), true.get(c)]
                    for c in label.classes])
        page.paragraph(f"Method {label.method}; test of no label shift p = {label.p_value:.3g}.", "note")
        page.image(figures["priors"], "class priors")
    page.heading("Concept shift, P(Y|X)")
    if profile.concept is None:
        page.paragraph(profile.verdict["concept"].reason)
    else:
        c = profile.concept
        page.table(["p-value", "target error", "expected under covariate + label shift", "gap", "λ*"],
                   [[c.p_value, c.observed_target_error, c.expected_target_error, c.error_gap, c.lambda_star]])
    if recommended is not None:
        _recommendation_html(page, recommended)
    if skipped:
        page.heading("Skipped images")
        page.paragraph(f"{len(skipped)} unreadable image(s) were left out (--on-bad-image skip).", "note")
        page.table(["domain", "image", "reason"], [[s["domain"], s["path"], s["reason"]] for s in skipped])
    page.heading("Settings")
    page.table(["setting", "value"], [[k, v] for k, v in s.items()])
    return page.render()


def _details(name: str, test) -> str:
    d = test.details
    if name == "domain_classifier":
        return f"PAD {d.get('pad', float('nan')):.3f} (95% {d['pad_ci'][0]:.3f}–{d['pad_ci'][1]:.3f})" if "pad_ci" in d else ""
    if name == "mmd":
        return f"bandwidth {d.get('bandwidth', float('nan')):.4g}"
    if name == "ot" and "exact_emd" in d:
        return f"exact EMD {d['exact_emd']:.4g} on {d.get('exact_emd_n')} per side"
    return ""


def _recommendation_html(page: Page, recommended: dict) -> None:
    page.heading("Recommended fine-tuning strategy")
    page.paragraph(f"Expected relative gain over ft (% of the main metric) for {recommended['arch']}, best first; "
                   "`shiftkit recommend report.json` prints it again (README, Recommendation).", "note")
    page.table(["#", "strategy", "expected gain (%)", "± uncertainty", "reasons"],
               [[rank, a["strategy"], a["expected_gain"], a["uncertainty"], " • ".join(a["reasons"])]
                for rank, a in enumerate(recommended["ranking"], start=1)])
    for note in recommended["notes"]:
        page.paragraph(note, "note")


def recommendation(report: dict, domain: str | None = None) -> dict:
    """The fine-tuning recommendation for this shift (``shiftkit.recommend``): report.json's ``recommendation``."""
    facts = replace(ShiftFacts.from_report(report), domain=domain)
    return recommend(facts, report["settings"]["arch"]).to_dict()


def skipped_images(profile: ShiftProfile, data: Embedded) -> list[dict]:
    """Images left out under ``--on-bad-image skip``: domain, path (hashed under --anonymize-paths), reason."""
    anonymize = bool(profile.settings.get("anonymize_paths"))
    return [{"domain": domain, **s.to_dict(anonymize)} for domain, items in data.skipped.items() for s in items]


def write_report(profile: ShiftProfile, data: Embedded, out: Path, domain: str | None = None) -> dict:
    report = {**profile.to_dict(), "skipped_images": skipped_images(profile, data)}
    report["recommendation"] = recommendation(report, domain)
    figures = _plots(profile, data)  # everything is computed before the first file is written
    html = _html(profile, figures, report["skipped_images"], report["recommendation"])
    files = {out / "report.json": lambda tmp, text=json_text(report): tmp.write_text(text)}
    for name, png in figures.items():
        files[out / "plots" / f"{name}.png"] = lambda tmp, png=png: tmp.write_bytes(png)
    files[out / "report.html"] = lambda tmp: tmp.write_text(html)
    write_files(files)  # one set: a full disk leaves the previous report (or none), never half of this one
    return report


def print_summary(profile: ShiftProfile, console: Console) -> None:
    table = Table(title="Covariate shift")
    for column in ("test", "statistic", "p-value", "n source", "n target"):
        table.add_column(column, justify="left" if column == "test" else "right")
    for name, t in profile.covariate.items():
        table.add_row(TEST_NAMES.get(name, name), f"{t.statistic:.4g}", f"{t.p_value:.3g}", str(t.n_source),
                      str(t.n_target))
    console.print(table)
    if profile.label is not None:
        label = profile.label
        priors = Table(title=f"Label shift ({label.method}, p = {label.p_value:.3g})")
        for column in ("class", "source", "target (est.)", "95% interval", "target (true)"):
            priors.add_column(column, justify="left" if column == "class" else "right")
        true = profile.true_target_prior or {}
        for c in label.classes:
            priors.add_row(escape(c), f"{label.source_prior[c]:.3f}", f"{label.target_prior[c]:.3f}",
                           f"{label.ci[c][0]:.3f}–{label.ci[c][1]:.3f}",
                           f"{true[c]:.3f}" if c in true else "—")
        console.print(priors)
    for name, verdict in profile.verdict.items():
        console.print(f"[bold]{name} shift:[/] [{STYLE.get(verdict.level, '')}]{escape(verdict.level)}[/] — "
                      f"{escape(verdict.reason)}", highlight=False)
