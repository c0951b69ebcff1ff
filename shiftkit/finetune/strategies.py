"""The eight fine-tuning strategies of Davila et al. (2024), as small policies in a registry.

A strategy decides which parameters train, at what learning rate, with what extra loss, and when that
changes, through four hooks the :class:`~shiftkit.finetune.trainer.Trainer` calls:

- ``begin_epoch(epoch, probe) -> bool``: update the plan; True when the parameter groups changed (the
  trainer then rebuilds the optimizer, as the paper's strategies do at each stage);
- ``param_groups() -> list[ParamGroup]``: what trains now and at which learning rate;
- ``penalty() -> Tensor | None``: a term added to the loss (L1-SP, L2-SP as the paper writes them);
- ``after_step()``: called after each optimizer step (the decoupled L1-/L2-SP pull toward the pre-trained weights);
- ``is_linear_probe() -> bool``: the current plan is a linear probe (head only), which the trainer may solve
  outright instead of by Adam steps (``lp``, the first phase of ``lp_ft``); solved, it counts as a plateau.
- ``on_plateau(epoch) -> bool``: early stopping would stop now; a staged strategy may move to its next stage
  instead (True), which resets the patience counter.

Register a ninth with ``@register("name")`` on a :class:`Strategy` subclass; the trainer needs no change. A
strategy reads the run's base learning rate and epoch count as ``self.lr`` and ``self.epochs`` (set once, in
:class:`~shiftkit.finetune.config.TrainConfig`) and its own settings from ``self.config`` (:class:`StrategyConfig`):
a new setting is a field there, which ``finetune`` and ``compare`` then record, and ``compare`` counts in a grid's
identity; its command-line option is one entry in ``shiftkit.cli.options.HYPERPARAMETERS``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from shiftkit.errors import ConfigError
from shiftkit.finetune.config import TrainConfig
from shiftkit.finetune.protocol import SP_UPDATES, check_choice
from shiftkit.models.registry import AdaptedModel

GradientProbe = Callable[[int], Iterator[dict[str, torch.Tensor]]]
"""``probe(n)`` yields, for ``n`` training batches, the gradient of the loss for every parameter by name."""

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass
class ParamGroup:
    names: list[str]
    lr: float
    weight_decay: float = 0.0  # Adam's (coupled) L2 weight decay


@dataclass
class StrategyConfig:
    """The strategies' own settings (each names the strategies that read it); the learning rate and the number
    of epochs are the run's (``TrainConfig``)."""

    epochs_per_block: int | None = None  # g_lf / g_fl; default max(1, epochs // n_blocks)
    lp_epochs: int = 5  # lp_ft
    alpha: float | None = None  # l1_sp / l2_sp, on the pre-trained part; None: SP_DEFAULTS for the update
    beta: float | None = None  # l1_sp / l2_sp, on the new head; None: SP_DEFAULTS for the update
    sp_update: str = "decoupled"  # l1_sp / l2_sp: "decoupled" (a pull after each step) or "penalty" (eq. 1/3)
    rgn_batches: int = 5  # auto_rgn: batches per epoch for the gradient-norm probe (the authors' 5)
    rgn_weight_decay: float = 1e-4  # auto_rgn: Adam weight decay, as the authors' code (surgical-finetuning)

    def validate(self) -> None:
        if self.epochs_per_block is not None and self.epochs_per_block < 1:
            raise ConfigError("--epochs-per-block must be at least 1")
        if self.lp_epochs < 0 or self.rgn_batches < 1:
            raise ConfigError("--lp-epochs must be at least 0 and --rgn-batches at least 1")
        for option, value in (("--alpha", self.alpha), ("--beta", self.beta),
                              ("--rgn-weight-decay", self.rgn_weight_decay)):
            if value is not None and not (math.isfinite(value) and 0 <= value <= 1e6):
                raise ConfigError(f"{option} must be a finite number from 0 to 1e6 (got {value})")
        check_choice("--sp-update", self.sp_update, SP_UPDATES)


