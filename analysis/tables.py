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


SCORES = "score (%)"  # the column group of the task scores
RETENTION = "retention (%)"  # the column group of the average retention
AVERAGE = "avg"


def retention_table(results: pd.DataFrame, rows: list[str]) -> pd.DataFrame:
    """The paper's layout: a row group per setting (50%, 60%, 2:4, ...) holding a row per ``rows`` key,
    the dense row first; columns are the task scores (in %) under ``score (%)`` and the average
    retention under ``retention (%)``.

    ``results`` has one row per cell and task with columns ``pathway`` (``dense`` for the dense cell),
    ``task``, ``score``, the ``rows`` keys and ``setting`` (or ``sparsity``).
    """
    dense = results[results.pathway == "dense"].set_index("task")["score"]
    if dense.empty:
        raise ResultsError("the results hold no dense cell")
    tasks = list(dense.index)
    pruned = results[results.pathway != "dense"].assign(label=lambda f: _setting_labels(f))
    entries: dict[tuple, list[float]] = {
        ("dense", "dense", *["-"] * (len(rows) - 1)): [100 * dense[t] for t in tasks] + [100.0]}
    for label in dict.fromkeys(pruned.label):
        for key, group in pruned[pruned.label == label].groupby(rows, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            scores = group.set_index("task")["score"]
            entries[(label, *key)] = [100 * scores.get(t, float("nan")) for t in tasks] + [retention(scores, dense)]
    frame = pd.DataFrame.from_dict(entries, orient="index")
    frame.index = pd.MultiIndex.from_tuples(list(entries), names=["setting", *rows])
    frame.columns = pd.MultiIndex.from_tuples([(SCORES, t) for t in tasks] + [(RETENTION, AVERAGE)])
    return frame


def average_retention(frame: pd.DataFrame) -> pd.Series:
    """The average retention column of a :func:`retention_table`."""
    return frame[(RETENTION, AVERAGE)]


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
    """One-line column names: a task's name for its score, ``avg retention (%)`` for the retention."""
    names = []
    for column in frame.columns:
        group, name = column if isinstance(column, tuple) else ("", column)
        names.append(f"{name} {group}" if group == RETENTION else str(name))
    return names


def to_markdown(frame: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub markdown table, one column per index level; NaN cells are left empty."""
    header = [*frame.index.names, *_flat_header(frame)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in frame.iterrows():
        keys = [str(k) for k in (key if isinstance(key, tuple) else (key,))]
        values = ["" if pd.isna(v) else f"{v:.{digits}f}" for v in row]
        lines.append("| " + " | ".join(keys + values) + " |")
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame, digits: int = 2) -> str:
    """A LaTeX table through pandas' Styler: booktabs rules, the column groups as grouped headers and the
    row groups (settings) as ``\\multirow`` blocks (needs the booktabs and multirow packages)."""
    styler = frame.style.format(precision=digits, na_rep="").format_index(escape="latex", axis=0)
    styler = styler.format_index(escape="latex", axis=1)
    return styler.to_latex(hrules=True, multirow_align="t", multicol_align="c", clines="skip-last;data",
                           column_format="l" * frame.index.nlevels + "r" * len(frame.columns))


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


def write_grid_table(results: pd.DataFrame, out: Path, grid: str, model: str | None = None,
                     name: str | None = None) -> str:
    """The table of a finished grid (``table1`` or ``table2``) written into ``out`` as ``name``.md/.csv/.tex
    (``name`` defaults to the grid); a method grid with ATV selection-signal cells also gets
    ``<name>_signals`` in Table 3's layout. When the paper reports ``model``, the average retentions next
    to the paper's go to ``<name>_vs_paper``."""
    from analysis.results import load_paper, paper_model

    name = name or grid
    rows = ["pathway", "pool"] if grid == "table1" else ["method"]
    if grid == "table1":
        markdown = write_table(table1(results), out, name)
    else:
        markdown = write_table(table2(results), out, name)
        signals = table3(results)
        if signals.index.droplevel("setting").nunique() > 2:  # the dense row and more than one ATV variant
            markdown += "\n" + write_table(signals, out, f"{name}_signals")
    paper_name = paper_model(model) if model else None
    if paper_name:
        paper = load_paper(grid)
        compared = side_by_side(results, paper[paper.model == paper_name], rows)
        markdown += "\n" + write_table(compared, out, f"{name}_vs_paper")
    return markdown


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame, rows: list[str]) -> pd.DataFrame:
    """Average retention per setting and row, ours next to the paper's (``paper`` tidy, with rows keyed by
    ``rows``, ``setting`` and ``task == "avg retention"``). Rows the paper lacks show NaN."""
    retained = average_retention(retention_table(ours, rows))
    paper_avg = paper[paper.task == "avg retention"].set_index(["setting", *rows])["score"]
    dense_key = ("dense", "dense", *["-"] * (len(rows) - 1))
    theirs = [100.0 if key == dense_key else paper_avg.get(key, float("nan")) for key in retained.index]
    result = pd.DataFrame({(RETENTION, "ours"): retained.to_numpy(), (RETENTION, "paper"): theirs},
                          index=retained.index)
    result.columns = pd.MultiIndex.from_tuples(list(result.columns))
    return result
