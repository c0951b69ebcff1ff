"""The diagnose report: ``report.json`` (machines), ``report.html`` + ``plots/*.png`` (people), a rich summary."""

from __future__ import annotations

import html as html_text
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shiftkit.io import json_text, write_files
from shiftkit.report import plots
from shiftkit.recommend.measured import recommend_for_report
from shiftkit.report.html import Page, rounded
from shiftkit.report.sections import SectionContext, register, sections
from shiftkit.shift import registry
from shiftkit.shift.diagnose import Embedded
from shiftkit.shift.profile import ShiftProfile

STYLE = {"none": "green", "mild": "yellow", "strong": "bold red", "undecided": "magenta", "not measured": "dim"}


def _plots(profile: ShiftProfile, data: Embedded) -> dict[str, bytes]:
    figures = {"embedding": plots.embedding_scatter(data.source.embeddings, data.target.embeddings,
                                                    profile.settings["seed"])}
    label = profile.label
    if label is not None:
        figures["priors"] = plots.prior_bars(list(label.classes), label.source_prior, label.target_prior,
                                             label.ci, profile.true_target_prior)
    for name, test in profile.covariate.items():  # the first test with per-dimension values (BBSD) gets a plot
        keys = registry.shown(name).per_dimension
        if keys is not None and test.details.get(keys[0]):
            figures["per_dimension"] = plots.per_dimension(test.details[keys[0]], test.details[keys[1]],
                                                           "classifier output" if label is not None else "PCA dimension")
            break
    return figures


# ---------------------------------------------------------------------------------------- built-in sections

def _verdict_html(page: Page, _content, ctx: SectionContext) -> None:
    for name, verdict in ctx.profile.verdict.items():
        page.parts.append(f'<p><b>{name} shift</b>: <span class="verdict-{verdict.level.split()[0]}">'
                          f"{html_text.escape(verdict.level)}</span> — {html_text.escape(verdict.reason)}</p>")
    d = ctx.profile.dataset
    page.paragraph(f"{d.n_source} source and {d.n_target} target images; classes: {', '.join(d.classes) or 'none'}"
                   f"; {d.target_labelled} target images labelled.", "note")


def _covariate_html(page: Page, _content, ctx: SectionContext) -> None:
    profile, figures = ctx.profile, ctx.figures
    page.table(["test", "statistic", "p-value", "n source", "n target", "details"],
               [[registry.label(n), t.statistic, t.p_value, t.n_source, t.n_target, registry.shown(n).details_text(t)]
                for n, t in profile.covariate.items()])
    page.image(figures["embedding"], "embedding scatter")
    if "per_dimension" in figures:
        page.image(figures["per_dimension"], "per-dimension shift")
    differing = [m for m in profile.metadata if m["differs"]]
    if differing:
        page.paragraph("Acquisition metadata that differs between the domains:")
        page.table(["field", "source", "target"], [[m["field"], m["source"], m["target"]] for m in differing])


def _label_html(page: Page, _content, ctx: SectionContext) -> None:
    profile = ctx.profile
    if profile.label is None:
        page.paragraph(profile.verdict["label"].reason)
        return
    label = profile.label
    true = profile.true_target_prior or {}
    page.table(["class", "source prior", "target prior (estimated)", "95% interval", "weight q/p", "true target"],
               [[c, rounded(label.source_prior[c]), rounded(label.target_prior[c]),
                 f"{label.ci[c][0]:.3f} – {label.ci[c][1]:.3f}", rounded(label.weights.get(c)), rounded(true.get(c))]
                for c in label.classes])
    page.paragraph(f"Method {label.method}; test of no label shift p = {label.p_value:.3g}. "
                   f"{_classifier_line(label.details.get('classifier') or {})}", "note")
    page.image(ctx.figures["priors"], "class priors")


def _classifier_line(details: dict) -> str:
    """What the prior estimates rest on: the source classifier, what it read, how it was held out, how well it
    tells the classes apart (a weak one cannot estimate priors; the verdict then carries a caution)."""
    if not details:
        return ""
    parts = [details.get("classifier", "")]
    if details.get("representation"):
        parts.append(f"on the {details['representation']}")
    if details.get("held_out"):
        parts.append(f"({details['held_out']})")
    accuracy = details.get("held_out_balanced_accuracy")
    tail = f"; held-out balanced accuracy {accuracy:.2f}" if accuracy is not None else ""
    return "Source classifier: " + " ".join(parts) + tail + "."


def _concept_html(page: Page, _content, ctx: SectionContext) -> None:
    profile = ctx.profile
    if profile.concept is None:
        page.paragraph(profile.verdict["concept"].reason)
        return
    c = profile.concept
    page.table(["p-value", "target error", "expected under covariate + label shift", "gap", "λ*"],
               [[c.p_value, c.observed_target_error, c.expected_target_error, c.error_gap, c.lambda_star]])


