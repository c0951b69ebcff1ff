"""Label-free performance estimation: how well will the model do on an unlabelled target site?

From one model's outputs on labelled source validation images (not used for training) and on the unlabelled
target, :func:`estimate_performance` estimates target accuracy and, where the method allows, balanced accuracy,
per-class sensitivity/specificity, PPV/NPV and AUROC (binary), each with a bootstrap interval and the assumption it
rests on, plus flags that say when not to trust them.

========  ==========================================================  ========================================
method    estimate                                                    metrics
========  ==========================================================  ========================================
source    the source validation metrics (naive baseline)              all (AUROC binary)
ac        average BCTS-calibrated confidence, as an expected           all (expected AUROC, binary, as CBPE)
          confusion matrix (CBPE)
ac_dc     ac with a distance check (Roschewitz & Glocker 2023):        all (as ac)
          target images beyond the source's reach count at chance
atc       average thresholded confidence (Garg et al. 2022)           accuracy
doc       difference of confidences (Guillory et al. 2021)            accuracy
iw        importance-weighted source metrics (density ratios)         all (weighted AUROC, binary)
cm_atc    per-predicted-class ATC -> confusion matrix; thresholds on   accuracy, balanced accuracy, sensitivity,
          a source re-weighted to the target prior; PPV/NPV by Bayes   specificity, PPV/NPV (no AUROC)
========  ==========================================================  ========================================

Every method assumes no concept shift (P(y|x) unchanged), which no label-free method can check.
"""

from shiftkit.estimate.distance import DistanceCheck, distance_check_from_embeddings
from shiftkit.estimate.estimators import METHODS, MethodInfo
from shiftkit.estimate.flags import (
    Flag,
    concept_shift_flag,
    covariate_shift_flag,
    extrapolation_flag,
    far_from_source_flag,
    importance_weight_flag,
    label_shift_flag,
    sample_size_flag,
)
from shiftkit.estimate.inputs import EstimationData, prepare
from shiftkit.estimate.metrics import confusion_rates, joint_confusion, predictive_values, weighted_auroc
from shiftkit.estimate.result import EstimateResult, PerformanceEstimate
from shiftkit.estimate.run import DEFAULT_METHODS, embedding_inputs, estimate_performance
from shiftkit.estimate.thresholds import atc_estimate, atc_threshold, confidence_scores
from shiftkit.estimate.weights import (
    DensityRatio,
    density_ratio_from_domain_proba,
    density_ratio_from_embeddings,
    density_ratio_from_weights,
)

__all__ = [
    "DEFAULT_METHODS",
    "DensityRatio",
    "DistanceCheck",
    "EstimateResult",
    "EstimationData",
    "Flag",
    "METHODS",
    "MethodInfo",
    "PerformanceEstimate",
    "atc_estimate",
    "atc_threshold",
    "concept_shift_flag",
    "confidence_scores",
    "confusion_rates",
    "covariate_shift_flag",
    "density_ratio_from_domain_proba",
    "density_ratio_from_embeddings",
    "density_ratio_from_weights",
    "distance_check_from_embeddings",
    "embedding_inputs",
    "estimate_performance",
    "extrapolation_flag",
    "far_from_source_flag",
    "importance_weight_flag",
    "joint_confusion",
    "label_shift_flag",
    "predictive_values",
    "prepare",
    "sample_size_flag",
    "weighted_auroc",
]
