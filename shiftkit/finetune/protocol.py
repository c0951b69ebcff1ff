"""Training protocols: the defaults that decide how the strategies are trained, declared in one place.

- ``shiftkit`` (the default): the frozen-backbone head is solved as representation-learning papers solve a
  linear probe (standardised features, L-BFGS logistic regression, regularisation chosen on validation), the
  loss is class-balanced, and L1-/L2-SP pull toward the pre-trained weights in a decoupled step that behaves
  under Adam;
- ``paper``: Davila et al. (2024) as written: Adam trains the head, eq. 1/3 are added to the loss with
  α = β = 0.01, no class weights.

Each option the protocol sets can still be given on its own (``--lp-solver``, ``--class-weight``,
``--sp-update``, ``--alpha``, ``--beta``); a given option wins over the protocol.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from shiftkit.errors import ConfigError

LP_SOLVERS = ("lbfgs", "adam")
CLASS_WEIGHTS = ("balanced", "none")
SP_UPDATES = ("decoupled", "penalty")


@dataclass(frozen=True)
class Protocol:
    lp_solver: str
    class_weight: str
    sp_update: str
    alpha: float | None  # None: the strategy's own default for its update (see strategies.SP_DEFAULTS)
    beta: float | None


PROTOCOLS: dict[str, Protocol] = {
    "shiftkit": Protocol(lp_solver="lbfgs", class_weight="balanced", sp_update="decoupled", alpha=None, beta=None),
    "paper": Protocol(lp_solver="adam", class_weight="none", sp_update="penalty", alpha=0.01, beta=0.01),
}
PROTOCOL_SETTINGS = tuple(f.name for f in fields(Protocol))
"""The options a protocol sets (TrainConfig and StrategyConfig fields of the same names)."""


def protocol_defaults(name: str) -> dict:
    """The option values protocol ``name`` sets (a user error naming the choices for an unknown name)."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown --protocol '{name}' (choose {', '.join(PROTOCOLS)})")
    return asdict(PROTOCOLS[name])


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {option} '{value}' (choose {', '.join(choices)})")


def resolve_protocol(name: str, **given) -> dict:
    """Protocol ``name``'s settings with every option the user gave (not None) put over them."""
    settings = protocol_defaults(name)
    unknown = set(given) - set(settings)
    if unknown:
        raise TypeError(f"not protocol settings: {sorted(unknown)}")
    settings.update({k: v for k, v in given.items() if v is not None})
    check_choice("--lp-solver", settings["lp_solver"], LP_SOLVERS)
    check_choice("--class-weight", settings["class_weight"], CLASS_WEIGHTS)
    check_choice("--sp-update", settings["sp_update"], SP_UPDATES)
    return settings
