"""The ``shiftkit`` command line: a thin typer layer over the library."""

from __future__ import annotations

import typer

from shiftkit.cli.adapt_bn import adapt_bn
from shiftkit.cli.audit import audit
from shiftkit.cli.combat import combat
from shiftkit.cli.compare import compare
from shiftkit.cli.demo import demo
from shiftkit.cli.diagnose import diagnose
from shiftkit.cli.estimate import estimate
from shiftkit.cli.finetune import finetune
from shiftkit.cli.harmonize import harmonize
from shiftkit.cli.radiomics import radiomics_app
from shiftkit.cli.recommend import recommend

app = typer.Typer(
    name="shiftkit",
    help="Measure dataset shift between medical-imaging domains and fine-tune pre-trained CNNs for it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# In the order a user meets them: the demo, measure, fix at the input, choose and run a strategy, many sites.
app.command()(demo)
app.command()(diagnose)
app.command()(estimate)
app.command()(harmonize)
app.command("adapt-bn")(adapt_bn)
app.command()(combat)
app.command()(recommend)
app.command()(finetune)
app.command()(compare)
app.command()(audit)
app.add_typer(radiomics_app)


@app.callback()
def _root() -> None:
    """shiftkit: how far has the target drifted from the source, and how should the model adapt?"""


def main() -> None:
    app()
