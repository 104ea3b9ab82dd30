"""The paper's figures from stored results (matplotlib; each written as PNG and PDF and returned, so a
notebook shows it inline).

- :func:`plot_mask_iou`: distribution of the IoU between text- and visual-calibrated masks (Fig. 1b);
- :func:`plot_alpha`: task scores and average retention against ATV's alpha (Fig. 4);
- :func:`plot_text_ratio`: the same against the retained text-token ratio (Fig. 5);
- :func:`plot_drift`: mean visual drift per block over the mean budget K (Fig. A6);
- :func:`plot_tsne`: t-SNE of text and visual activations entering one block (Fig. 1a).

Error bars are one binomial standard error of a task score, ``sqrt(p (1 - p) / n)``, where the results
carry the item count ``n``; the dense model's score is the dashed line with its band. Average retention
carries its 95% interval: a paired bootstrap where the grid's per-item scores are given (``items``), else
the delta method from the tasks' standard errors (:func:`analysis.tables.retention_interval`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.results import ResultsError
from analysis.tables import retention_interval


def save(fig: Figure, out: Path) -> list[Path]:
    """Write ``out`` with the suffixes .png and .pdf; returns both paths. The figure leaves pyplot's
    registry (scripts make many) but stays drawable: a notebook displays the returned figure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, bbox_inches="tight", dpi=150)
    plt.close(fig)
    return paths


def _title(what: str, model: str | None) -> str:
    return f"{model}: {what}" if model else what


def plot_mask_iou(iou: pd.DataFrame, out: Path, model: str | None = None) -> Figure:
    """IoU of the text-pool and visual-pool masks per linear, a panel per pathway and an outlined
    histogram per sparsity (they overlap without hiding each other), medians dotted, the IoU of two
    independent random masks of the same sparsity dashed (:func:`random_mask_iou`); the axis spans the
    data. ``iou`` has columns pathway, sparsity, linear, iou."""
    pathways = list(dict.fromkeys(iou.pathway))
    fig, axes = plt.subplots(1, len(pathways), figsize=(4.5 * len(pathways), 3.5), sharey=True, squeeze=False)
    baselines = [random_mask_iou(float(s)) for s in iou.sparsity.unique()]
    low, high = min(iou.iou.min(), *baselines), max(iou.iou.max(), *baselines)
    margin = max(0.02, 0.05 * (high - low))
    bins = np.linspace(max(0.0, low - margin), min(1.0, high + margin), 41)
    for ax, pathway in zip(axes[0], pathways):
        for (sparsity, group), color in zip(iou[iou.pathway == pathway].groupby("sparsity"), plt.cm.tab10.colors):
            ax.hist(group.iou, bins=bins, histtype="step", linewidth=1.8, color=color,
                    label=f"{float(sparsity):.0%} sparsity")
            ax.axvline(group.iou.median(), color=color, linestyle=":", linewidth=1)
            ax.axvline(random_mask_iou(float(sparsity)), color=color, linestyle="--", linewidth=1,
                       label=f"random masks, {float(sparsity):.0%}")
        ax.set_xlim(bins[0], bins[-1])
        ax.set_title(f"{pathway} pathway")
        ax.set_xlabel("mask IoU (text pool vs visual pool)")
        ax.legend(fontsize="small")
    axes[0][0].set_ylabel("linears")
    fig.suptitle(_title("masks from text- vs visual-token statistics (Fig. 1b)", model))
    fig.tight_layout()
    save(fig, out)
    return fig


def random_mask_iou(sparsity: float) -> float:
    """The IoU of the pruned entries of two independent random masks that each prune ``sparsity`` of a large
    matrix: an entry is in both with probability ``s^2`` and in either with ``2s - s^2``, so ``s / (2 - s)``."""
    return sparsity / (2 - sparsity)


def _binomial_se(score: pd.Series, n: pd.Series | None) -> pd.Series:
    if n is None:
        return pd.Series(np.nan, index=score.index)
    return np.sqrt(score * (1 - score) / n.astype(float))


def _atv_setting(methods: pd.Series, name: str, default: float) -> pd.Series:
    """The value of one ATV setting in method specs such as ``atv(alpha=2)``; NaN for other methods and
    for ATV cells that change anything else (their point belongs to another ablation)."""
    from probe.pruning.method_spec import parse_method_spec

    values = []
    for spec in methods:
        method, overrides = parse_method_spec(str(spec))
        only_this = method == "atv" and set(overrides) <= {name}
        values.append(float(overrides.get(name, default)) if only_this else float("nan"))
    return pd.Series(values, index=methods.index)


