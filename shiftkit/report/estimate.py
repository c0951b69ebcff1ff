"""The ``shiftkit estimate`` report: estimate.json (machines), a rich table (terminal) and estimate.html (people),
from :func:`shiftkit.estimate.command.run_estimate`'s result. Every number is shown with its method and interval;
raised flags come first."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shiftkit.estimate.estimators import KNOWN
from shiftkit.estimate.run import CONSENSUS, LABEL_SHIFT_READING
from shiftkit.io import json_text, write_files
from shiftkit.report.html import Page, rounded
from shiftkit.report.plots import figure_png

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _with_interval(value: float | None, interval: list | tuple | None) -> str | None:
    """"0.580 [0.509, 0.649]", an estimate or a measured value with its interval; "[no interval]" says when it has
    none; None when there is no value."""
    if value is None:
        return None
    lo, hi = interval or (None, None)
    shown = f" [{_number(lo)}, {_number(hi)}]" if lo is not None and hi is not None else " [no interval]"
    return f"{_number(value)}{shown}"


def _span(row: dict) -> str:
    if row["estimate"] is None:
        return f"withheld: {row['withheld']}"
    return _with_interval(row["estimate"], row["interval"])


def _number(value: float) -> str:
    """Three decimals; -1e-17 and -0.0 print as 0.000, not -0.000."""
    return f"{round(value, 3) + 0.0:.3f}"


def labelling_advice(result: dict) -> str | None:
    """"To measure the accuracy within ±0.05 (95 %), label about 402 randomly chosen target images ...", or None
    when enough (or all) are labelled already: the measured interval then says how precise it is."""
    plan = result.get("labelling_plan")
    if not plan or plan["labelled"] >= min(plan["images"], plan["target_images"]):
        return None
    text = (f"To measure the accuracy within ±{plan['half_width']:.2f} ({plan['level']:.0%}), label about "
            f"{plan['images']} randomly chosen target images")
    if plan["images"] > plan["target_images"]:
        text += f": more than the {plan['target_images']} target images analysed, so label all of them"
    if plan["labelled"]:
        text += f"; {plan['labelled']} are labelled so far"
    return text + ". Labelled target images are measured beside the estimates, with an exact interval."


def _label(row: dict) -> str:
    return row["metric"] + (f" [{row['class']}]" if row["class"] is not None else "")


def _confident_shift(result: dict, method: str | None = None) -> bool:
    """Whether the confident_shift flag is raised (for ``method``, when given: one it affects)."""
    return any(f["code"] == "confident_shift" and f["status"] == "raised"
               and (method is None or method in f.get("affects", [method])) for f in result["flags"])


def known_prior_given(result: dict) -> bool:
    """Whether the target prior is the prevalence the user stated (``--prior CLASS=P,...``), not an estimate."""
    return (result.get("target_prior") or {}).get("mode") == KNOWN


def headline(result: dict) -> str:
    """"accuracy at the target (atc, 95 % interval): 0.812 [0.790, 0.833]; measured with its labels: 0.80"."""
    method = result["default_method"]
    row = next(r for r in result["estimates"] if r["method"] == method and r["metric"] == "accuracy")
    text = f"estimated accuracy at the target ({method}, {result['level']:.0%} interval): {_span(row)}"
    cap = (row.get("details") or {}).get("prediction_rate_bound") or {}
    capped = ""
    if cap.get("binds"):
        capped = f"capped at the prediction-rate bound {cap['bound']:.3f}" + (
            " at the given target prevalence" if known_prior_given(result)
            else ", SRC's prevalence standing in for the target's")
    if _confident_shift(result, method):
        ended = " up to the prediction-rate bound" if cap and known_prior_given(result) else ""  # ac_dc's, known q
        text += (f" (an upper bound: confident_shift raised; the interval spans the shift bound{ended}"
                 + (f"; {capped})" if capped else ")"))
    elif capped:
        text += f" ({capped})"
    measured = result["measured"]
    if measured:
        interval = measured.get("intervals", {}).get("accuracy")
        text += f"; measured with the target's labels: {_with_interval(measured['accuracy'], interval)}"
        if interval:
            text += f" ({measured['n']} images, exact {measured['level']:.0%} interval)"
    return text


def accuracy_png(result: dict) -> bytes:
    """Accuracy estimated by each method with its interval; the measured accuracy as a line when known."""
    rows = [r for r in result["estimates"] if r["metric"] == "accuracy" and r["estimate"] is not None]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.4))
    y = np.arange(len(rows))
    values = np.array([r["estimate"] for r in rows])
    low = np.array([r["interval"][0] if r["interval"] else r["estimate"] for r in rows])
    high = np.array([r["interval"][1] if r["interval"] else r["estimate"] for r in rows])
    colours = ["#d62728" if r["method"] == result["default_method"] else "#1f77b4" for r in rows]
    for row_y, value, lo, hi, colour in zip(y, values, low, high, colours):
        # a percentile interval can miss its own point estimate (a skewed or degenerate bootstrap): draw what exists
        ax.errorbar([value], [row_y], xerr=[[max(value - lo, 0.0)], [max(hi - value, 0.0)]], fmt="none",
                    ecolor=colour, capsize=3)
    ax.scatter(values, y, color=colours, zorder=3)
    if result["measured"]:
        measured = result["measured"]
        ax.axvline(measured["accuracy"], color="#2ca02c", ls="--", label="measured with target labels")
        interval = measured.get("intervals", {}).get("accuracy")
        if interval:
            ax.axvspan(*interval, color="#2ca02c", alpha=0.12, lw=0,
                       label=f"its exact {measured['level']:.0%} interval ({measured['n']} images)")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_yticks(y, [r["method"] for r in rows])
    ax.invert_yaxis()
    bound = "; confident_shift: the shift bound" if _confident_shift(result) else ""
    far = any(r["method"] == "ac_dc" for r in rows)
    distance = "; ac_dc: all wrong to all right beyond the distance check" if far else ""
    if far and known_prior_given(result):
        distance += ", ending at the prediction-rate bound of the given prevalence"
    label_shift = any(f["code"] == "label_shift" and f["status"] == "raised" for f in result["flags"])
    pooled = ", ".join(CONSENSUS) + (f" and {LABEL_SHIFT_READING} (label_shift)" if label_shift else "")
    ax.set_xlabel(f"target accuracy ({result['level']:.0%} interval; {pooled}: the hull of theirs{distance}{bound})",
                  wrap=True)
    ax.set_title("Estimated accuracy at the target, by method")
    fig.tight_layout()
    return figure_png(fig)


def html(result: dict) -> str:
    page = Page(f"Performance at the target without its labels: {result['target']}")
    page.paragraph(headline(result))
    advice = labelling_advice(result)
    if advice:
        page.paragraph(advice, "note")
    raised = [f for f in result["flags"] if f["status"] == "raised"]
    page.heading("Flags" + (f" ({len(raised)} raised)" if raised else ""))
    page.table(["flag", "status", "what it means here"],
               [[f["code"], f["status"], f["message"]] for f in sorted(result["flags"],
                                                                        key=lambda f: f["status"] != "raised")])
    page.image(accuracy_png(result), "estimated accuracy by method")
    measured = result["measured"] or {}
    page.heading("Every estimate")
    rows = []
    for r in result["estimates"]:
        source = measured if r["class"] in (None, result["positive_class"]) else {}
        if source.get(r["metric"]) is None and r["class"] is not None:
            source = measured.get("per_class", {}).get(str(r["class"]), {})
        truth = _with_interval(source.get(r["metric"]), source.get("intervals", {}).get(r["metric"]))
        rows.append([r["method"], _label(r), _span(r), truth])
    page.table(["method", "metric", "estimate [interval]", "measured (target labels) [interval]"], rows)
    notes = [result["measured_note"]] if result["measured_note"] else []
    if measured:
        notes.append(f"measured intervals: {measured['interval_method']}")
    if notes:
        page.paragraph("; ".join(notes), "note")
    page.heading("What each method assumes")
    page.table(["method", "assumes", "fails when"],
               [[name, info["assumes"], info["fails_when"]] for name, info in result["methods"].items()])
    page.paragraph(" ".join(result["assumptions"]), "note")
    if result["target_prior"]:
        prior = result["target_prior"]
        page.heading("Class priors")
        page.table(["class", "source", "target (given)" if known_prior_given(result) else "target (estimated)",
                    "interval"],
                   [[c, rounded(prior["source"][c]), rounded(prior["target"][c]),
                     "[{:.3f}, {:.3f}]".format(*prior["interval"][c]) if prior.get("interval") else None]
                    for c in prior["source"]])
        page.paragraph(f"target prior from {prior['from']}", "note")
    page.heading("Settings")
    page.table(["setting", "value"], [[k, str(v)] for k, v in result["settings"].items()]
               + [["checkpoint", result["checkpoint"]], ["source-val", result["source_val"]]])
    return page.render()


def write_report(result: dict, out: Path) -> None:
    """estimate.json and estimate.html, together (never one without the other)."""
    data, page = json_text(result), html(result)
    write_files({out / "estimate.json": lambda tmp: tmp.write_text(data),
                 out / "estimate.html": lambda tmp: tmp.write_text(page)})


def print_summary(result: dict, console: Console) -> None:
    table = Table(title="Accuracy at the target, estimated without its labels", box=box.SIMPLE_HEAD)
    for column in ("method", f"estimate [{result['level']:.0%} interval]", "what it is"):
        table.add_column(column, overflow="fold")
    for r in result["estimates"]:
        if r["metric"] == "accuracy":
            name = r["method"] + (" (default)" if r["method"] == result["default_method"] else "")
            table.add_row(escape(name), _span(r), escape(result["methods"][r["method"]]["title"]))
    console.print(table)
    console.print(headline(result), markup=False)
    advice = labelling_advice(result)
    if advice:
        console.print(advice, markup=False)
    for flag in result["flags"]:
        if flag["status"] == "raised":
            console.print(f"flag {flag['code']}: {flag['message']}", markup=False, style="bold red")
    console.print("Every method assumes no concept shift (a given image means the same diagnosis at both sites), "
                  "which no label-free method can check; estimate.html lists what else each assumes.", markup=False)
