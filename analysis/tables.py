"""Results in the paper's table layouts, with retention against the dense model.

Retention of a pruned model = mean over tasks of (pruned score / dense score), in %.

- :func:`table1`: a row per (pathway, pool), the sensitivity grid (the paper's Table 1);
- :func:`table2`: a row per method, the method comparison (the paper's Table 2);
- :func:`table3`: a row per (selection signal, adaptive budget), ATV's ablation (the paper's Table 3);

each with, per setting (50%, 60%, 2:4, ...), the task scores in % and the average retention.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.results import ResultsError


def retention(scores: pd.Series, dense: pd.Series) -> float:
    """Mean over the tasks of ``scores`` of ``scores / dense`` (both indexed by task), in %.

    Every task of ``scores`` must have a dense score; the result is NaN (undefined, never a mean over
    fewer tasks) when a dense score is 0 or a task score is missing.
    """
    missing = scores.index.difference(dense.index)
    if scores.empty or len(missing):
        named = ", ".join(missing) if len(missing) else "none"
        raise ResultsError(f"retention needs a dense score for every task; missing: {named}")
    ratios = scores / dense[scores.index].where(dense[scores.index] != 0)
    return float(ratios.mean(skipna=False) * 100.0)


def retention_against(scores: pd.DataFrame, dense: pd.DataFrame) -> float:
    """Retention (%) of ``scores`` against ``dense``, both one row per task with columns task, score, n.

    Refuses, naming the task, a task the dense run lacks or scored on another number of items (another
    ``--limit``): such a ratio compares different questions.
    """
    ours, base = scores.set_index("task"), dense.set_index("task")
    for task in ours.index:
        if task not in base.index:
            raise ResultsError(f"the dense scores have no {task!r}; evaluate the dense model on it too")
        if int(ours.at[task, "n"]) != int(base.at[task, "n"]):
            raise ResultsError(f"{task}: {int(ours.at[task, 'n'])} items here but {int(base.at[task, 'n'])} in the "
                               "dense run; score both on the same items (the same --limit)")
    return retention(ours["score"], base["score"])


def _setting_labels(frame: pd.DataFrame) -> pd.Series:
    if "setting" in frame and frame["setting"].notna().all():
        return frame["setting"].astype(str)
    return frame["sparsity"].map(lambda s: f"{float(s):.0%}")


def retention_table(results: pd.DataFrame, rows: list[str]) -> pd.DataFrame:
    """Rows keyed by ``rows`` (the dense row first), a column block per setting holding the task scores
    (in %) and the average retention. The dense row repeats its scores in every block.

    ``results`` has one row per cell and task with columns ``pathway`` (``dense`` for the dense cell),
    ``task``, ``score``, the ``rows`` keys and ``setting`` (or ``sparsity``).
    """
    dense = results[results.pathway == "dense"].set_index("task")["score"]
    if dense.empty:
        raise ResultsError("the results hold no dense cell")
    tasks = list(dense.index)
    pruned = results[results.pathway != "dense"].assign(label=lambda f: _setting_labels(f))
    labels = list(dict.fromkeys(pruned.label))
    dense_key = ("dense",) + ("-",) * (len(rows) - 1)
    table: dict[tuple, dict[tuple[str, str], float]] = {
        dense_key: {**{(label, t): 100 * dense[t] for label in labels for t in tasks},
                    **{(label, "avg retention"): 100.0 for label in labels}}
    }
    for key, group in pruned.groupby(rows, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        entry = {}
        for label, cell in group.groupby("label", sort=False):
            scores = cell.set_index("task")["score"]
            for t in tasks:
                entry[(label, t)] = 100 * scores.get(t, float("nan"))
            entry[(label, "avg retention")] = retention(scores, dense)
        table[key] = entry
    order = [(label, t) for label in labels for t in [*tasks, "avg retention"]]
    frame = pd.DataFrame.from_dict(table, orient="index").reindex(columns=order)
    frame.index = pd.MultiIndex.from_tuples(list(table), names=rows)
    frame.columns = pd.MultiIndex.from_tuples(order, names=["setting", "task"])
    return frame


def table1(results: pd.DataFrame) -> pd.DataFrame:
    """The sensitivity grid in Table 1's layout: a row per (pathway, pool)."""
    return retention_table(results, ["pathway", "pool"])


def table2(results: pd.DataFrame) -> pd.DataFrame:
    """The method comparison in Table 2's layout: a row per method."""
    return retention_table(results, ["method"])


