"""Write a comparison as Markdown, JSON and a self-contained HTML page with the relative-improvement plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from shiftkit.compare.tables import (  # noqa: E402
    BASELINE,
    IMPROVEMENT_THRESHOLD,
    CompareTable,
    effectiveness,
    effectiveness_markdown,
    marked_rows,
    table_header,
    relative_improvement,
    table_markdown,
)
from shiftkit.io import json_text, write_files, write_json  # noqa: E402
from shiftkit.report.html import Page  # noqa: E402
from shiftkit.report.plots import figure_png  # noqa: E402


def relative_bars(changes: dict[str, float | None], arch: str, metric: str) -> bytes:
    """Figs. 6–11: each strategy's percentage change over ``ft`` (green above +0.1 %, red below −0.1 %)."""
    names = [s for s in changes if s != BASELINE and changes[s] is not None]
    values = [changes[s] for s in names]
    colours = ["#1a7f37" if v > IMPROVEMENT_THRESHOLD else "#cf222e" if v < -IMPROVEMENT_THRESHOLD else "#8c8c8c"
               for v in values]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), values, color=colours)
    ax.axhline(0, color="#333", linewidth=0.8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(f"relative {metric} vs ft (%)")
    ax.set_title(f"{arch}: relative {metric} over full fine-tuning")
    for x, v in enumerate(values):
        ax.annotate(f"{v:+.1f}", (x, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=8)
    return figure_png(fig)


def compare_summary(table: CompareTable) -> dict:
    """Everything the report shows, as plain data (``compare.json``)."""
    return {
        "protocol": ("per (arch, strategy) the learning rate with the best mean validation "
                     f"{table.main_metric} over seeds; its {table.split} metrics as mean (SE) over seeds, "
                     "SE = sample sd / sqrt(n)"),
        "table": table.to_dict(),
        "winners": {a: table.winner(a) for a in table.archs},
        "relative_improvement": {m: relative_improvement(table, m) for m in table.metrics},
        "effectiveness": effectiveness(table),
    }


def write_compare_report(out: Path, table: CompareTable, extra: dict | None = None) -> dict:
    """``compare.md``, ``compare.json``, ``compare.html`` and ``plots/relative_<arch>.png``; returns the JSON."""
    summary = {**compare_summary(table), **(extra or {})}
    rel = summary["relative_improvement"][table.main_metric]
    plots = {arch: relative_bars(rel[arch], arch, table.main_metric) for arch in rel}
    files = {out / "plots" / f"relative_{arch}.png": lambda tmp, png=png: tmp.write_bytes(png)
             for arch, png in plots.items()}
    summary["plots"] = [f"plots/relative_{arch}.png" for arch in plots]
    texts = {"compare.json": json_text(summary), "compare.md": _markdown(table, summary),
             "compare.html": _html(table, summary, plots)}
    files.update({out / name: lambda tmp, text=text: tmp.write_text(text) for name, text in texts.items()})
    write_files(files)  # one set: the tables, the JSON and the plots always describe the same runs
    return summary


def _notes(table: CompareTable, summary: dict) -> list[str]:
    notes = [
        f"Values in percent on the **{table.split}** split: mean (SE) over seeds at the learning rate chosen on "
        f"validation {table.main_metric}; **bold** = best in the column"
        + (", <u>underlined</u> = best over all architectures." if len(table.archs) > 1 else "."),
    ]
    if table.split == "val":
        notes.append("No --test was given: the table reports validation metrics, which also chose the learning rate.")
    if summary.get("missing"):
        notes.append(f"{len(summary['missing'])} planned runs have no record yet: the table covers the rest.")
    return notes


def _markdown(table: CompareTable, summary: dict) -> str:
    lines = ["# Fine-tuning strategies compared", "", *_notes(table, summary), "", table_markdown(table), ""]
    lines += ["## Chosen learning rates", "", "| Method | " + " | ".join(table.archs) + " |",
              "|---|" + "---:|" * len(table.archs)]
    for s in table.strategies:
        lines.append("| " + s + " | " + " | ".join(
            f"{table.chosen[(a, s)]['lr']:g}" if (a, s) in table.chosen else "—" for a in table.archs) + " |")
    rel = summary["relative_improvement"][table.main_metric]
    if rel:
        lines += ["", f"## Relative {table.main_metric} over ft (%)", "",
                  "| Method | " + " | ".join(rel) + " |", "|---|" + "---:|" * len(rel)]
        for s in table.strategies:
            lines.append("| " + s + " | " + " | ".join(
                "—" if rel[a].get(s) is None else f"{rel[a][s]:+.2f}" for a in rel) + " |")
        lines += [""] + [f"![relative {table.main_metric}, {a}]({p})" for a, p in zip(rel, summary["plots"])]
        lines += ["", f"## Effectiveness (Table 12): improvements over ft by more than {IMPROVEMENT_THRESHOLD} %",
                  "", f"Counted over architecture × metric ({', '.join(table.metrics)}).", "",
                  effectiveness_markdown(table, summary["effectiveness"])]
    else:
        lines += ["", "No `ft` runs: relative improvement and effectiveness need the ft baseline."]
    lines += ["", "## Winners", ""] + [f"- {a}: **{w}** (best {table.split} {table.main_metric})"
                                        for a, w in summary["winners"].items()]
    return "\n".join(lines) + "\n"


def _html(table: CompareTable, summary: dict, plots: dict[str, bytes]) -> str:
    page = Page("Fine-tuning strategies compared")
    for note in _notes(table, summary):
        page.paragraph(note.replace("**", "").replace("<u>", "").replace("</u>", ""), "note")
    header = table_header(table)
    rows = marked_rows(table, lambda text: text + " ★", lambda text: text + " (overall best)")
    page.heading(f"Mean (SE) over seeds, {table.split} split, percent (★ best in column)")
    page.table(header, rows)
    page.heading("Chosen learning rates (best mean validation " + table.main_metric + ")")
    page.table(["Method", *table.archs],
               [[s, *(f"{table.chosen[(a, s)]['lr']:g}" if (a, s) in table.chosen else None for a in table.archs)]
                for s in table.strategies])
    rel = summary["relative_improvement"][table.main_metric]
    if rel:
        page.heading(f"Relative {table.main_metric} over ft (%)")
        for arch, png in plots.items():
            page.image(png, f"relative {table.main_metric} for {arch}")
        eff = summary["effectiveness"]
        page.heading(f"Effectiveness: improvements over ft by more than {IMPROVEMENT_THRESHOLD} % "
                     f"(architecture × metric: {', '.join(table.metrics)})")
        page.table(["Method", *table.archs, "Total", "Experiments", "Effectiveness (%)"],
                   [[s, *(r["per_arch"][a] for a in table.archs), r["total"], r["experiments"], r["effectiveness"]]
                    for s, r in eff["rows"].items()])
    page.heading("Winners")
    page.table(["Architecture", f"best {table.split} {table.main_metric}"],
               [[a, w] for a, w in summary["winners"].items()])
    return page.render()


def write_search_report(out: Path, data: dict) -> None:
    write_json(out / "search.json", data)
