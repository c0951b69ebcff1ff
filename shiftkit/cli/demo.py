"""``shiftkit demo``: the whole tool on a planted two-hospital shift, no data needed."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from shiftkit.cli.common import console, err_console, output_folder, user_errors
from shiftkit.cli.progress import EpochProgress, StageProgress, make_progress
from shiftkit.errors import ConfigError


def _found_table(summary: dict) -> Table:
    table = Table(title="What was planted in hospital B, and what shiftkit found", show_lines=True)
    table.add_column("shift", style="bold")
    table.add_column("planted")
    table.add_column("found by diagnose")
    for row in summary["found_vs_planted"]:
        table.add_row(escape(row["shift"]), escape(row["planted"]), escape(row["found"]))
    return table


def _recommendation_table(summary: dict, top: int = 3) -> Table:
    recommendation = summary["recommendation"]
    table = Table(title="Recommended fine-tuning strategies (expected gain over ft; "
                        f"{escape(recommendation.get('model', 'published evidence'))})")
    for column in ("rank", "strategy", "expected gain", "why"):
        table.add_column(column)
    for rank, advice in enumerate(recommendation["ranking"][:top], start=1):
        gain = f"{advice['expected_gain']:+.1f} % ± {advice['uncertainty']:.1f}"
        table.add_row(str(rank), escape(advice["strategy"]), gain, escape("; ".join(advice["reasons"][:2])))
    return table


def _finetune_table(summary: dict) -> Table:
    f = summary["finetune"]
    table = Table(title=f"'{f['strategy']}' trained on hospital A ({f['epochs_run']} epochs), tested on both, "
                  "then BN-adapted to B")
    for column in ("data", "accuracy (macro)", "AUROC", "F1"):
        table.add_column(column)
    rows = (("hospital A (validation)", f["val_hospital_a"]), ("hospital B (test)", f["test_hospital_b"]),
            ("hospital B after AdaBN", summary["adabn"]["test_hospital_b_after"]))
    for name, metrics in rows:
        table.add_row(name, *(f"{metrics[m]:.3f}" if metrics.get(m) is not None else "—"
                              for m in ("accuracy", "auroc", "f1")))
    return table


def _estimate_line(summary: dict) -> str:
    e = summary["estimate"]
    parts = []
    for metric, name in (("accuracy", "accuracy"), ("balanced_accuracy", "macro accuracy")):
        row = e[metric]
        method = row.get("method", e["method"])
        lo, hi = row["interval"]
        measured = f"measured {row['measured']:.3f}"
        if row.get("measured_interval"):
            measured += " [{:.3f}, {:.3f}]".format(*row["measured_interval"])
        parts.append(f"{name} {row['estimate']:.3f} [{lo:.3f}, {hi:.3f}] ({method}), {measured}")
    flags = f"; flags raised: {', '.join(e['flags'])}" if e["flags"] else ""
    return "Hospital B estimated before its labels were used: " + "; ".join(parts) + flags


@user_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder: data/, diagnose/, finetune/, demo.json."),
    seed: int = typer.Option(0, help="Seed for the generated hospitals and every step after."),
    epochs: int = typer.Option(6, help="Fine-tuning epochs."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Two synthetic hospitals with a planted shift: diagnose, recommend, fine-tune, adapt BN (under 3 min on a CPU)."""
    from shiftkit.demo.pipeline import DemoHooks, DemoRequest, run_demo
    from shiftkit.finetune.trainer import resolve_device

    if epochs < 1:  # options first: nothing generated, diagnosed or written for a run that cannot finish
        raise ConfigError(f"--epochs {epochs}: must be at least 1")
    resolve_device(device)
    out = output_folder(out)
    request = DemoRequest(out=out, seed=seed, epochs=epochs, device=device)
    with make_progress(err_console) as progress:
        trainer = EpochProgress(progress, epochs)
        stages = StageProgress(progress)

        def on_phase(description: str) -> None:
            stages.end_step()
            progress.console.print(f"[bold cyan]{description}[/]")

        summary = run_demo(request, DemoHooks(on_stage=stages.stage, on_step=stages.step, trainer=trainer,
                                              on_phase=on_phase))
    console.print(_found_table(summary))
    console.print(_recommendation_table(summary))
    console.print(_finetune_table(summary))
    console.print(_estimate_line(summary), markup=False)
    before, after = summary["adabn"]["test_hospital_b_before"], summary["adabn"]["test_hospital_b_after"]
    change = after["accuracy"] - before["accuracy"]
    verdict = "helped" if change > 0.01 else "hurt" if change < -0.01 else "did not change"
    console.print(f"AdaBN {verdict} on hospital B (macro accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}): "
                  "BN adaptation is not a guaranteed fix; check it on a few labelled target images before deploying.")
    console.print(f"done in {summary['seconds']:.0f} s; see {summary['outputs']['diagnose']} and {out / 'demo.json'}",
                  markup=False)
