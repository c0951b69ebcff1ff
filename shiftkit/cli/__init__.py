"""The ``shiftkit`` command line: a thin typer layer over the library."""

from __future__ import annotations

import typer

from shiftkit.cli.diagnose import diagnose
from shiftkit.cli.finetune import finetune
# other command imports (one line each)

app = typer.Typer(
    name="shiftkit",
    help="Measure dataset shift between medical-imaging domains and fine-tune pre-trained CNNs for it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(finetune)
app.command()(diagnose)
# other command registrations (one line each)


@app.callback()
def _root() -> None:
    """shiftkit: how far has the target drifted from the source, and how should the model adapt?"""


def main() -> None:
    app()
