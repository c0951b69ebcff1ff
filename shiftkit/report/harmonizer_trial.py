"""The diagnose report's "what would fix it at the input" section (``diagnose --try-harmonizers``): under a covariate
shift, every applicable harmonizer is fitted on part of the source and scored on held-out images of both domains
(:func:`shiftkit.harmonize.selection.select_harmonizer`, what ``harmonize --method auto`` runs), the target
harmonized toward the source. One line says which lowers the domain AUC and which raises it."""

from __future__ import annotations

from rich.markup import escape

from shiftkit.report.sections import SectionContext, register


def trial_summary(selection: dict) -> str:
    """"tried on held-out images: shades_of_gray lowers the domain AUC 0.97 → 0.92; histmatch raises it
    (0.97 → 0.99); ..."."""
    before = selection["before"]["auc"]
    parts = []
    for c in selection["candidates"]:
        if c["auc_after"] is None:
            parts.append(f"{c['name']} failed ({c.get('error') or 'not measured'})")
            continue
        low, high = c["auc_after_ci"]
        verb = ("lowers" if c["reduces"] else "raises" if low > before else "does not clearly change")
        text = f"{c['name']} {verb} the domain AUC {before:.2f} → {c['auc_after']:.2f}"
        if c["disqualified"]:
            text += " (disqualified: it replaced the images' content)"
        parts.append(text)
    chosen = selection["chosen"]
    head = (f"best: {chosen} (shiftkit harmonize TARGET --reference SOURCE --method auto writes it)" if chosen
            else "no harmonizer reduced the shift: fix it in the model instead (fine-tuning, adapt-bn)")
    return f"{head}; tried on held-out images: " + "; ".join(parts)


def _measure(ctx: SectionContext) -> dict | None:
    from shiftkit.harmonize.selection import select_harmonizer

    settings = ctx.data.harmonizer_trial
    if settings is None:
        return None
    level = ctx.profile.verdict["covariate"].level
    if level in ("none", "not measured"):
        return {"tried": False, "reason": f"covariate shift: {level}; nothing to reduce", "summary": None}
    selection = select_harmonizer(ctx.data.target_table, ctx.data.source_table, "auto", settings).to_dict()
    for candidate in selection["candidates"]:
        candidate.pop("after", None)  # the full test dicts: in harmonize.json, not here
    selection["before"].pop("tests", None)
    return {"tried": True, "direction": "target harmonized toward the source", **selection,
            "summary": trial_summary(selection)}


def _html(page, content: dict, ctx: SectionContext) -> None:
    if not content["tried"]:
        page.paragraph(content["reason"])
        return
    page.paragraph(content["summary"])
    page.table(["harmonizer", "held-out AUC after", "95% interval", "MMD² after", "reduces the shift",
                "content kept (detail correlation)", "disqualified"],
               [[c["name"], c["auc_after"], f"{c['auc_after_ci'][0]:.3f}–{c['auc_after_ci'][1]:.3f}" if c["auc_after_ci"] else None,
                 c["mmd_after"],
                 "yes" if c["reduces"] else "no", c["content_correlation"], c["disqualified"] or ""]
                for c in content["candidates"]])
    page.paragraph(f"Before: held-out domain AUC {content['before']['auc']:.3f}, MMD² {content['before']['mmd']:.4g}. "
                   + content["rule"], "note")


def _terminal(console, content: dict) -> None:
    if content["tried"]:
        console.print(f"[bold]harmonizers:[/] {escape(content['summary'])}", highlight=False)


register("harmonizer_trial", title="What would fix it at the input (harmonizers tried)", measure=_measure,
         html=_html, terminal=_terminal, before="recommendation")
