"""The ``shiftkit`` command line: a thin typer layer over the library."""

from __future__ import annotations

import typer

from shiftkit.cli.diagnose import diagnose
from shiftkit.cli.finetune import finetune
# other command imports (one line each)
from shiftkit.cli.audit import audit
from shiftkit.cli.harmonize import harmonize
from shiftkit.cli.demo import demo
from shiftkit.cli.recommend import recommend
from shiftkit.cli.adapt_bn import adapt_bn
from shiftkit.cli.combat import combat
from shiftkit.cli.compare import compare

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
app.command()(audit)
app.command()(harmonize)
app.command()(demo)
app.command()(recommend)
app.command("adapt-bn")(adapt_bn)
app.command()(combat)
app.command()(compare)


@app.callback()
def _root() -> None:
    """shiftkit: how far has the target drifted from the source, and how should the model adapt?"""


def main() -> None:
    app()