class Strategy:
    """Base policy: every parameter trains at the base learning rate, from the first epoch."""

    name = "base"

    def __init__(self, adapted: AdaptedModel, config: StrategyConfig, train: TrainConfig | None = None) -> None:
        self.adapted = adapted
        self.config = config
        self.train = train if train is not None else TrainConfig()
        self.params = dict(adapted.model.named_parameters())
        self.head_names = adapted.head_param_names()
        self.block_names = adapted.block_param_names()

    @property
    def lr(self) -> float:
        """The run's base learning rate (``TrainConfig.lr``)."""
        return self.train.lr

    @property
    def epochs(self) -> int:
        """The run's maximum number of epochs (``TrainConfig.epochs``)."""
        return self.train.epochs

    # -- hooks ---------------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int, probe: GradientProbe) -> bool:
        return epoch == 0

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup(list(self.params), self.lr)]

    def penalty(self) -> torch.Tensor | None:
        return None

    def on_plateau(self, epoch: int) -> bool:
        return False

    def after_step(self) -> None:
        pass

    def is_linear_probe(self) -> bool:
        return False

    def config_dict(self) -> dict:
        """The settings as this strategy uses them (recorded in metrics.json and in the resume identity)."""
        return {"lr": self.lr, "epochs": self.epochs, **asdict(self.config)}

    # -- resume --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def describe(self) -> dict:
        """What the run output records about the current plan (per epoch)."""
        return {}

    def to(self, device: torch.device) -> None:
        """Move any tensors the strategy keeps (e.g. the starting point of L1/L2-SP) to ``device``."""

    def anchor_head(self) -> None:
        """The head is not new: it came with the starting point (``finetune --init`` kept a trained head).
        Strategies that hold weights near their start (L1/L2-SP) then hold the head there too."""


STRATEGY_CLASSES: dict[str, type[Strategy]] = {}
"""Every registered strategy by name, in registration order (the paper's eight first; plugins after)."""


