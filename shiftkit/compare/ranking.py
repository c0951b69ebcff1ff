"""The order in which ``compare --search`` tries strategies: the recommender's ranking for the data at hand."""

from __future__ import annotations

from shiftkit.compare.grid import CompareSettings
from shiftkit.finetune.run import VAL_FRACTION
from shiftkit.finetune.strategies import STRATEGY_CLASSES


def recommender_ranking(settings: CompareSettings, arch: str) -> tuple[list[str], str]:
    """The recommender's ranking of strategies for this data and architecture, best first, and where it came from
    (the registry's order when ``shiftkit.recommend`` is not installed)."""
    try:
        from shiftkit.recommend.measured import facts_features, recommend_for_features
        from shiftkit.recommend.recommender import ShiftFacts
    except ImportError:
        return list(STRATEGY_CLASSES), "registry order (shiftkit.recommend is not available)"
    from shiftkit.data.table import load_table

    table = load_table(settings.data)
    counts = [c for c in table.class_counts().values() if c > 0]
    train_size = len(table) if settings.val is not None else int(round(len(table) * (1 - VAL_FRACTION)))
    facts = ShiftFacts(train_size=train_size, num_classes=len(table.classes),
                       imbalance=max(counts) / min(counts) if counts else 1.0, multilabel=table.multilabel)
    start = "source" if settings.init is not None else "imagenet"
    features = facts_features(train_size, len(table.classes), start)
    ranking = recommend_for_features(features, facts, arch, start)["ranking"]
    return [item["strategy"] for item in ranking], "recommender"