def table3(results: pd.DataFrame) -> pd.DataFrame:
    """The selection-signal ablation in Table 3's layout: a row per (signal, adaptive budget), from ATV
    cells such as ``atv``, ``atv(budget=fixed)``, ``atv(signal=random, budget=fixed)``,
    ``atv(signal=abs)``; cells that change other ATV settings are left out."""
    from probe.grid import parse_method_spec

    signals, adaptive = [], []
    for spec in results.method.astype(str):
        name, overrides = parse_method_spec(spec)
        keep = name == "atv" and set(overrides) <= {"signal", "budget"}
        signals.append(str(overrides.get("signal", "drift")) if keep else None)
        adaptive.append(("no" if overrides.get("budget") == "fixed" else "yes") if keep else None)
    frame = results.assign(signal=signals, adaptive=adaptive)
    frame.loc[frame.pathway == "dense", ["signal", "adaptive"]] = ["dense", "-"]
    return retention_table(frame.dropna(subset=["signal"]), ["signal", "adaptive"])


def _flat_header(frame: pd.DataFrame) -> list[str]:
    return [f"{a} {b}" for a, b in frame.columns]


def _cells(frame: pd.DataFrame, digits: int) -> list[tuple[list[str], list[str]]]:
    out = []
    for key, row in frame.iterrows():
        key = list(key) if isinstance(key, tuple) else [key]
        out.append(([str(k) for k in key], ["" if pd.isna(v) else f"{v:.{digits}f}" for v in row]))
    return out


def to_markdown(frame: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub markdown table; NaN cells are left empty."""
    header = [*frame.index.names, *_flat_header(frame)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(keys + values) + " |" for keys, values in _cells(frame, digits)]
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame, digits: int = 2) -> str:
    """A LaTeX tabular (booktabs)."""
    header = [*frame.index.names, *_flat_header(frame)]
    escape = lambda text: str(text).replace("%", r"\%").replace("_", r"\_")  # noqa: E731
    lines = [r"\begin{tabular}{" + "l" * frame.index.nlevels + "r" * len(frame.columns) + "}", r"\toprule",
             " & ".join(escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join([escape(k) for k in keys] + values) + r" \\" for keys, values in _cells(frame, digits)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, out: Path, name: str) -> str:
    """Write ``name``.md, .csv and .tex into ``out``; returns the markdown."""
    from probe.manifest import write_text_atomic

    markdown = to_markdown(frame)
    write_text_atomic(out / f"{name}.md", markdown)
    flat = frame.copy()
    flat.columns = _flat_header(frame)
    write_text_atomic(out / f"{name}.csv", flat.reset_index().to_csv(index=False))
    write_text_atomic(out / f"{name}.tex", to_latex(frame))
    return markdown


def write_grid_table(results: pd.DataFrame, out: Path, grid: str, model: str | None = None) -> str:
    """The table of a finished grid (``table1`` or ``table2``) written into ``out``; a method grid with
    ATV selection-signal cells also gets ``table3``. When the paper reports ``model``, the average
    retentions next to the paper's go to ``<grid>_vs_paper``."""
    from analysis.results import load_paper, paper_model

    rows = ["pathway", "pool"] if grid == "table1" else ["method"]
    if grid == "table1":
        markdown = write_table(table1(results), out, "table1")
    else:
        markdown = write_table(table2(results), out, "table2")
        signals = table3(results)
        if len(signals) > 2:  # the dense row and more than one ATV variant
            markdown += "\n" + write_table(signals, out, "table3")
    name = paper_model(model) if model else None
    if name:
        paper = load_paper(grid)
        compared = side_by_side(results, paper[paper.model == name], rows)
        markdown += "\n" + write_table(compared, out, f"{grid}_vs_paper")
    return markdown


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame, rows: list[str]) -> pd.DataFrame:
    """Average retention per row and setting, ours next to the paper's (``paper`` tidy, with rows keyed by
    ``rows``, ``setting`` and ``task == "avg retention"``). Rows the paper lacks show NaN."""
    frame = retention_table(ours, rows)
    retained = frame.xs("avg retention", axis=1, level="task")
    paper_avg = paper[paper.task == "avg retention"].set_index([*rows, "setting"])["score"]
    out = {}
    for setting in retained.columns:
        out[(setting, "ours")] = retained[setting]
        out[(setting, "paper")] = [paper_avg.get((*key, setting) if isinstance(key, tuple) else (key, setting),
                                                 float("nan")) for key in retained.index]
    result = pd.DataFrame(out, index=retained.index)
    result.columns = pd.MultiIndex.from_tuples(list(out), names=["setting", "source"])
    return result
