"""The diagnose report's performance-estimate section (``diagnose --checkpoint`` with a labelled source): how well
the fine-tuned model will do on the target, estimated without the target's labels (:mod:`shiftkit.estimate`).

The checkpoint's outputs on both domains come from diagnose's one forward pass; density ratios from its embeddings.
The source must be images the checkpoint did not train on (the calibration is fitted on them); the section says so.
Without a checkpoint, or with an unlabelled or multi-label source, the section adds no key.
"""

from __future__ import annotations

import numpy as np
from rich.markup import escape

from shiftkit.report.sections import SectionContext, register

BOOTSTRAP = 500
CAVEAT = ("The source images must not have been used to train the checkpoint: its calibration and thresholds are "
          "fitted on them (use `shiftkit estimate --source-val` with a held-out split otherwise).")


def _measure(ctx: SectionContext) -> dict | None:
    from shiftkit.estimate import embedding_inputs, estimate_performance
    from shiftkit.estimate.command import DEFAULT_METHOD, target_prior_option
    from shiftkit.estimate.measured import labelling_plan, measured_metrics

    data = ctx.data
    source = data.source_table
    if data.source.probabilities is None or not source.labeled or source.multilabel:
        return None
    if any(not r.labels for r in source.records):
        return None
    classes = list(source.classes)
    seed = ctx.profile.settings.get("seed", 0)
    positive = classes[1] if len(classes) == 2 else None
    labels = source.targets()
    known = ctx.profile.settings.get("target_prevalence")  # diagnose --target-prevalence CLASS=P,...
    estimate = estimate_performance(
        np.log(np.clip(data.source.probabilities, 1e-12, None)), labels,
        np.log(np.clip(data.target.probabilities, 1e-12, None)), classes=classes,
        positive=positive, bootstrap=BOOTSTRAP, seed=seed,
        target_prior=target_prior_option(known, classes, "--target-prevalence", True) if known else "em_bcts",
        **embedding_inputs(data.source.embeddings, labels, data.target.embeddings,
                           data.target.probabilities.argmax(axis=1), seed=seed)).to_dict()
    target = data.target_table
    labelled = [i for i, r in enumerate(target.records) if r.labels]
    measured = None
    if labelled and not target.multilabel:
        labels = np.array([classes.index(target.records[i].labels[0]) for i in labelled])
        measured = measured_metrics(data.target.probabilities[labelled], labels, classes, positive,
                                    estimate["level"])
    content = {**estimate, "default_method": DEFAULT_METHOD, "measured": measured, "caveat": CAVEAT,
               "measured_note": None if measured is None else f"measured on {len(labelled)} labelled target images"}
    return {**content, "labelling_plan": labelling_plan(content, len(target), 0 if measured is None else len(labelled))}


def _html(page, content: dict, ctx: SectionContext) -> None:
    from shiftkit.report.estimate import accuracy_png, headline, known_prior_given, labelling_advice

    page.paragraph(headline(content))
    advice = labelling_advice(content)
    if advice:
        page.paragraph(advice, "note")
    if known_prior_given(content):
        shares = ", ".join(f"{c} {q:.3f}" for c, q in content["target_prior"]["target"].items())
        page.paragraph(f"computed at the target prevalence given with --target-prevalence: {shares}", "note")
    for flag in content["flags"]:
        if flag["status"] == "raised":
            page.paragraph(f"flag {flag['code']}: {flag['message']}", "verdict-strong")
    page.image(accuracy_png(content), "estimated accuracy by method")
    page.paragraph(CAVEAT + " " + " ".join(content["assumptions"]), "note")


def _terminal(console, content: dict) -> None:
    from shiftkit.report.estimate import headline

    console.print(f"[bold]performance:[/] {escape(headline(content))}", highlight=False)
    raised = [f["code"] for f in content["flags"] if f["status"] == "raised"]
    if raised:
        console.print(f"  flags raised: {escape(', '.join(raised))} (see report.html)", highlight=False)


register("performance_estimate", title="How the model will do at the target (no target labels used)",
         measure=_measure, html=_html, terminal=_terminal, before="recommendation")