def register(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    def decorate(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        STRATEGY_CLASSES[name] = cls
        return cls

    return decorate


def check_strategy_name(name: str) -> None:
    if name not in STRATEGY_CLASSES:
        raise ConfigError(f"unknown strategy '{name}' (choose from {', '.join(STRATEGY_CLASSES)})")


def make_strategy(name: str, adapted: AdaptedModel, config: StrategyConfig,
                  train: TrainConfig | None = None) -> Strategy:
    """Strategy ``name`` for ``adapted``, with its settings and the run's (lr, epochs; default ``TrainConfig()``)."""
    check_strategy_name(name)
    return STRATEGY_CLASSES[name](adapted, config, train)


@register("ft")
class FullFineTuning(Strategy):
    """All layers train from the start (§3.1.1)."""


@register("lp")
class LinearProbing(Strategy):
    """Only the new head trains; the frozen backbone runs in eval mode (§3.1.2)."""

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup(self.head_names, self.lr)]

    def is_linear_probe(self) -> bool:
        return True


class _Staged(Strategy):
    """A strategy whose trainable set grows in stages; a plateau moves to the next stage early."""

    def __init__(self, adapted: AdaptedModel, config: StrategyConfig, train: TrainConfig | None = None) -> None:
        super().__init__(adapted, config, train)
        self.stage = 0
        self.stage_start = 0
        self._advance_now = False

    @property
    def n_stages(self) -> int:
        raise NotImplementedError

    def stage_length(self) -> int | None:
        """Epochs per stage before the schedule advances (None: only a plateau advances)."""
        raise NotImplementedError

    def begin_epoch(self, epoch: int, probe: GradientProbe) -> bool:
        if epoch == 0:
            return True
        length = self.stage_length()
        due = length is not None and epoch - self.stage_start >= length
        if self.stage < self.n_stages - 1 and (due or self._advance_now):
            self.stage += 1
            self.stage_start = epoch
            self._advance_now = False
            return True
        return False

    def on_plateau(self, epoch: int) -> bool:
        if self.stage < self.n_stages - 1:
            self._advance_now = True
            return True
        return False

    def state_dict(self) -> dict:
        return {"stage": self.stage, "stage_start": self.stage_start, "advance_now": self._advance_now}

    def load_state_dict(self, state: dict) -> None:
        self.stage, self.stage_start = int(state["stage"]), int(state["stage_start"])
        self._advance_now = bool(state["advance_now"])

    def describe(self) -> dict:
        return {"stage": self.stage}


class _GradualUnfreeze(_Staged):
    @property
    def n_stages(self) -> int:
        return len(self.block_names)

    def stage_length(self) -> int:
        return self.config.epochs_per_block or max(1, self.epochs // len(self.block_names))

    def trainable_blocks(self) -> list[int]:
        raise NotImplementedError

    def param_groups(self) -> list[ParamGroup]:
        names = [n for b in self.trainable_blocks() for n in self.block_names[b]]
        return [ParamGroup(names, self.lr)]

    def describe(self) -> dict:
        return {"stage": self.stage, "trainable_blocks": [self.adapted.blocks[b][0] for b in self.trainable_blocks()]}


@register("g_lf")
class GradualLastToFirst(_GradualUnfreeze):
    """Stage k trains the last k+1 blocks (the last block holds the new head) (§3.1.3)."""

    def trainable_blocks(self) -> list[int]:
        last = len(self.block_names) - 1
        return list(range(last - self.stage, last + 1))


@register("g_fl")
class GradualFirstToLast(_GradualUnfreeze):
    """Stage k trains the first k+1 blocks plus the head block; the last stage trains all (§3.1.4)."""

    @property
    def n_stages(self) -> int:
        return len(self.block_names) - 1

    def trainable_blocks(self) -> list[int]:
        last = len(self.block_names) - 1
        return sorted(set(range(0, self.stage + 1)) | {last})


@register("lp_ft")
class LinearProbeThenFineTune(_Staged):
    """Head only for ``lp_epochs`` (or until validation plateaus), then all layers (§3.1.5)."""

    n_stages = 2

    def stage_length(self) -> int:
        return self.config.lp_epochs

    def param_groups(self) -> list[ParamGroup]:
        names = self.head_names if self.stage == 0 else list(self.params)
        return [ParamGroup(names, self.lr)]

    def is_linear_probe(self) -> bool:
        return self.stage == 0

    def describe(self) -> dict:
        return {"stage": self.stage, "phase": "lp" if self.stage == 0 else "ft"}


SP_DEFAULTS = {
    # (strategy, update): (alpha, beta). "penalty" is the paper's loss term, whose scale the paper does not give;
    # the decoupled values were chosen so that the backbone adapts (see README, "L1-SP and L2-SP under Adam").
    ("l1_sp", "penalty"): (0.01, 0.01),
    ("l2_sp", "penalty"): (0.01, 0.01),
    ("l1_sp", "decoupled"): (0.1, 0.1),
    ("l2_sp", "decoupled"): (10.0, 10.0),
}


class _StartingPointRegularizer(Strategy):
    """All layers train; the pre-trained part is held near w0 by alpha, the new head near 0 by beta.

    ``sp_update="penalty"`` adds the paper's term to the loss (eq. 1 / eq. 3), so Adam normalises it together with
    the cross-entropy gradient: an L1 pull of alpha per weight then outweighs a typical gradient and the backbone
    hardly moves. ``"decoupled"`` (the default) leaves the loss alone and, after each Adam step at learning rate
    ``lr``, pulls toward w0 as AdamW applies weight decay (L2: ``w -= lr * alpha * (w - w0)``), or takes the
    proximal step of the L1 term (``w - w0`` soft-thresholded by ``lr * alpha``): the pull is measured in units
    of the step Adam takes, whatever the gradients' scale.
    """

    def __init__(self, adapted: AdaptedModel, config: StrategyConfig, train: TrainConfig | None = None) -> None:
        super().__init__(adapted, config, train)
        head = set(self.head_names)
        self.backbone_names = [n for n in self.params if n not in head]
        self.backbone = [self.params[n] for n in self.backbone_names]
        self.head = [self.params[n] for n in self.head_names]
        self.start = [p.detach().clone() for p in self.backbone]
        default_alpha, default_beta = SP_DEFAULTS[(self.name, config.sp_update)]
        self.alpha = default_alpha if config.alpha is None else config.alpha
        self.beta = default_beta if config.beta is None else config.beta

    def backbone_named(self) -> list[tuple[str, torch.Tensor]]:
        return list(zip(self.backbone_names, self.backbone))

    def distance(self, diffs: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def pull(self, diff: torch.Tensor, step: float) -> torch.Tensor:
        """The decoupled update of ``diff`` (w - w0, or w for the head) for a pull of strength ``step``."""
        raise NotImplementedError

    def anchor_head(self) -> None:
        """A kept head (``finetune --init``) is held near its starting value with alpha, as the backbone, instead
        of near 0 with beta: its start is a trained head, not a random one."""
        self.backbone_names += self.head_names
        self.backbone += self.head
        self.start += [p.detach().clone() for p in self.head]
        self.head = []

    def penalty(self) -> torch.Tensor | None:
        if self.config.sp_update != "penalty":
            return None
        diffs = [p - p0 for p, p0 in zip(self.backbone, self.start)]
        head = self.beta * self.distance(self.head) if self.head else 0.0
        return self.alpha * self.distance(diffs) + head

    @torch.no_grad()
    def after_step(self) -> None:
        if self.config.sp_update != "decoupled":
            return
        for p, p0 in zip(self.backbone, self.start):
            p.copy_(p0 + self.pull(p - p0, self.lr * self.alpha))
        for p in self.head:
            p.copy_(self.pull(p, self.lr * self.beta))

    def config_dict(self) -> dict:
        return {**super().config_dict(), "alpha": self.alpha, "beta": self.beta}

    # w0 is not saved in checkpoints: a resumed run rebuilds the same model from the same weights first.
    def to(self, device: torch.device) -> None:
        self.start = [t.to(device) for t in self.start]


@register("l1_sp")
class L1StartingPoint(_StartingPointRegularizer):
    """Eq. 1: alpha * ||w_s - w0_s||_1 + beta * ||w_head||_1 (§3.1.6); decoupled: its proximal step."""

    def distance(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([t.abs().sum() for t in tensors]).sum()

    def pull(self, diff: torch.Tensor, step: float) -> torch.Tensor:
        return diff.sign() * (diff.abs() - step).clamp_min(0)


@register("l2_sp")
class L2StartingPoint(_StartingPointRegularizer):
    """Eq. 3: alpha * ||w_s - w0_s||_2^2 + beta * ||w_head||_2^2 (§3.1.7); decoupled: AdamW-style decay to w0."""

    def distance(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([t.pow(2).sum() for t in tensors]).sum()

    def pull(self, diff: torch.Tensor, step: float) -> torch.Tensor:
        return diff * (1.0 - min(step, 1.0))


@register("auto_rgn")
class AutoRGN(Strategy):
    """Per-tensor learning rates from relative gradient norms, as Lee et al.'s code does it (§3.1.8), with its
    Adam weight decay (``rgn_weight_decay``, 1e-4 in ``anniesch/surgical-finetuning``'s main.py).

    Once per epoch, over ``rgn_batches`` training batches, each parameter tensor's ||g||_2 / ||w||_2 is
    averaged; norm-layer parameters are skipped (and, as in the authors' code, not trained); the ratios are
    divided by the largest and the learning rate of each tensor is ``lr * ratio``; the optimizer is rebuilt.
    """

    def __init__(self, adapted: AdaptedModel, config: StrategyConfig, train: TrainConfig | None = None) -> None:
        super().__init__(adapted, config, train)
        norm_params = {
            f"{module_name}.{param_name}" if module_name else param_name
            for module_name, module in adapted.model.named_modules()
            if isinstance(module, NORM_LAYERS)
            for param_name, _ in module.named_parameters(recurse=False)
        }
        self.tuned = [n for n in self.params if n not in norm_params]
        self.ratios: dict[str, float] = {name: 1.0 for name in self.tuned}

    def begin_epoch(self, epoch: int, probe: GradientProbe) -> bool:
        with torch.no_grad():  # weights do not change during the probe: one norm per tensor, one transfer
            weight_norms = torch.stack([self.params[n].norm() for n in self.tuned]).double().cpu()
        sums = torch.zeros(len(self.tuned), dtype=torch.float64)
        batches = 0
        for grads in probe(self.config.rgn_batches):
            batches += 1
            zero = torch.zeros((), device=next(iter(grads.values())).device) if grads else torch.zeros(())
            grad_norms = torch.stack([grads[n].norm() if n in grads else zero for n in self.tuned]).double().cpu()
            sums += torch.where(weight_norms > 0, grad_norms / weight_norms, torch.zeros_like(sums))
        if batches and sums.max() > 0:
            self.ratios = dict(zip(self.tuned, (sums / sums.max()).tolist()))
        return True

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup([name], self.lr * self.ratios[name], self.config.rgn_weight_decay)
                for name in self.tuned]

    def state_dict(self) -> dict:
        return {"ratios": dict(self.ratios)}

    def load_state_dict(self, state: dict) -> None:
        self.ratios = {k: float(v) for k, v in state["ratios"].items()}

    def describe(self) -> dict:
        per_block: dict[str, list[float]] = {}
        for name, ratio in self.ratios.items():
            per_block.setdefault(self.adapted.blocks[self.adapted.block_of(name)][0], []).append(ratio)
        return {
            "rgn_ratios": dict(self.ratios),
            "rgn_block_mean": {k: round(sum(v) / len(v), 6) for k, v in per_block.items()},
        }