def _skipped_html(page: Page, _content, ctx: SectionContext) -> None:
    skipped = ctx.report["skipped_images"]
    if skipped:
        page.heading("Skipped images")
        page.paragraph(f"{len(skipped)} unreadable image(s) were left out (--on-bad-image skip).", "note")
        page.table(["domain", "image", "reason"], [[s["domain"], s["path"], s["reason"]] for s in skipped])


def _settings_html(page: Page, _content, ctx: SectionContext) -> None:
    page.table(["setting", "value"], [[k, v] for k, v in ctx.profile.settings.items()])


def _recommendation_html(page: Page, _content, ctx: SectionContext) -> None:
    recommended = ctx.report["recommendation"]
    page.paragraph(f"Expected relative gain over ft (% of the main metric) for {recommended['arch']}, best first, "
                   f"from {recommended.get('model', 'the published evidence')}; `shiftkit recommend report.json` "
                   "prints it again, `--verify` checks it on your labelled target images (README, Recommendation).",
                   "note")
    page.table(["#", "strategy", "expected gain (%)", "± uncertainty", "reasons"],
               [[rank, a["strategy"], f"{a['expected_gain']:+.1f}", f"{a['uncertainty']:.1f}", " • ".join(a["reasons"])]
                for rank, a in enumerate(recommended["ranking"], start=1)])
    for note in recommended["notes"]:
        page.paragraph(note, "note")


register("verdict", title="Verdict", html=_verdict_html)
register("covariate", title="Covariate shift, P(X)", html=_covariate_html)
register("label", title="Label shift, P(Y)", html=_label_html)
register("concept", title="Concept shift, P(Y|X)", html=_concept_html)
register("recommendation", title="Recommended fine-tuning strategy", html=_recommendation_html)
register("skipped_images", title="Skipped images", html=_skipped_html, heading=False)
register("settings", title="Settings", html=_settings_html)


def html_page(ctx: SectionContext) -> str:
    """The self-contained report.html: every registered section in order."""
    s = ctx.profile.settings
    page = Page(f"Shift diagnosis: {s['source']} → {s['target']}")
    for section in sections():
        if section.measure is not None and ctx.report.get(section.name) is None:
            continue  # measured, and nothing to show for this data
        if section.heading:
            page.heading(section.title)
        section.html(page, ctx.report.get(section.name), ctx)
    return page.render()


def recommendation(report: dict, domain: str | None = None) -> dict:
    """The fine-tuning recommendation for this shift (``shiftkit.recommend``): report.json's ``recommendation``."""
    return recommend_for_report(report, report["settings"]["arch"], domain=domain)


def skipped_images(profile: ShiftProfile, data: Embedded) -> list[dict]:
    """Images left out under ``--on-bad-image skip``: domain, path (hashed under --anonymize-paths), reason."""
    anonymize = bool(profile.settings.get("anonymize_paths"))
    return [{"domain": domain, **s.to_dict(anonymize)} for domain, items in data.skipped.items() for s in items]


def write_report(profile: ShiftProfile, data: Embedded, out: Path, domain: str | None = None) -> dict:
    """report.json, report.html and plots/*.png, written as one set once every section has been measured."""
    report = {**profile.to_dict(), "skipped_images": skipped_images(profile, data)}
    report["recommendation"] = recommendation(report, domain)
    ctx = SectionContext(profile, data, report, _plots(profile, data))
    for section in sections():
        content = section.measure(ctx) if section.measure is not None else None
        if content is not None:  # None: nothing to report for this data, and no key
            report[section.name] = content
    html = html_page(ctx)  # everything is computed before the first file is written
    files = {out / "report.json": lambda tmp, text=json_text(report): tmp.write_text(text)}
    for name, png in ctx.figures.items():
        files[out / "plots" / f"{name}.png"] = lambda tmp, png=png: tmp.write_bytes(png)
    files[out / "report.html"] = lambda tmp: tmp.write_text(html)
    write_files(files)  # one set: a full disk leaves the previous report (or none), never half of this one
    return report


def print_summary(profile: ShiftProfile, console: Console, report: dict | None = None) -> None:
    """The terminal summary: covariate tests, label priors, each registered section's own table (from
    ``report``, what :func:`write_report` returned) and the verdicts."""
    table = Table(title="Covariate shift")
    for column in ("test", "statistic", "p-value", "n source", "n target"):
        table.add_column(column, justify="left" if column == "test" else "right")
    for name, t in profile.covariate.items():
        table.add_row(registry.label(name), f"{t.statistic:.4g}", f"{t.p_value:.3g}", str(t.n_source),
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
    for section in sections() if report is not None else ():
        if section.terminal is not None and report.get(section.name) is not None:
            section.terminal(console, report[section.name])
    for name, verdict in profile.verdict.items():
        console.print(f"[bold]{name} shift:[/] [{STYLE.get(verdict.level, '')}]{escape(verdict.level)}[/] — "
                      f"{escape(verdict.reason)}", highlight=False)
