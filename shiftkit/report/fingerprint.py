"""The diagnose report's fingerprint section: what changed in the images, and where in the network the shift lands.

One report section (:mod:`shiftkit.report.sections`): its ``fingerprint`` key in report.json is
:func:`shiftkit.shift.fingerprint.measure_fingerprint`; the HTML shows the "shift by depth" plot, the per-block
table, the image-property table and (unless ``--no-thumbnails``) the images the domain classifier finds most and
least typical of their domain; the terminal gets one line. It sits right after the verdict, so that the report
reads: verdict, what changed, where in the network, then the tests behind it and what to do.
"""

from __future__ import annotations

from rich.markup import escape

from shiftkit.report import plots
from shiftkit.report.sections import SectionContext, register

PROPERTY_ROWS = 12  # every property the image measurement has


def _measure(ctx: SectionContext) -> dict | None:
    from shiftkit.shift.fingerprint import measure_fingerprint

    settings = ctx.profile.settings
    if not settings.get("fingerprint"):  # blocks may have been extracted for the prior estimates alone
        return None
    fingerprint = measure_fingerprint(ctx.data, seed=settings.get("seed", 0),
                                      permutations=(settings.get("permutations") or {}).get("mmd", 200),
                                      alpha=settings.get("alpha", 0.05),
                                      thumbnails=settings.get("thumbnails", True))
    if fingerprint is None:
        return None
    blocks = fingerprint["blocks"]
    pretraining = fingerprint.get("pretraining")
    ctx.figures["shift_by_depth"] = plots.shift_by_depth(
        [b["block"] for b in blocks], [b["auc"] for b in blocks], [tuple(b["auc_ci"]) for b in blocks],
        [bool(b["shifted"]) for b in blocks],
        {name: [row["kl"] for row in rows] for name, rows in pretraining.items()} if pretraining else None)
    if fingerprint["thumbnails"]:
        ctx.inline.update(_thumbnails(ctx, fingerprint["thumbnails"]))  # in report.html only, never plots/
    return fingerprint


def _thumbnails(ctx: SectionContext, chosen: dict) -> dict[str, bytes]:
    """Small PNGs of the chosen images, read again (a few images, for display only; pixels, never header
    fields: DICOM pixel data can still hold burned-in text)."""
    from shiftkit.data.readers import read_image
    from shiftkit.errors import ImageReadError
    from shiftkit.shift.image_properties import thumbnail_png

    figures = {}
    for domain, table in (("source", ctx.data.source_table), ("target", ctx.data.target_table)):
        for kind in ("most_typical", "most_like_other"):
            for rank, row in enumerate(chosen[domain][kind]):
                try:
                    array = read_image(table.records[row].path, ctx.data.read_options)
                except ImageReadError:
                    continue
                figures[f"thumb_{domain}_{kind}_{rank}"] = thumbnail_png(array)
    return figures


def _html(page, content: dict, ctx: SectionContext) -> None:
    page.paragraph(content["summary"])
    page.image(ctx.figures["shift_by_depth"], "shift by depth")
    page.table(["block", "domain-classifier AUC", "95% interval", "MMD²", "p (corrected)", "shifted"],
               [[b["block"], b["auc"], f"{b['auc_ci'][0]:.3f} – {b['auc_ci'][1]:.3f}", b["mmd"], b["p_adjusted"],
                 "yes" if b["shifted"] else "no"] for b in content["blocks"]])
    page.paragraph("Per block: a pooled descriptor of each image (channel means and standard deviations of the "
                   "block's output), source against target; the corrected p-value is the MMD permutation test's "
                   "(Benjamini-Hochberg across blocks). Input-level changes (contrast, blur, noise, scanner) peak in "
                   "the first blocks, which surgical fine-tuning would tune first.", "note")
    pretraining = content.get("pretraining")
    if pretraining:
        rows = zip(pretraining["source"], pretraining["target"])
        page.table(["block", "source: KL from pre-training", "target: KL from pre-training"],
                   [[s["block"], s["kl"], t["kl"]] for s, t in rows])
    if content.get("gradient_signal"):
        page.table(["block", "relative gradient ‖g‖/‖w‖", "relative to the largest"],
                   [[g["block"], g["relative_gradient"], g["relative_to_max"]] for g in content["gradient_signal"]])
    features = content.get("source_features")
    if features:
        probe = features["linear_probe"]
        text = f"Frozen source features: LogME {features['logme']:.3f}"
        if probe.get("testable"):
            ba = probe["balanced_accuracy"]
            text += (f"; cross-validated linear probe balanced accuracy {ba['value']:.3f} "
                     f"(95% {ba['ci_low']:.3f}–{ba['ci_high']:.3f}; chance {probe['chance']['balanced_accuracy']:.3f})")
        page.paragraph(text + ".", "note")
    page.heading("What changed in the images")
    page.table(["property", "source median", "target median", "Cohen's d", "rank-biserial", "p (BH)", "note"],
               [[p["property"], p.get("source_median"), p.get("target_median"), p.get("cohens_d"),
                 p.get("rank_biserial"), p.get("p_adjusted"), p.get("explanation") or p.get("reason") or ""]
                for p in content["image_properties"][:PROPERTY_ROWS]])
    if content.get("thumbnails"):
        page.heading("Images the domain classifier finds most and least typical of their domain")
        for domain in ("source", "target"):
            for kind, title in (("most_typical", "most typical"), ("most_like_other", "most like the other domain")):
                names = sorted(n for n in ctx.inline if n.startswith(f"thumb_{domain}_{kind}_"))
                if names:
                    page.paragraph(f"{domain}, {title}:")
                    for name in names:
                        page.image(ctx.inline[name], f"{domain} {title}")


def _terminal(console, content: dict) -> None:
    console.print(f"[bold]fingerprint:[/] {escape(content['summary'])}", highlight=False)


register("fingerprint", title="Where the shift lands", measure=_measure, html=_html, terminal=_terminal,
         before="covariate")
