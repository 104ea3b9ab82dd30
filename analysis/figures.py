"""The paper's figures from stored results (matplotlib; each written as PNG and PDF).

- :func:`plot_mask_iou`: distribution of the IoU between text- and visual-calibrated masks (Fig. 1b);
- :func:`plot_alpha`: average retention against ATV's alpha (Fig. 4);
- :func:`plot_text_ratio`: average retention against the retained text-token ratio (Fig. 5);
- :func:`plot_drift`: mean visual drift per block with the mean budget K on a second axis (Fig. A6);
- :func:`plot_tsne`: t-SNE of text and visual activations entering one block (Fig. 1a).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.results import ResultsError  # noqa: E402
from analysis.tables import retention  # noqa: E402


def save(fig: Figure, out: Path) -> list[Path]:
    """Write ``out`` with the suffixes .png and .pdf; returns both paths."""
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, bbox_inches="tight", dpi=150)
    plt.close(fig)
    return paths


def plot_mask_iou(iou: pd.DataFrame, out: Path) -> Figure:
    """Histogram of mask IoU per pathway; ``iou`` has columns pathway, sparsity, linear, iou."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.linspace(0, 1, 41)
    for (pathway, sparsity), group in iou.groupby(["pathway", "sparsity"]):
        ax.hist(group.iou, bins=bins, alpha=0.6, label=f"{pathway} pathway, {float(sparsity):.0%}")
    ax.set_xlabel("mask IoU (text pool vs visual pool)")
    ax.set_ylabel("linears")
    ax.legend()
    save(fig, out)
    return fig


def _retention_by(results: pd.DataFrame, key: pd.Series, what: str) -> pd.DataFrame:
    """Average retention of every pruned cell, with ``key`` (one value per row of ``results``); ``what``
    names the cells a figure needs, for the error when the grid has none."""
    dense = results[results.pathway == "dense"].set_index("task")["score"]
    if dense.empty:
        raise ResultsError("the grid holds no dense cell to compute retention against")
    pruned = results[results.pathway != "dense"].assign(key=key)
    rows = [{"key": k, "setting": s, "retention": retention(g.set_index("task")["score"], dense)}
            for (k, s), g in pruned.dropna(subset=["key"]).groupby(["key", "setting"])]
    if not rows:
        raise ResultsError(f"the grid holds no {what} cells (a table2 grid of ATV variants has them)")
    return pd.DataFrame(rows).sort_values("key")


def _atv_setting(methods: pd.Series, name: str, default: float) -> pd.Series:
    """The value of one ATV setting in method specs such as ``atv(alpha=2)``; NaN for other methods and
    for ATV cells that change anything else (their point belongs to another ablation)."""
    from probe.grid import parse_method_spec

    values = []
    for spec in methods:
        method, overrides = parse_method_spec(str(spec))
        only_this = method == "atv" and set(overrides) <= {name}
        values.append(float(overrides.get(name, default)) if only_this else float("nan"))
    return pd.Series(values, index=methods.index)


def _line_plot(table: pd.DataFrame, xlabel: str, out: Path) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for setting, group in table.groupby("setting"):
        ax.plot(group.key, group.retention, marker="o", label=str(setting))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("average retention (%)")
    ax.legend(title="sparsity")
    save(fig, out)
    return fig


def plot_alpha(results: pd.DataFrame, out: Path) -> Figure:
    """Average retention against alpha, from a grid whose methods are ``atv(alpha=...)`` cells."""
    table = _retention_by(results, _atv_setting(results.method, "alpha", 1.0), "atv(alpha=...)")
    return _line_plot(table, "alpha", out)


def plot_text_ratio(results: pd.DataFrame, out: Path) -> Figure:
    """Average retention against the retained text ratio, from ``atv(text_ratio=...)`` cells."""
    table = _retention_by(results, _atv_setting(results.method, "text_ratio", 1.0), "atv(text_ratio=...)")
    return _line_plot(table, "retained text-token ratio", out)


def plot_drift(blocks: pd.DataFrame, out: Path) -> Figure:
    """Mean visual drift per block (left axis) and mean budget K (right axis)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(blocks.block, blocks.mean_drift, marker="o", color="tab:blue")
    ax.set_xlabel("block")
    ax.set_ylabel("mean visual drift s̄")
    right = ax.twinx()
    right.bar(blocks.block, blocks.k_mean, alpha=0.3, color="tab:orange")
    right.set_ylabel("mean visual tokens kept K")
    save(fig, out)
    return fig


def plot_tsne(activations: np.ndarray, visual: np.ndarray, out: Path, seed: int = 0) -> Figure:
    """t-SNE (scikit-learn) of token activations (n, hidden), coloured by modality."""
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, len(activations) // 4)))
    points = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(activations)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(points[~visual, 0], points[~visual, 1], s=6, label="text tokens")
    ax.scatter(points[visual, 0], points[visual, 1], s=6, label="visual tokens")
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.legend()
    save(fig, out)
    return fig