def _sweep_points(results: pd.DataFrame, key: pd.Series, what: str, items: pd.DataFrame | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per task and point: score and its standard error, in %; per point: average retention and its 95%
    interval) of the pruned cells with a ``key`` value; ``what`` names the cells for the error."""
    dense = results[results.pathway == "dense"]
    if dense.empty:
        raise ResultsError("the grid holds no dense cell to compute retention against")
    pruned = results[results.pathway != "dense"].assign(key=key).dropna(subset=["key"])
    if pruned.empty:
        raise ResultsError(f"the grid holds no {what} cells (a table2 grid of ATV variants has them)")
    n = pruned["n"] if "n" in pruned else None
    points = pruned.assign(score_pct=100 * pruned.score, se_pct=100 * _binomial_se(pruned.score, n))
    averages = []
    for (k, s), group in pruned.groupby(["key", "setting"]):
        cell = group.cell.iloc[0] if "cell" in group else None
        value, low, high = retention_interval(cell, group, results, items)
        averages.append({"key": k, "setting": s, "retention": value, "low": low, "high": high})
    return points.sort_values("key"), pd.DataFrame(averages).sort_values("key")


def _sweep_plot(results: pd.DataFrame, key: pd.Series, what: str, xlabel: str, out: Path, categorical: bool,
                model: str | None, items: pd.DataFrame | None) -> Figure:
    """A panel per task (score against the swept setting, error bars, the dense line) and a last panel
    of the average retention with its 95% intervals."""
    points, averages = _sweep_points(results, key, what, items)
    dense = results[results.pathway == "dense"].set_index("task")
    tasks = list(dense.index)
    values = sorted(points.key.unique())
    position = {v: i for i, v in enumerate(values)} if categorical else {v: v for v in values}
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(3.2 * (len(tasks) + 1), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        score = 100 * dense.at[task, "score"]
        se = 100 * float(_binomial_se(dense.loc[[task], "score"], dense.loc[[task], "n"] if "n" in dense else None)
                         .iloc[0])
        ax.axhline(score, color="gray", linestyle="--", linewidth=1, label="dense")
        if se == se:
            ax.axhspan(score - se, score + se, color="gray", alpha=0.15)
        for setting, group in points[points.task == task].groupby("setting", sort=False):
            ax.errorbar([position[v] for v in group.key], group.score_pct, yerr=group.se_pct, marker="o",
                        capsize=3, label=str(setting))
        ax.set_title(task)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("score (%)")
    ax = axes[0][-1]
    for setting, group in averages.groupby("setting", sort=False):
        spread = np.array([group.retention - group.low, group.high - group.retention])
        ax.errorbar([position[v] for v in group.key], group.retention,
                    yerr=None if np.isnan(spread).all() else spread, marker="o", capsize=3, label=str(setting))
    ax.axhline(100, color="gray", linestyle="--", linewidth=1)
    ax.set_title("average")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("average retention (%)")
    ax.legend(title="sparsity", fontsize="small")
    if categorical:
        for ax in axes[0]:
            ax.set_xticks(range(len(values)), [f"{v:g}" for v in values])
    fig.suptitle(_title(f"ATV: {xlabel}", model))
    fig.tight_layout()
    save(fig, out)
    return fig


def plot_alpha(results: pd.DataFrame, out: Path, model: str | None = None, items: pd.DataFrame | None = None
               ) -> Figure:
    """Scores and average retention against alpha (categorical axis: 0 and a doubling sweep), from a
    grid whose methods are ``atv(alpha=...)`` cells (plain ``atv`` counts as alpha = 1)."""
    key = _atv_setting(results.method, "alpha", 1.0)
    return _sweep_plot(results, key, "atv(alpha=...)", "alpha", out, categorical=True, model=model, items=items)


def plot_text_ratio(results: pd.DataFrame, out: Path, model: str | None = None, items: pd.DataFrame | None = None
                    ) -> Figure:
    """Scores and average retention against the retained text ratio, from ``atv(text_ratio=...)`` cells."""
    key = _atv_setting(results.method, "text_ratio", 1.0)
    return _sweep_plot(results, key, "atv(text_ratio=...)", "retained text-token ratio", out, categorical=False,
                       model=model, items=items)


def flops_points(results: pd.DataFrame, sparse: bool = True, items: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per pruned cell of a grid with FLOPs columns: its kind (weights, tokens or joint), GFLOPs (of the
    language side; ``sparse``: pruned weights skipped, as sparse kernels would) and average retention with
    its 95% interval (``low``, ``high``)."""
    tokens = results.get("token_pruning", pd.Series(["none"] * len(results), dtype=str)).fillna("none").astype(str)
    if not (tokens != "none").any():
        raise ResultsError("the grid has no cell with visual token pruning (its token_methods name none): retention "
                           "against FLOPs sets weight, token and joint pruning side by side")
    column = "gflops_sparse" if sparse else "gflops"
    if column not in results:
        raise ResultsError(f"the grid holds no {column} column (grids record FLOPs per cell since token pruning)")
    dense = results[results.pathway == "dense"]
    if dense.empty:
        raise ResultsError("the grid holds no dense cell to compute retention against")
    rows = []
    for cell, group in results[results.pathway != "dense"].groupby("cell", sort=False):
        tokens = str(group.get("token_pruning", pd.Series(["none"])).iloc[0])
        weights = str(group.method.iloc[0]) != "dense"
        kind = "joint" if weights and tokens != "none" else ("weights" if weights else "tokens")
        value, low, high = retention_interval(cell, group, results, items)
        rows.append({"cell": cell, "kind": kind, "gflops": float(group[column].iloc[0]), "retention": value,
                     "low": low, "high": high})
    points = pd.DataFrame(rows)
    dense_flops = float(dense[column].iloc[0]) if column in dense and dense[column].notna().any() else np.nan
    return points.assign(dense_gflops=dense_flops)


