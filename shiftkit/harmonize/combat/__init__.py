"""ComBat for tabular features (radiomics), one job per module:

- :mod:`.model`: the :class:`ComBat` estimator (fit, transform, to_dict/from_dict, save/load);
- :mod:`.bayes`: its empirical Bayes step (parametric and non-parametric posteriors);
- :mod:`.inputs`: input checks and the overflow-safe per-feature standardization;
- :mod:`.leakage`: association measures and the :class:`LeakageWarning` for covariates tied to site or label;
- :mod:`.store`: the JSON/NPZ model files;
- :mod:`.command`: ``shiftkit combat`` (request, result, :func:`run_combat`).

The features CSV and covariate encoding are :mod:`shiftkit.data.feature_table`, shared with
``audit --features-table``. Everything is re-exported here, so ``from shiftkit.harmonize.combat import ComBat`` works.
"""

from shiftkit.data.feature_table import ID_NAMES, IGNORED_PATTERNS, Covariate, FeatureTable, parse_covariates
from shiftkit.harmonize.combat.bayes import CONVERGENCE, MAX_ITERATIONS
from shiftkit.harmonize.combat.command import (
    CombatRequest,
    CombatResult,
    model_path_for,
    run_combat,
    site_effect_summary,
)
from shiftkit.harmonize.combat.leakage import (
    LEAKAGE_THRESHOLD,
    LeakageWarning,
    correlation_ratio,
    cramers_v,
    leakage_messages,
)
from shiftkit.harmonize.combat.model import FORMAT, VERSION, BeyondFloat64Error, ComBat

DEFAULT_EXCLUDE = IGNORED_PATTERNS  # the name this module used before the split

__all__ = [
    "CONVERGENCE", "DEFAULT_EXCLUDE", "FORMAT", "ID_NAMES", "LEAKAGE_THRESHOLD", "MAX_ITERATIONS", "VERSION",
    "BeyondFloat64Error", "ComBat", "CombatRequest", "CombatResult", "Covariate", "FeatureTable", "LeakageWarning",
    "correlation_ratio", "cramers_v", "leakage_messages", "model_path_for", "parse_covariates", "run_combat",
    "site_effect_summary",
]
