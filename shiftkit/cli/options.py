"""Training options shared by ``finetune`` and ``compare``, declared once (typer ``Annotated`` aliases).

Options a protocol sets default to None here: ``training_settings`` fills them from ``--protocol``.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from shiftkit.finetune.protocol import CLASS_WEIGHTS, LP_SOLVERS, PROTOCOLS, SP_UPDATES, resolve_protocol

ProtocolOption = Annotated[str, typer.Option(
    help=f"Defaults for the options below: {' or '.join(PROTOCOLS)}. shiftkit: solved linear probe, balanced "
         "class weights, decoupled SP; paper: Davila et al. as written (Adam head, eq. 1/3 in the loss, no class weights).")]
LpSolverOption = Annotated[Optional[str], typer.Option(
    help=f"lp and the head-only phase of lp_ft: {' or '.join(LP_SOLVERS)} (lbfgs: logistic regression on standardised "
         "features, its strength chosen on validation; adam: Adam steps on the head, the paper). Default: the protocol's.")]
ClassWeightOption = Annotated[Optional[str], typer.Option(
    help=f"Training loss weights: {' or '.join(CLASS_WEIGHTS)} (balanced: inverse training priors). Default: the protocol's.")]
SpUpdateOption = Annotated[Optional[str], typer.Option(
    help=f"l1_sp/l2_sp: {' or '.join(SP_UPDATES)} (decoupled: a pull toward the pre-trained weights after each Adam "
         "step; penalty: the paper's loss term). Default: the protocol's.")]
AlphaOption = Annotated[Optional[float], typer.Option(
    help="l1_sp/l2_sp: strength of the pull toward the pre-trained weights (default: decoupled l1_sp 0.1, l2_sp 10; "
         "penalty 0.01).")]
BetaOption = Annotated[Optional[float], typer.Option(
    help="l1_sp/l2_sp: strength of the pull of the new head toward 0 (defaults as --alpha).")]
RgnWeightDecayOption = Annotated[float, typer.Option(
    help="auto_rgn: Adam weight decay (the authors' code: 1e-4).")]


def training_settings(protocol: str, lp_solver: str | None, class_weight: str | None, sp_update: str | None,
                      alpha: float | None, beta: float | None) -> tuple[dict, dict]:
    """Keyword arguments for ``TrainConfig`` and ``StrategyConfig``: protocol ``protocol``'s settings with the
    options the user gave put over them (see finetune.protocol)."""
    settings = resolve_protocol(protocol, lp_solver=lp_solver, class_weight=class_weight, sp_update=sp_update,
                                alpha=alpha, beta=beta)
    train = {"protocol": protocol, "lp_solver": settings["lp_solver"], "class_weight": settings["class_weight"]}
    strategy = {"sp_update": settings["sp_update"], "alpha": settings["alpha"], "beta": settings["beta"]}
    return train, strategy
