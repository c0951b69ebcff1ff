"""The options ``finetune`` and ``compare`` share, each declared once (typer ``Annotated`` aliases).

The training hyperparameters are one group, :data:`HYPERPARAMETERS`: a command decorated with
:func:`hyperparameter_options` takes every option of the group in place of its ``hyperparameters`` parameter, which
receives their values; :func:`training_settings` turns them into ``TrainConfig`` keyword arguments and a
``StrategyConfig``. A new strategy hyperparameter is therefore a ``StrategyConfig`` field and one entry here; both
commands take it, and ``compare`` counts it in a grid's identity. Options a protocol sets default to None here:
``training_settings`` fills them from ``--protocol``; the others default to their config field's default.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from shiftkit.finetune.config import TrainConfig
from shiftkit.finetune.protocol import (CLASS_WEIGHTS, LP_SOLVERS, PROTOCOL_SETTINGS, PROTOCOLS, SP_UPDATES,
                                        resolve_protocol)
from shiftkit.finetune.strategies import StrategyConfig

# -- data, reading and the machine --------------------------------------------------------------------------------
ValOption = Annotated[Optional[Path], typer.Option(
    help="Validation data; default: a stratified 20% split of DATA, drawn per seed.")]
CacheDirOption = Annotated[Optional[Path], typer.Option(
    help="Disk cache for decoded, resized images (reused across runs).")]
ImageSizeOption = Annotated[Optional[int], typer.Option(
    help="Crop size (default 224, as the paper); smaller trains faster on a CPU.")]
WindowOption = Annotated[Optional[str], typer.Option(
    help="Intensity window LOW,HIGH for 16-bit/medical images (default: 0.5-99.5th percentile per image).")]
SliceOption = Annotated[Optional[int], typer.Option(
    "--slice", help="Axial slice of 3-D volumes (default: the middle one).")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
InitOption = Annotated[Optional[Path], typer.Option(
    help="Start from a finetune output folder (or its checkpoints/best.pt) instead of ImageNet weights: its "
         "architecture (--arch may be left out) and image size, its head when the classes match, and l1_sp/l2_sp "
         "anchored to its weights. Not with --weights.")]

# -- training (TrainConfig) ----------------------------------------------------------------------------------------
BatchSizeOption = Annotated[int, typer.Option(help="Batch size (the paper: 64).")]
PatienceOption = Annotated[int, typer.Option(
    help="Early stopping: epochs without validation improvement (the paper: 5).")]
MonitorOption = Annotated[str, typer.Option(
    help="Validation metric for early stopping, the best checkpoint and (compare) the learning rate: auto (mAP for "
         "multi-label, AUROC otherwise), map, accuracy, auroc, kappa, f1.")]
ProtocolOption = Annotated[str, typer.Option(
    help=f"Defaults for the options below: {' or '.join(PROTOCOLS)}. shiftkit: solved linear probe, balanced "
         "class weights, decoupled SP; paper: Davila et al. as written (Adam head, eq. 1/3 in the loss, no class weights).")]
LpSolverOption = Annotated[Optional[str], typer.Option(
    help=f"lp and the head-only phase of lp_ft: {' or '.join(LP_SOLVERS)} (lbfgs: logistic regression on standardised "
         "features, its strength chosen on validation; adam: Adam steps on the head, the paper). Default: the protocol's.")]
ClassWeightOption = Annotated[Optional[str], typer.Option(
    help=f"Training loss weights: {' or '.join(CLASS_WEIGHTS)} (balanced: inverse training priors). Default: the protocol's.")]

# -- the strategies' own (StrategyConfig) --------------------------------------------------------------------------
EpochsPerBlockOption = Annotated[Optional[int], typer.Option(
    help="g_lf/g_fl: epochs per unfrozen block (default epochs // blocks).")]
LpEpochsOption = Annotated[int, typer.Option(help="lp_ft: epochs of linear probing before all layers train.")]
SpUpdateOption = Annotated[Optional[str], typer.Option(
    help=f"l1_sp/l2_sp: {' or '.join(SP_UPDATES)} (decoupled: a pull toward the pre-trained weights after each Adam "
         "step; penalty: the paper's loss term). Default: the protocol's.")]
AlphaOption = Annotated[Optional[float], typer.Option(
    help="l1_sp/l2_sp: strength of the pull toward the pre-trained weights (default: decoupled l1_sp 0.1, l2_sp 10; "
         "penalty 0.01).")]
BetaOption = Annotated[Optional[float], typer.Option(
    help="l1_sp/l2_sp: strength of the pull of the new head toward 0 (defaults as --alpha).")]
RgnBatchesOption = Annotated[int, typer.Option(help="auto_rgn: batches per epoch for the relative gradient norms.")]
RgnWeightDecayOption = Annotated[float, typer.Option(help="auto_rgn: Adam weight decay (the authors' code: 1e-4).")]

HYPERPARAMETERS: dict[str, object] = {
    "epochs_per_block": EpochsPerBlockOption,
    "lp_epochs": LpEpochsOption,
    "protocol": ProtocolOption,
    "lp_solver": LpSolverOption,
    "class_weight": ClassWeightOption,
    "sp_update": SpUpdateOption,
    "alpha": AlphaOption,
    "beta": BetaOption,
    "rgn_batches": RgnBatchesOption,
    "rgn_weight_decay": RgnWeightDecayOption,
}
"""The training hyperparameters both commands take, in the order ``--help`` lists them: ``protocol``, the options
a protocol sets, and every ``StrategyConfig`` field (a test checks that none is missing)."""


def _defaults() -> dict:
    """Each hyperparameter option's default: None where the protocol decides, else its config field's default."""
    declared = {f.name: f.default for cls in (TrainConfig, StrategyConfig) for f in fields(cls)}
    defaults = {}
    for name in HYPERPARAMETERS:
        if declared.get(name, MISSING) is MISSING:
            raise TypeError(f"cli.options.HYPERPARAMETERS: '{name}' is no TrainConfig or StrategyConfig field "
                            "with a plain default")
        defaults[name] = None if name in PROTOCOL_SETTINGS else declared[name]
    return defaults


def hyperparameter_options(command: Callable) -> Callable:
    """Give ``command`` the options of :data:`HYPERPARAMETERS` where its ``hyperparameters`` parameter stands;
    the command is called with their values as one dict in that parameter (typer reads the signature set here)."""
    signature = inspect.signature(command, eval_str=True)  # typer needs the Annotated objects, not their names
    defaults = _defaults()
    parameters = []
    for parameter in signature.parameters.values():
        if parameter.name == "hyperparameters":
            parameters += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[name],
                                             annotation=alias) for name, alias in HYPERPARAMETERS.items()]
        else:
            parameters.append(parameter)
    if len(parameters) != len(signature.parameters) + len(HYPERPARAMETERS) - 1:
        raise TypeError(f"{command.__name__} needs a 'hyperparameters' parameter for @hyperparameter_options")

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        values = {name: kwargs.pop(name, defaults[name]) for name in HYPERPARAMETERS}
        return command(*args, **kwargs, hyperparameters=values)

    wrapper.__signature__ = signature.replace(parameters=parameters)
    return wrapper


def training_settings(hyperparameters: dict) -> tuple[dict, StrategyConfig]:
    """Keyword arguments for ``TrainConfig`` and the ``StrategyConfig`` the options ask for: the protocol's settings
    with every option the user gave (not None) put over them (see finetune.protocol)."""
    values = dict(hyperparameters)
    protocol = values.pop("protocol")
    values.update(resolve_protocol(protocol, **{name: values.pop(name) for name in PROTOCOL_SETTINGS}))
    train_fields = {f.name for f in fields(TrainConfig)}
    train = {"protocol": protocol, **{k: v for k, v in values.items() if k in train_fields}}
    return train, StrategyConfig(**{k: v for k, v in values.items() if k not in train_fields})