def plot_retention_vs_flops(results: pd.DataFrame, out: Path, model: str | None = None, sparse: bool = True,
                            items: pd.DataFrame | None = None) -> Figure:
    """Average retention (with its 95% interval) against the language side's GFLOPs per request for
    weight-only, token-only and joint cells, the dense model at 100%. Each cell has its own marker and a
    number that the legend names; cells at the same FLOP count stand side by side around it."""
    points = flops_points(results, sparse, items)
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "os^vD<>pPXh*"
    span = max(float(points.gflops.max() - points.gflops.min()), float(points.gflops.max()) * 0.05, 1e-9)
    same = points.groupby(points.gflops.round(6)).cumcount()
    count = points.groupby(points.gflops.round(6)).gflops.transform("size")
    shifted = points.gflops + (same - (count - 1) / 2) * 0.012 * span  # cells at one FLOP count, side by side
    for number, (point, x) in enumerate(zip(points.itertuples(), shifted), start=1):
        color = KIND_COLORS[point.kind]
        spread = [[point.retention - point.low], [point.high - point.retention]]
        ax.errorbar([x], [point.retention], yerr=None if np.isnan(spread).any() else spread,
                    marker=markers[(number - 1) % len(markers)], color=color, capsize=2, linestyle="none",
                    alpha=0.8, label=f"{number}. {point.kind}: {point.cell}")
        ax.annotate(str(number), (x, point.retention), textcoords="offset points", xytext=(3, 3), fontsize=7,
                    color=color)
    if points.dense_gflops.notna().any():
        ax.scatter([points.dense_gflops.iloc[0]], [100.0], marker="*", s=120, color="black", label="dense")
    ax.set_xlabel("GFLOPs per request, language side" + (" (pruned weights skipped)" if sparse else ""))
    ax.set_ylabel("average retention (%) [95% CI]")
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(_title("retention vs FLOPs", model))
    save(fig, out)
    return fig


KIND_COLORS = {"weights": "tab:blue", "tokens": "tab:orange", "joint": "tab:green"}


def plot_drift(blocks: pd.DataFrame, out: Path, title: str | None = None) -> Figure:
    """Mean budget K per block as bars (right axis) under the mean visual drift s̄ as a line (left axis)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    right = ax.twinx()
    bars = right.bar(blocks.block, blocks.k_mean, alpha=0.35, color="tab:orange", label="mean visual tokens kept K")
    right.set_ylabel("mean visual tokens kept K")
    (line,) = ax.plot(blocks.block, blocks.mean_drift, marker="o", color="tab:blue", label="mean visual drift s̄")
    ax.set_xlabel("block")
    ax.set_ylabel("mean visual drift s̄")
    ax.set_zorder(right.get_zorder() + 1)  # the line in front of the bars
    ax.patch.set_visible(False)
    ax.legend(handles=[line, bars], loc="upper left", fontsize="small")
    ax.set_title(title or "ATV drift and budget per block (Fig. A6)")
    save(fig, out)
    return fig


def plot_tsne(activations: np.ndarray, visual: np.ndarray, out: Path, seed: int = 0, title: str | None = None
              ) -> Figure:
    """t-SNE (scikit-learn) of token activations (n, hidden), coloured by modality."""
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, len(activations) // 4)))
    points = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(activations)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(points[~visual, 0], points[~visual, 1], s=6, label="text tokens")
    ax.scatter(points[visual, 0], points[visual, 1], s=6, label="visual tokens")
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(title or "t-SNE of block inputs (Fig. 1a)")
    ax.legend()
    save(fig, out)
    return fig
