"""``audit --fingerprint``: where the shift lands, per site pair, from the same forward pass as the embeddings.

The per-block descriptors and image properties come with the embedding pass (``features.extract(blocks=True)``);
each pair of sites then gets :func:`~shiftkit.shift.fingerprint.block_shift` *without* the domain classifier (the
costly part, once per block per pair: the MMD² tests, corrected across blocks, decide and rank) and the image
properties compared (:func:`~shiftkit.shift.image_properties.compare_properties`). ``diagnose --fingerprint`` gives
the full view (classifier AUCs, distance from pre-training, gradient signal) for the one pair it compares.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Callable, Mapping, Sequence

import numpy as np

MAX_PERMUTATIONS = 200  # per block per pair; the peak is ranked by MMD², the p-values only decide "shifted"
TOP_PROPERTIES = 3
PROPERTY_KEYS = ("property", "cohens_d", "rank_biserial", "direction", "p_adjusted", "significant", "explained_by")


def pair_fingerprints(
    blocks: Mapping[str, np.ndarray],
    properties: Sequence[Mapping[str, float]] | None,
    sites: np.ndarray,
    site_names: Sequence[str],
    *,
    permutations: int = MAX_PERMUTATIONS,
    correction: str = "bh",
    alpha: float = 0.05,
    seed: int = 0,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Per-block MMD² and the peak block for every unordered pair of sites, with the image properties that differ.

    ``blocks`` maps each block to its n x 2C descriptors (rows aligned with ``sites``); ``properties`` is one dict per
    row (or None). Returns ``{"blocks": [names], "permutations": int, "pairs": [{"a", "b", "peak": {"block",
    "index", "of", "shifted"}, "profile": [{"block", "mmd", "p_adjusted", "shifted"}], "properties": [the first
    TOP_PROPERTIES significant rows of compare_properties, PROPERTY_KEYS only], "summary": str}]}``. The p-values are corrected across
    blocks within each pair (the pairwise matrix already corrects across pairs)."""
    from shiftkit.shift.fingerprint import block_shift, shift_peak
    from shiftkit.shift.image_properties import compare_properties, summary_line

    sites = np.asarray(sites)
    names = list(blocks)
    permutations = min(int(permutations), MAX_PERMUTATIONS)
    pairs = []
    for a, b in combinations(site_names, 2):
        if on_step:
            on_step(f"fingerprint {a} vs {b}")
        ia, ib = np.flatnonzero(sites == a), np.flatnonzero(sites == b)
        profile = block_shift({k: blocks[k][ia] for k in names}, {k: blocks[k][ib] for k in names},
                              permutations=permutations, seed=seed, correction=correction, alpha=alpha,
                              classifier=False)
        peak = shift_peak(profile)
        rows = (compare_properties([properties[i] for i in ia], [properties[i] for i in ib], alpha=alpha)
                if properties is not None else [])
        found = [{key: row[key] for key in PROPERTY_KEYS} for row in rows if row.get("significant")]
        where = (f"peaks at block {peak['index'] + 1} of {peak['of']} ({peak['block']})" if peak["shifted"]
                 else "no block shifted")
        changed = summary_line(found) if properties is not None else ""
        pairs.append({
            "a": str(a), "b": str(b),
            "peak": {key: peak[key] for key in ("block", "index", "of", "shifted")},
            "profile": [{"block": row["block"], "mmd": row["mmd"], "p_adjusted": row["p_adjusted"],
                         "shifted": row["shifted"]} for row in profile],
            "properties": found[:TOP_PROPERTIES],
            "summary": f"{where}; {changed}" if changed else where,
        })
    return {"blocks": names, "permutations": permutations, "correction": correction, "pairs": pairs}
