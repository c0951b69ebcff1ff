"""Plots as PNG bytes (matplotlib, headless)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.text  # noqa: E402
import numpy as np  # noqa: E402


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (for self-contained HTML pages); the figure is closed.

    Every text is drawn literally: labels, sites, file and feature names are user text, and matplotlib would read
    ``$...$`` in them as mathtext (``$\\frac{a$`` raised, and ``$x$`` came out in italics)."""
    for text in fig.findobj(matplotlib.text.Text):
        text.set_parse_math(False)
    buffer = io.BytesIO()
    try:
        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):  # ticks made while drawing
            fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def embedding_scatter(source: np.ndarray, target: np.ndarray, seed: int = 0, max_points: int = 3000) -> bytes:
    """Both domains on the first two principal components of the pooled embeddings."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    pick = lambda x: x[rng.choice(len(x), size=min(len(x), max_points), replace=False)]  # noqa: E731
    s, t = pick(source), pick(target)
    pca = PCA(n_components=2, random_state=seed).fit(np.vstack([s, t]))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for points, total, name, colour in ((s, len(source), "source", "#1f77b4"), (t, len(target), "target", "#d62728")):
        xy = pca.transform(points)
        shown = f"n={total}" if len(points) == total else f"{len(points)} of {total} shown"
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.5, label=f"{name} ({shown})", color=colour)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("Embeddings of both domains")
    ax.legend()
    return figure_png(fig)


def prior_bars(classes: list[str], source: dict, estimated: dict, ci: dict, true: dict | None) -> bytes:
    """Source prior, estimated target prior with its interval, and the true target prior when known."""
    x = np.arange(len(classes))
    width = 0.28 if true else 0.4
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(classes) + 2), 4))
    ax.bar(x - width, [source[c] for c in classes], width, label="source", color="#1f77b4")
    est = np.array([estimated[c] for c in classes])
    low = est - np.array([ci[c][0] for c in classes])
    high = np.array([ci[c][1] for c in classes]) - est
    ax.bar(x, est, width, yerr=[np.clip(low, 0, None), np.clip(high, 0, None)], capsize=3,
           label="target, estimated without labels", color="#d62728")
    if true:
        ax.bar(x + width, [true[c] for c in classes], width, label="target, true", color="#999999")
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("class prior")
    ax.set_ylim(0, 1.0)
    # above the axes: never on a bar nor on long class names (figure_png's tight bounding box keeps it in view)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    return figure_png(fig)


MAX_BARS = 40


def per_dimension(values: list[float], p_values: list[float], label: str) -> bytes:
    """Per-dimension two-sample statistic (e.g. KS D per softmax output), red where significant; at most
    MAX_BARS dimensions, the most shifted ones, so that a 2048-d embedding still gives a readable figure."""
    order = np.argsort(values)[::-1][:MAX_BARS] if len(values) > MAX_BARS else np.arange(len(values))
    threshold = 0.05 / max(len(p_values), 1)
    fig, ax = plt.subplots(figsize=(max(5, 0.25 * len(order) + 2), 3.5))
    colours = ["#cf222e" if p_values[i] < threshold else "#8c8c8c" for i in order]
    ax.bar(np.arange(len(order)), [values[i] for i in order], color=colours)
    ax.set_xticks(np.arange(len(order)), [str(i) for i in order], fontsize=7)
    ax.set_xlabel(label if len(order) == len(values) else f"{label} (the {len(order)} most shifted of {len(values)})")
    ax.set_ylabel("KS statistic D")
    ax.set_title("Shift per dimension (red: significant after Bonferroni)")
    return figure_png(fig)


def shift_by_depth(blocks: list[str], auc: list[float], auc_ci: list[tuple[float, float]], shifted: list[bool],
                   pretraining: dict[str, list[float]] | None = None) -> bytes:
    """Where the shift lands: the source-vs-target domain-classifier AUC per block (0.5: no shift) with its
    interval, significant blocks filled; beside it, each domain's distance from the pre-training statistics."""
    panels = 2 if pretraining else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    x = np.arange(len(blocks))
    ax = axes[0][0]
    low = np.array(auc) - np.array([c[0] for c in auc_ci])
    high = np.array([c[1] for c in auc_ci]) - np.array(auc)
    ax.errorbar(x, auc, yerr=[np.clip(low, 0, None), np.clip(high, 0, None)], color="#d62728", capsize=3, lw=1.5)
    ax.scatter(x, auc, s=40, color=["#d62728" if s else "white" for s in shifted], edgecolors="#d62728", zorder=3)
    ax.axhline(0.5, color="#888", ls="--", lw=1)
    ax.set_ylim(0.4, 1.02)
    ax.set_xticks(x, blocks, rotation=30, ha="right")
    ax.set_ylabel("domain-classifier AUC (source vs target)")
    ax.set_title("Shift by depth (filled: significant)")
    if pretraining:
        ax = axes[0][1]
        for (name, values), colour in zip(pretraining.items(), ("#1f77b4", "#d62728")):
            ax.plot(x[: len(values)], values, marker="o", color=colour, label=name)
        ax.set_xticks(x, blocks, rotation=30, ha="right")
        ax.set_ylabel("mean KL from the BatchNorm statistics")
        ax.set_title("Distance from pre-training")
        ax.legend()
    fig.tight_layout()
    return figure_png(fig)
