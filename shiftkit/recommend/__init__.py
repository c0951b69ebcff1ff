"""Which fine-tuning strategy for this shift? Published evidence (Davila et al. 2024) + shift profile → ranking.

``evidence`` loads the bundled tables, ``recommender`` ranks the eight strategies with reasons, ``evaluate``
scores the recommender by leave-one-dataset-out over the published evidence.
"""

from shiftkit.recommend.evidence import PUBLISHED_STRATEGIES, Case, Evidence, Result, load_evidence
from shiftkit.recommend.recommender import Recommendation, ShiftFacts, StrategyAdvice, recommend

__all__ = ["PUBLISHED_STRATEGIES", "Case", "Evidence", "Recommendation", "Result", "ShiftFacts", "StrategyAdvice",
           "load_evidence", "recommend"]
