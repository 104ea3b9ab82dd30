"""The proxy metric's tables (what :mod:`probe.evaluation.divergence` measured in a grid's ``proxy.csv``).

- :func:`proxy_table`: per row of the grid's table (setting, then its row keys), the KL divergence from the
  dense model and the answers' negative log-likelihood, on image-text and on text-only conversations, each
  with its standard error (several calibration draws of a cell: their mean, the spread between draws
  counted as in :func:`analysis.tables.draw_stderr`);
- :func:`proxy_correlation`: how the proxy ranks the pruned rows against how task retention ranks them:
  Spearman's rank correlation with an exact (or, for many rows, random) permutation p-value.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.results import ResultsError

PROXY_COLUMNS = tuple(f"{metric} {group}" for metric in ("kl", "nll") for group in ("image", "text"))
EXACT_ROWS = 8  # up to this many rows, every permutation of the ranks is counted


def load_proxy(folder: str | Path) -> pd.DataFrame | None:
    """A grid's ``proxy.csv`` (one row per cell, group and metric), or None where the grid has none."""
    path = Path(folder) / "proxy.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    missing = [c for c in ("cell", "group", "metric", "value", "stderr") if c not in frame.columns]
    if missing:
        raise ResultsError(f"{path} lacks the column(s) {', '.join(missing)} of the proxy metric")
    return frame


def _row_keys(frame: pd.DataFrame, rows: list[str]) -> pd.Series:
    from analysis.tables import _setting_labels

    labels = _setting_labels(frame).where(frame.pathway != "dense", "dense")
    keys = [labels, *(frame[r].astype(str).where(frame.pathway != "dense", "dense" if i == 0 else "-")
                      for i, r in enumerate(rows))]
    return pd.Series(list(zip(*keys)), index=frame.index)


def proxy_table(proxy: pd.DataFrame, rows: list[str]) -> pd.DataFrame:
    """Per row key (setting, then ``rows``, the dense row first): each of :data:`PROXY_COLUMNS` with its
    standard error, in the column groups of :func:`analysis.tables.retention_table` (``score (%)`` holds
    the values, here in nats)."""
    from analysis.tables import SCORES, STDERR, draw_stderr

    keyed = proxy.assign(key=_row_keys(proxy, rows), column=proxy.metric + " " + proxy.group)
    entries: dict[tuple, list[float]] = {}
    for key, group in keyed.groupby("key", sort=False):
        values, errors = [], []
        for column in PROXY_COLUMNS:
            chosen = group[group.column == column]
            values.append(float(chosen.value.mean()) if len(chosen) else float("nan"))
            errors.append(draw_stderr(chosen.value, chosen.stderr) if len(chosen) else float("nan"))
        entries[key] = values + errors
    order = sorted(entries, key=lambda k: k[0] != "dense")
    frame = pd.DataFrame([entries[k] for k in order], index=pd.MultiIndex.from_tuples(order,
                                                                                      names=["setting", *rows]))
    frame.columns = pd.MultiIndex.from_tuples([(SCORES, c) for c in PROXY_COLUMNS] + [(STDERR, c) for c in
                                                                                      PROXY_COLUMNS])
    return frame


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks (ties take their mean rank)."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def permutation_p(x: np.ndarray, y: np.ndarray, resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of Spearman's correlation under exchangeable pairings: the share of orderings of
    ``y`` whose correlation is at least as far from 0; every ordering up to :data:`EXACT_ROWS` rows, else
    ``resamples`` random ones counted as ``(1 + hits) / (1 + resamples)``."""
    observed = abs(spearman(x, y))
    if math.isnan(observed):
        return float("nan")
    y = np.asarray(y)
    if len(y) <= EXACT_ROWS:
        hits = [abs(spearman(x, y[list(order)])) >= observed - 1e-12
                for order in itertools.permutations(range(len(y)))]
        return float(np.mean(hits))
    rng = np.random.default_rng(seed)
    hits = sum(abs(spearman(x, rng.permutation(y))) >= observed - 1e-12 for _ in range(resamples))
    return (1 + hits) / (1 + resamples)


def proxy_correlation(retained: pd.Series, proxy: pd.DataFrame, resamples: int = 10_000, seed: int = 0
                      ) -> pd.DataFrame:
    """Per proxy column, over the pruned rows found in both: Spearman's correlation with the average task
    retention (``retained``: a :func:`analysis.tables.average_retention` column, indexed like
    :func:`proxy_table`) and its permutation p-value. A good proxy correlates negatively: the further the
    pruned model moves from the dense one, the less it keeps."""
    from analysis.tables import SCORES

    pruned = [k for k in proxy.index if k[0] != "dense" and k in retained.index and not np.isnan(retained[k])]
    rows = {}
    for column in PROXY_COLUMNS:
        values = proxy.loc[pruned, (SCORES, column)].to_numpy(dtype=float)
        kept = ~np.isnan(values)
        x, y = values[kept], retained[pruned].to_numpy(dtype=float)[kept]
        rows[column] = {"rows": int(kept.sum()),
                        "spearman": spearman(x, y) if kept.sum() > 2 else float("nan"),
                        "p": permutation_p(x, y, resamples, seed) if kept.sum() > 2 else float("nan")}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "proxy"
    return frame


def correlation_markdown(frame: pd.DataFrame) -> str:
    """The correlation table as markdown, with what its p-value is."""
    lines = ["| proxy | rows | Spearman's rho with avg retention | p (permutation, two-sided) |", "|---|---|---|---|"]
    for name, row in frame.iterrows():
        rho = "" if np.isnan(row.spearman) else f"{row.spearman:+.3f}"
        p = "" if np.isnan(row.p) else f"{row.p:.3f}"
        lines.append(f"| {name} | {int(row.rows)} | {rho} | {p} |")
    return "\n".join(lines) + ("\n\nEach row of the grid's table is one point (several calibration draws of a cell: "
                               "their mean); p is not adjusted across the four proxies.\n")
