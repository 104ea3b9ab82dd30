"""Results in the paper's table layouts, with retention against the dense model.

Retention of a pruned model = mean over tasks of (pruned score / dense score), in %.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def retention(scores: pd.Series, dense: pd.Series) -> float:
    """Mean over tasks of ``scores / dense`` (both indexed by task), in %."""
    common = scores.index.intersection(dense.index)
    if common.empty:
        raise ValueError("no task in common with the dense scores")
    return float((scores[common] / dense[common]).mean() * 100.0)


def table1(results: pd.DataFrame) -> pd.DataFrame:
    """Table 1 layout: a row per (pathway, pool) after the dense row; per sparsity, the task scores
    (in %) and the average retention. The dense row repeats its scores in every sparsity block.

    ``results`` has one row per cell and task with columns pathway, pool, sparsity, task, score.
    """
    dense = results[results.pathway == "dense"].set_index("task")["score"]
    if dense.empty:
        raise ValueError("the results hold no dense cell")
    tasks = list(dense.index)
    pruned = results[results.pathway != "dense"]
    labels = {s: f"{s:.0%}" for s in sorted(pruned.sparsity.unique())}
    rows: dict[tuple[str, str], dict[tuple[str, str], float]] = {
        ("dense", "-"): {
            **{(label, t): 100 * dense[t] for label in labels.values() for t in tasks},
            **{(label, "avg retention"): 100.0 for label in labels.values()},
        }
    }
    for (pathway, pool), group in pruned.groupby(["pathway", "pool"], sort=False):
        entry = {}
        for sparsity, cell in group.groupby("sparsity"):
            scores = cell.set_index("task")["score"]
            for t in tasks:
                entry[(labels[sparsity], t)] = 100 * scores.get(t, float("nan"))
            entry[(labels[sparsity], "avg retention")] = retention(scores, dense)
        rows[(pathway, pool)] = entry
    order = [(label, t) for label in labels.values() for t in [*tasks, "avg retention"]]
    frame = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=order)
    frame.index = pd.MultiIndex.from_tuples(list(rows), names=["pathway", "pool"])
    frame.columns = pd.MultiIndex.from_tuples(order, names=["sparsity", "task"])
    return frame


def _flat_header(frame: pd.DataFrame) -> list[str]:
    return [f"{a} {b}" for a, b in frame.columns]


def to_markdown(frame: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub markdown table; NaN cells are left empty."""
    header = ["pathway", "pool", *_flat_header(frame)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (pathway, pool), row in frame.iterrows():
        cells = ["" if pd.isna(v) else f"{v:.{digits}f}" for v in row]
        lines.append("| " + " | ".join([pathway, pool, *cells]) + " |")
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame, digits: int = 2) -> str:
    """A LaTeX tabular (booktabs)."""
    header = ["pathway", "pool", *_flat_header(frame)]
    escape = lambda text: str(text).replace("%", r"\%").replace("_", r"\_")  # noqa: E731
    lines = [r"\begin{tabular}{ll" + "r" * len(frame.columns) + "}", r"\toprule",
             " & ".join(escape(h) for h in header) + r" \\", r"\midrule"]
    for (pathway, pool), row in frame.iterrows():
        cells = ["" if pd.isna(v) else f"{v:.{digits}f}" for v in row]
        lines.append(" & ".join([escape(pathway), escape(pool), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table1(results: pd.DataFrame, out: Path) -> str:
    """Write ``table1.md``, ``table1.csv`` and ``table1.tex`` into ``out``; returns the markdown."""
    from probe.manifest import write_text_atomic

    frame = table1(results)
    markdown = to_markdown(frame)
    write_text_atomic(out / "table1.md", markdown)
    flat = frame.copy()
    flat.columns = _flat_header(frame)
    write_text_atomic(out / "table1.csv", flat.reset_index().to_csv(index=False))
    write_text_atomic(out / "table1.tex", to_latex(frame))
    return markdown
