"""Results in the paper's table layouts, with retention against the dense model.

Retention of a pruned model = mean over tasks of (pruned score / dense score), in %.

- :func:`table1`: a row per (pathway, pool), the sensitivity grid (the paper's Table 1);
- :func:`table2`: a row per method, the method comparison (the paper's Table 2);
- :func:`table3`: a row per (selection signal, adaptive budget), ATV's ablation (the paper's Table 3);
- :func:`task_differences`: per method, each task's score minus Wanda's on the same items;
- :func:`pool_differences`: Table 1's comparisons, each pool against the dense model and against the
  other pools of the same pathway;
- :func:`rerun_differences`: per cell, a second run of a grid (another machine, another calibration
  draw) against the first, on the same items;
- :func:`join_draws`: reruns of a grid on other calibration draws as one grid of draws, which the tables
  above read as one row per cell (the mean over draws, with a two-level bootstrap);

each with, per setting (50%, 60%, 2:4, ...), the task scores in % and the average retention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.results import ResultsError
from probe.core.manifest import write_text_atomic
from probe.evaluation.uncertainty import BOOTS


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
STDERR = "stderr (%)"  # their standard errors
RETENTION = "retention (%)"  # the column group of the average retention (and its interval)
AVERAGE = "avg"


def task_stderr(rows: pd.DataFrame) -> pd.Series:
    """Standard error (in the score's unit) of each row's score: the ``stderr`` column where the results
    have it, else ``sqrt(p (1 - p) / (n - 1))`` from the score and ``n`` (exact for 0/1 item scores), else
    NaN."""
    stored = rows["stderr"] if "stderr" in rows else pd.Series(float("nan"), index=rows.index)
    if "n" not in rows:
        return stored
    p, n = rows["score"].astype(float), rows["n"].astype(float)
    binomial = (p * (1 - p) / (n - 1)).where(n > 1) ** 0.5
    return stored.fillna(binomial)


def retention_table(results: pd.DataFrame, rows: list[str], items: pd.DataFrame | None = None,
                    baseline: str | None = None, boots: int = BOOTS, seed: int = 0, adjust: str = "holm"
                    ) -> pd.DataFrame:
    """The paper's layout: a row group per setting (50%, 60%, 2:4, ...) holding a row per ``rows`` key,
    the dense row first; columns are the task scores (in %) under ``score (%)``, their standard errors
    under ``stderr (%)`` and the average retention under ``retention (%)``.

    ``results`` has one row per cell and task with columns ``cell``, ``pathway`` (``dense`` for the dense
    cell), ``task``, ``score``, the ``rows`` keys and ``setting`` (or ``sparsity``), and ``stderr`` or
    ``n`` for the standard errors. With per-item scores (``items``: cell, task, doc_id, value), the
    retention gets a paired bootstrap 95% interval (``low``, ``high``), and with ``baseline`` (a value of
    the last ``rows`` key, e.g. ``wanda``, or ``dense``: the dense cell) each row's difference in average
    retention to the baseline's row of the same setting, in percentage points, with its paired bootstrap
    interval and exact p-value (``vs <baseline> (pp)``: ``diff``, ``low``, ``high``, ``p``).
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
            scores = group.groupby("task", sort=False)["score"].mean()
            entries[(label, *key)] = [100 * scores.get(t, float("nan")) for t in tasks] + [retention(scores, dense)]
    frame = pd.DataFrame.from_dict(entries, orient="index")
    frame.index = pd.MultiIndex.from_tuples(list(entries), names=["setting", *rows])
    frame.columns = pd.MultiIndex.from_tuples([(SCORES, t) for t in tasks] + [(RETENTION, AVERAGE)])
    errors = results.assign(se=task_stderr(results))
    matches = {key: _rows_of(key, results, rows) for key in frame.index}
    for t in tasks:
        column = []
        for key in frame.index:
            match = errors.loc[matches[key]]
            match = match[match.task == t]
            column.append(100 * draw_stderr(match.score, match.se) if len(match) else float("nan"))
        frame[(STDERR, t)] = column
    _add_draw_spread(frame, results, rows, dense)
    if items is not None and not items.empty:
        _add_intervals(frame, results, rows, items, baseline, boots, seed)
    return with_adjusted_p(frame, adjust, boots, seed)


DRAW = "calib_seed"  # the results column naming a cell's calibration draw
DENSE_BASELINE = "dense"  # a baseline that is the dense cell: differences are retention minus 100


def draw_stderr(scores: pd.Series, errors: pd.Series) -> float:
    """Standard error of the mean of one task's scores over calibration draws (one per draw, each with its
    standard error over items): ``sqrt(mean(se_d^2) + var(s_d) / D)``, the item noise the draws share plus
    the spread between draws (for one draw, its own standard error)."""
    scores, errors = scores.to_numpy(dtype=float), errors.to_numpy(dtype=float)
    if len(scores) == 1:
        return float(errors[0])
    return float(np.sqrt(np.mean(errors**2) + scores.var(ddof=1) / len(scores)))


def _draw_order(rows: pd.DataFrame) -> list[str]:
    """The cells behind one table row, by calibration draw (one cell where the results have no draws)."""
    if DRAW in rows and rows[DRAW].notna().any():
        rows = rows.sort_values(DRAW, kind="stable")
    return list(dict.fromkeys(rows.cell))


def _add_draw_spread(frame: pd.DataFrame, results: pd.DataFrame, rows: list[str], dense: pd.Series) -> None:
    """Where some row has several calibration draws: each row's number of draws and the lowest and highest
    of the draws' own average retentions."""
    if "cell" not in results:
        return
    counts, low, high = [], [], []
    for key in frame.index:
        match = results.loc[_rows_of(key, results, rows)]
        cells = _draw_order(match) if key[0] != "dense" else []
        values = [retention(match[match.cell == c].set_index("task")["score"], dense) for c in cells]
        counts.append(len(values) or 1)
        low.append(min(values, default=float("nan")))
        high.append(max(values, default=float("nan")))
    if max(counts) > 1:
        frame[(RETENTION, "draws")], frame[(RETENTION, "draw min")], frame[(RETENTION, "draw max")] = counts, low, high


def _rows_of(key: tuple, results: pd.DataFrame, rows: list[str]) -> pd.Index:
    """The index of the result rows behind one row of a :func:`retention_table` (``key``: setting, then
    the ``rows`` keys)."""
    if key[0] == "dense":
        return results.index[results.pathway == "dense"]
    match = (results.pathway != "dense") & (_setting_labels(results) == key[0])
    for name, value in zip(rows, key[1:]):
        match &= results[name].astype(str) == str(value)
    return results.index[match]


def _runs(items: pd.DataFrame, cells: list[str], tasks: list[str], dense_order: dict[str, list]
          ) -> dict | list[dict] | None:
    """A row's per-item scores: one cell's (:func:`cell_items`), or a list with each calibration draw's;
    None if any is missing."""
    runs = [cell_items(items, cell, tasks, dense_order) for cell in cells]
    if not runs or any(run is None for run in runs):
        return None
    return runs[0] if len(runs) == 1 else runs


def cell_items(items: pd.DataFrame, cell: str, tasks: list[str], dense_order: dict[str, list]) -> dict | None:
    """A cell's per-item scores as {task: array} in the dense cell's item order (None if any is missing)."""
    out = {}
    for t in tasks:
        scores = items[(items.cell == cell) & (items.task == t)].set_index("doc_id")["value"]
        if set(scores.index) != set(dense_order[t]):
            return None
        out[t] = scores.loc[dense_order[t]].to_numpy(dtype=float)
    return out


def _add_intervals(frame: pd.DataFrame, results: pd.DataFrame, rows: list[str], items: pd.DataFrame,
                   baseline: str | None, boots: int, seed: int) -> None:
    from probe.evaluation.uncertainty import bootstrap_retention, paired_difference

    tasks = [t for group, t in frame.columns if group == SCORES]
    dense_cell = results[results.pathway == "dense"].cell.iloc[0]
    dense_raw = items[items.cell == dense_cell]
    order = {t: sorted(dense_raw[dense_raw.task == t].doc_id) for t in tasks}
    dense = cell_items(items, dense_cell, tasks, order)
    if dense is None:
        return
    per_row = {}
    for key in frame.index:
        match = results.loc[_rows_of(key, results, rows)]
        if key[0] != "dense" and len(match):
            per_row[key] = _runs(items, _draw_order(match), tasks, order)
    low, high = [], []
    for key in frame.index:
        scored = per_row.get(key)
        interval = bootstrap_retention(scored, dense, boots, seed) if scored is not None else None
        low.append(100.0 if key[0] == "dense" else interval.low if interval else float("nan"))
        high.append(100.0 if key[0] == "dense" else interval.high if interval else float("nan"))
    frame[(RETENTION, "low")], frame[(RETENTION, "high")] = low, high
    if baseline is None:
        return
    group = f"vs {baseline} (pp)"
    against_dense = baseline == DENSE_BASELINE
    diff, low, high, p = [], [], [], []
    for key in frame.index:
        base = dense if against_dense else per_row.get((key[0], *key[1:-1], baseline))
        scored = per_row.get(key)
        interval = (paired_difference(scored, base, dense, boots, seed, against_dense=against_dense)
                    if scored is not None and base is not None and key[-1] != baseline and key[0] != "dense"
                    else None)
        diff.append(interval.estimate if interval else float("nan"))
        low.append(interval.low if interval else float("nan"))
        high.append(interval.high if interval else float("nan"))
        p.append(interval.p if interval else float("nan"))
    frame[(group, "diff")], frame[(group, "low")], frame[(group, "high")], frame[(group, "p")] = diff, low, high, p


def retention_interval(cell: str | None, rows: pd.DataFrame, results: pd.DataFrame, items: pd.DataFrame | None = None,
                       boots: int = BOOTS, seed: int = 0) -> tuple[float, float, float]:
    """One pruned cell's average retention (``rows``: its rows, one per task) with a 95% interval: a paired
    bootstrap over its and the dense cell's per-item scores where ``items`` holds them, else the delta
    method from the tasks' standard errors (:func:`probe.evaluation.uncertainty.delta_retention`; NaN bounds where
    the results carry neither ``stderr`` nor ``n``)."""
    from probe.evaluation.uncertainty import bootstrap_retention, delta_retention

    dense = results[results.pathway == "dense"]
    dense_scores = dense.set_index("task")["score"]
    ours = rows.set_index("task")
    point = retention(ours["score"], dense_scores)
    if items is not None and not items.empty and cell is not None and "cell" in results:
        tasks, order = dense_item_order(results, items)
        dense_items, run = _dense_items(results, items, tasks, order), cell_items(items, cell, tasks, order)
        if dense_items is not None and run is not None:
            interval = bootstrap_retention(run, dense_items, boots, seed)
            return point, interval.low, interval.high
    tasks = list(ours.index)
    dense_errors = pd.Series(task_stderr(dense).to_numpy(), index=dense.task)
    interval = delta_retention(ours.score[tasks], task_stderr(rows).to_numpy(), dense_scores[tasks],
                               dense_errors[tasks])
    return point, interval.low, interval.high


def average_retention(frame: pd.DataFrame) -> pd.Series:
    """The average retention column of a :func:`retention_table`."""
    return frame[(RETENTION, AVERAGE)]


TABLE1_PATHWAYS = ("dense", "text", "visual")  # Table 1's row order; pools follow MODALITY_POOLS


def in_table1_order(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` rows in Table 1's layout, whichever cells ran first: by sparsity, then pathway (text
    before visual), then pool (text, visual, mixed); names outside these keep their order, after them."""
    from probe.core.names import MODALITY_POOLS

    def rank(order: tuple[str, ...]):
        return lambda column: column.astype(str).map(lambda v: order.index(v) if v in order else len(order))

    keys = [k for k in ("sparsity", "pathway", "pool") if k in results]
    ranks = {"pathway": rank(TABLE1_PATHWAYS), "pool": rank(MODALITY_POOLS)}
    return results.sort_values(keys, key=lambda c: ranks.get(c.name, lambda v: v)(c), kind="stable")


def table1(results: pd.DataFrame, items: pd.DataFrame | None = None, boots: int = BOOTS, seed: int = 0
           ) -> pd.DataFrame:
    """The sensitivity grid in Table 1's layout (:func:`in_table1_order`): a row per (pathway, pool);
    retention intervals from ``items`` (:func:`analysis.results.load_items`) where given."""
    return retention_table(in_table1_order(results), ["pathway", "pool"], items, boots=boots, seed=seed)


def table2(results: pd.DataFrame, items: pd.DataFrame | None = None, baseline: str | None = "wanda",
           boots: int = BOOTS, seed: int = 0, adjust: str = "holm") -> pd.DataFrame:
    """The method comparison in Table 2's layout: a row per method; with ``items``, retention intervals
    and each method's paired difference to ``baseline`` (Wanda, as in the paper's comparison; a grid
    without Wanda's rows, such as a sparsity sweep of one method, against the dense model). Cells with
    visual token pruning at inference are rows of their own, ``method with token method`` (``dense with
    fastv(...)`` for token pruning alone)."""
    results = _with_token_methods(results)
    return retention_table(results, ["method"], items, effective_baseline(results, baseline), boots, seed, adjust)


def effective_baseline(results: pd.DataFrame, baseline: str | None) -> str | None:
    """``baseline``, or the dense cell (``dense``) for a grid without the baseline's rows (a sparsity sweep
    of one method)."""
    if baseline is None or baseline in set(_with_token_methods(results).method.astype(str)):
        return baseline
    return DENSE_BASELINE


def _with_token_methods(results: pd.DataFrame) -> pd.DataFrame:
    """Methods named with their inference-time token method where one ran (``wanda with fastv(...)``)."""
    if "token_pruning" not in results:
        return results
    tokens = results["token_pruning"].fillna("none").astype(str)
    return results.assign(method=[m if t == "none" else f"{m} with {t}"
                                  for m, t in zip(results.method.astype(str), tokens)])


def dense_item_order(results: pd.DataFrame, items: pd.DataFrame) -> tuple[list[str], dict[str, list]]:
    """The dense cell's tasks and, per task, its items' ids in order: every cell's items are aligned to it."""
    dense = results[results.pathway == "dense"]
    if dense.empty:
        raise ResultsError("the results hold no dense cell")
    tasks = list(dense.task)
    dense_items = items[items.cell == dense.cell.iloc[0]]
    return tasks, {t: sorted(dense_items[dense_items.task == t].doc_id) for t in tasks}


def task_differences(results: pd.DataFrame, items: pd.DataFrame, baseline: str = "wanda", boots: int = BOOTS,
                     seed: int = 0, adjust: str = "holm") -> pd.DataFrame:
    """Per setting and method, each task's score minus the ``baseline`` method's at the same setting, in
    percentage points, with a paired bootstrap 95% interval over the same items and an exact paired
    p-value, adjusted over the table's comparisons (``<task> vs <baseline> (pp)``: ``diff``, ``low``,
    ``high``, ``p``, ``p_adj``). A grid without the baseline's rows compares against the dense cell
    (:func:`effective_baseline`). Rows whose cell or baseline lacks per-item scores are left out."""
    from probe.evaluation.uncertainty import paired_score_differences

    results = _with_token_methods(results)
    baseline = effective_baseline(results, baseline)
    tasks, order = dense_item_order(results, items)
    pruned = results[results.pathway != "dense"].assign(label=lambda f: _setting_labels(f))
    cells_of = {key: _draw_order(group) for key, group in pruned.groupby(["label", "method"], sort=False)}
    dense_cell = results[results.pathway == "dense"].cell.iloc[0]
    entries = {}
    for (label, method), cells in cells_of.items():
        if method == baseline or (baseline != DENSE_BASELINE and (label, baseline) not in cells_of):
            continue
        scored = _runs(items, cells, tasks, order)
        base = _runs(items, [dense_cell] if baseline == DENSE_BASELINE else cells_of[(label, baseline)], tasks,
                     order)
        if scored is None or base is None:
            continue
        differences = paired_score_differences(scored, base, boots, seed)
        entries[(label, method)] = [v for t in tasks for v in _difference_values(differences[t])]
    columns = [(f"{t} vs {baseline} (pp)", name) for t in tasks for name in DIFFERENCE]
    frame = pd.DataFrame.from_dict(entries, orient="index", columns=pd.MultiIndex.from_tuples(columns))
    frame.index = pd.MultiIndex.from_tuples(list(entries), names=["setting", "method"])
    return with_adjusted_p(frame, adjust, boots, seed)


DIFFERENCE = ("diff", "low", "high", "p")  # a difference's columns before adjustment


def _difference_values(interval) -> tuple[float, float, float, float]:  # noqa: ANN001
    return interval.estimate, interval.low, interval.high, interval.p


POOL_PAIRS = (("text", "visual"), ("mixed", "visual"), ("text", "mixed"))
PATHWAY_PAIRS = (("visual", "text"),)
RETENTION_DIFFERENCE = "avg retention (pp)"


def table1_runs(results: pd.DataFrame, items: pd.DataFrame) -> tuple[list[str], dict, dict[tuple, Any]]:
    """A Table 1 grid's per-item scores: (tasks, the dense cell's ``{task: scores}``, and per (setting label,
    pathway, pool) the row's scores: one cell's, or a list with each calibration draw's; None where some
    are missing), every cell in the dense cell's item order."""
    results = in_table1_order(results)
    tasks, order = dense_item_order(results, items)
    dense_scores = cell_items(items, results[results.pathway == "dense"].cell.iloc[0], tasks, order)
    if dense_scores is None:
        raise ResultsError("the dense cell lacks per-item scores for some task")
    pruned = results[results.pathway != "dense"].assign(label=lambda f: _setting_labels(f))
    scored = {key: _runs(items, _draw_order(group), tasks, order)
              for key, group in pruned.groupby(["label", "pathway", "pool"], sort=False)}
    return tasks, dense_scores, scored


def pool_differences(results: pd.DataFrame, items: pd.DataFrame, pairs: tuple[tuple[str, str], ...] = POOL_PAIRS,
                     pathway_pairs: tuple[tuple[str, str], ...] = PATHWAY_PAIRS, boots: int = BOOTS,
                     seed: int = 0, adjust: str = "holm") -> pd.DataFrame:
    """Table 1's comparisons, per setting and pathway: each pool's cell against the dense model
    (``<pool> - dense``) and against another pool's (``pairs``: ``text - visual`` and so on); then, per
    pool, one pathway's cell against the other's (``pathway_pairs``: pathway ``visual - text``). Each is
    the difference in average retention (``avg retention (pp)``) and in each task's score
    (``<task> (pp)``), in percentage points, with paired bootstrap 95% intervals over the same items and
    exact paired p-values adjusted over the whole table (``diff``, ``low``, ``high``, ``p``, ``p_adj``).
    Against the dense model the retention difference is the retention minus 100. Comparisons whose cells
    lack per-item scores are left out; cells of several calibration draws compare as their mean."""
    from probe.evaluation.uncertainty import paired_difference, paired_score_differences

    tasks, dense_scores, scored = table1_runs(results, items)
    comparisons = []  # (row key, run, baseline, whether the baseline is the dense run)
    for label in dict.fromkeys(key[0] for key in scored):
        pathways = dict.fromkeys(key[1] for key in scored if key[0] == label)
        for pathway in pathways:
            pools = {key[2]: values for key, values in scored.items() if key[:2] == (label, pathway)}
            comparisons += [((label, pathway, f"{pool} - dense"), values, dense_scores, True)
                            for pool, values in pools.items()]
            comparisons += [((label, pathway, f"{a} - {b}"), pools.get(a), pools.get(b), False) for a, b in pairs]
        for a, b in pathway_pairs:
            for pool in dict.fromkeys(key[2] for key in scored if key[0] == label):
                comparisons.append(((label, f"{a} - {b}", pool), scored.get((label, a, pool)),
                                    scored.get((label, b, pool)), False))
    entries = {}
    for key, run, baseline, against_dense in comparisons:
        if run is None or baseline is None:
            continue
        overall = paired_difference(run, baseline, dense_scores, boots, seed, against_dense=against_dense)
        per_task = paired_score_differences(run, baseline, boots, seed)
        entries[key] = [v for interval in (overall, *(per_task[t] for t in tasks))
                        for v in _difference_values(interval)]
    groups = [RETENTION_DIFFERENCE, *(f"{t} (pp)" for t in tasks)]
    columns = pd.MultiIndex.from_tuples([(g, name) for g in groups for name in DIFFERENCE])
    index = pd.MultiIndex.from_arrays(list(zip(*entries)) or [[], [], []], names=["setting", "pathway", "pools"])
    return with_adjusted_p(pd.DataFrame(list(entries.values()), index=index, columns=columns), adjust, boots, seed)


CHANGED = "items answered differently"


def _dense_items(results: pd.DataFrame, items: pd.DataFrame, tasks: list[str], order: dict[str, list]
                 ) -> dict | None:
    """The dense cell's per-item scores as {task: array} in ``order`` (None if any is missing)."""
    return cell_items(items, results[results.pathway == "dense"].cell.iloc[0], tasks, order)


def _dense_differences(dense: dict | None, other_results: pd.DataFrame, other_items: pd.DataFrame,
                       tasks: list[str], order: dict[str, list]) -> int | None:
    """How many items another grid's dense cell answers differently from ``dense`` (None where either
    lacks per-item scores)."""
    other = _dense_items(other_results, other_items, tasks, order)
    if dense is None or other is None:
        return None
    return sum(int((dense[t] != other[t]).sum()) for t in tasks)


def rerun_differences(results: pd.DataFrame, items: pd.DataFrame, rerun_results: pd.DataFrame,
                      rerun_items: pd.DataFrame, boots: int = BOOTS, seed: int = 0, adjust: str = "holm"
                      ) -> pd.DataFrame:
    """Per cell finished in both grids (same cell id, in the first grid's order), the rerun minus the first
    run on the same items: how many items each task answers differently (``items answered differently``),
    and the difference in average retention and in each task's score, in percentage points, with paired
    bootstrap 95% intervals and adjusted exact paired p-values (``diff``, ``low``, ``high``, ``p``,
    ``p_adj``). Both grids must hold the same dense cell (a rerun takes it with ``dense_from``), since
    retention is read against it."""
    from probe.evaluation.uncertainty import paired_difference, paired_score_differences

    tasks, order = dense_item_order(results, items)
    if dense_item_order(rerun_results, rerun_items) != (tasks, order):
        raise ResultsError("the two grids score other tasks or items; a rerun is compared on the same ones")
    dense = _dense_items(results, items, tasks, order)
    differing = _dense_differences(dense, rerun_results, rerun_items, tasks, order)
    if differing is None:
        raise ResultsError("a dense cell lacks per-item scores for some task")
    if differing:
        raise ResultsError(f"the two grids' dense cells answer {differing} items differently; compare a rerun "
                           "that takes the first grid's dense cell (dense_from)")
    entries = {}
    for cell in dict.fromkeys(results[results.pathway != "dense"].cell):
        first, second = cell_items(items, cell, tasks, order), cell_items(rerun_items, cell, tasks, order)
        if first is None or second is None:
            continue
        overall = paired_difference(second, first, dense, boots, seed)
        per_task = paired_score_differences(second, first, boots, seed)
        entries[cell] = [*(int((first[t] != second[t]).sum()) for t in tasks),
                         *(v for interval in (overall, *(per_task[t] for t in tasks))
                           for v in _difference_values(interval))]
    groups = [RETENTION_DIFFERENCE, *(f"{t} (pp)" for t in tasks)]
    columns = [(CHANGED, t) for t in tasks] + [(g, name) for g in groups for name in DIFFERENCE]
    frame = pd.DataFrame(list(entries.values()), index=pd.Index(list(entries), name="cell"),
                         columns=pd.MultiIndex.from_tuples(columns))
    return with_adjusted_p(frame.astype({(CHANGED, t): int for t in tasks}), adjust, boots, seed)


def join_draws(draws: list[tuple[pd.DataFrame, pd.DataFrame, int]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Grids of the same cells pruned on other calibration draws (each a grid's results, per-item scores
    and calibration seed, the first grid first) as one grid of draws, which the tables read as one row
    per cell: the mean over draws, with a two-level bootstrap. Rows get the draw's seed (``calib_seed``,
    kept where a grid has its own) and the later grids' cell ids a ``@calib<seed>`` suffix. It keeps the
    cells finished in every grid, in the first grid's order. The grids must share the dense cell (the same
    answers, item for item) and score the same items."""
    if len(draws) < 2:
        raise ResultsError(f"joining draws needs at least two grids, got {len(draws)}")
    (results, items, _), others = draws[0], draws[1:]
    tasks, order = dense_item_order(results, items)
    dense = _dense_items(results, items, tasks, order)
    for number, (other_results, other_items, _) in enumerate(others, start=2):
        if dense_item_order(other_results, other_items) != (tasks, order):
            raise ResultsError(f"draw {number} scores other tasks or items than the first; draws are joined "
                               "on the same ones")
        differing = _dense_differences(dense, other_results, other_items, tasks, order)
        if differing is None:
            raise ResultsError(f"the first draw's or draw {number}'s dense cell lacks per-item scores for some "
                               "task")
        if differing:
            raise ResultsError(f"draw {number}'s dense cell answers {differing} items differently from the "
                               "first's; draws share the first draw's dense cell (dense_from)")
    seeds = [seed for _, _, seed in draws]
    if len(set(seeds)) < len(seeds):
        twice = next(seed for seed in seeds if seeds.count(seed) > 1)
        raise ResultsError(f"two grids drew their calibration with seed {twice}: they are not two draws")
    pruned = [set(r[r.pathway != "dense"].cell) for r, _, _ in draws]
    kept = [c for c in dict.fromkeys(results[results.pathway != "dense"].cell) if all(c in done for done in pruned)]
    if not kept:
        raise ResultsError("no pruned cell is finished in every draw")
    dense_cell = results[results.pathway == "dense"].cell.iloc[0]
    rows, scored = [results[results.cell == dense_cell]], [items[items.cell == dense_cell]]
    for number, (draw_results, draw_items, seed) in enumerate(draws):
        suffix = "" if number == 0 else f"@calib{seed}"
        for cell in kept:
            cell_rows = draw_results[draw_results.cell == cell].copy()
            if DRAW not in cell_rows or cell_rows[DRAW].isna().all():
                cell_rows[DRAW] = seed
            rows.append(cell_rows.assign(cell=cell + suffix))
            scored.append(draw_items[draw_items.cell == cell].assign(cell=cell + suffix))
    return pd.concat(rows, ignore_index=True), pd.concat(scored, ignore_index=True)


def split_draws(results: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """A grid of several calibration draws as one results frame per draw (its pruned cells and the dense
    cell), by seed; empty where the results hold one draw or none."""
    if DRAW not in results:
        return {}
    seeds = sorted(int(s) for s in results[DRAW].dropna().unique())
    if len(seeds) < 2:
        return {}
    dense = results[DRAW].isna()
    return {seed: results[dense | (results[DRAW] == seed)] for seed in seeds}


def table3(results: pd.DataFrame) -> pd.DataFrame:
    """The selection-signal ablation in Table 3's layout: a row per (signal, adaptive budget), from ATV
    cells such as ``atv``, ``atv(budget=fixed)``, ``atv(signal=random, budget=fixed)``,
    ``atv(signal=abs)``; cells that change other ATV settings are left out."""
    from probe.pruning.method_spec import parse_method_spec

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
    """One-line column names: a task's name for its score, ``<name> retention (%)`` for the retention,
    ``<task> stderr (%)`` and the like for the other groups."""
    names = []
    for column in frame.columns:
        group, name = column if isinstance(column, tuple) else ("", column)
        names.append(str(name) if group in (SCORES, "") else f"{name} {group}")
    return names


def _number(value: float, digits: int, sign: bool = False) -> str:
    return "" if pd.isna(value) else f"{value:{'+' if sign else ''}.{digits}f}"


def _with_error(value: float, error: float | None, digits: int, plus_minus: str) -> str:
    text = _number(value, digits)
    return text if error is None or pd.isna(error) or not text else f"{text} {plus_minus} {_number(error, digits)}"


def _with_interval(value: float, low: float, high: float, digits: int, sign: bool = False,
                   p: float = float("nan")) -> str:
    """``value [low, high]``; with a p-value, ``p=...`` after it and `` *`` where it is below 0.05."""
    text = _number(value, digits, sign)
    if not text or pd.isna(low):
        return text
    tested = "" if pd.isna(p) else f" {_p_text(p)}{' *' if p < SIGNIFICANCE else ''}"
    return f"{text} [{_number(low, digits, sign)}, {_number(high, digits, sign)}]{tested}"


SIGNIFICANCE = 0.05  # a star marks an adjusted p-value below this
ADJUSTMENT_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "unadjusted"}


def _p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def with_adjusted_p(frame: pd.DataFrame, adjust: str = "holm", boots: int = BOOTS, seed: int = 0) -> pd.DataFrame:
    """``frame`` with, beside each comparison's p-value column ``(group, "p")``, the p-values adjusted over
    every comparison in the table, the table's family (``(group, "p_adj")``); ``frame.attrs["family"]``
    says how many comparisons, the adjustment, and the resamples and seed of intervals and tests."""
    from probe.evaluation.significance import adjust as adjusted

    groups = [g for g in dict.fromkeys(g for g, _ in frame.columns) if (g, "p") in frame.columns]
    if not groups:
        return frame
    values = adjusted(np.concatenate([frame[(g, "p")].to_numpy(dtype=float) for g in groups]), adjust)
    frame = frame.copy()
    for i, g in enumerate(groups):
        frame[(g, "p_adj")] = values[i * len(frame):(i + 1) * len(frame)]
    order = []
    for column in frame.columns:
        if column[1] != "p_adj":
            order.append(column)
        if column[1] == "p":
            order.append((column[0], "p_adj"))
    frame = frame[order]
    frame.attrs["family"] = {"comparisons": int((~np.isnan(values)).sum()), "adjust": adjust, "resamples": boots,
                             "seed": seed}
    return frame


def family_note(frame: pd.DataFrame) -> str:
    """What a table's p-values and intervals are, in a few sentences (empty for a table without tests)."""
    family = frame.attrs.get("family")
    if not family:
        return ""
    adjust = family["adjust"]
    how = {"holm": "adjusted by Holm's method over all of them (family-wise error)",
           "bh": "adjusted by Benjamini-Hochberg over all of them (false discovery rate)",
           "none": "not adjusted for the number of comparisons"}[adjust]
    from probe.evaluation.significance import EXACT_LIMIT

    return (f"Family: {family['comparisons']} paired comparisons in this table, p-values {how}; "
            f"* marks p < {SIGNIFICANCE} after adjustment. Tests (two-sided, exact): McNemar on a task's 0/1 item "
            f"scores, else a sign flip of the paired differences (every sign pattern up to {EXACT_LIMIT} differing "
            f"items, else {family['resamples']:,} random ones), on average retention a weighted sign flip. "
            f"Intervals: paired percentile bootstrap, 95%, {family['resamples']:,} resamples, seed {family['seed']}; "
            "a row of several calibration draws resamples the draws, then the items, and its p-values take the "
            "draws as given (their spread is in the intervals and the draws column).\n")


def display_frame(frame: pd.DataFrame, digits: int = 2, plus_minus: str = "±") -> pd.DataFrame:
    """The table as text: ``score ± stderr`` per task, ``avg [low, high]`` for the retention (and
    ``draws [min, max]``, each draw's own retention, for rows of several calibration draws), and ``diff
    [low, high] p=...`` for a difference, starred where its adjusted p-value is below 0.05. Without
    uncertainty columns the numbers stand alone."""
    nan = pd.Series(float("nan"), index=frame.index)
    adjust = frame.attrs.get("family", {}).get("adjust", "holm")
    out: dict[tuple[str, str], list[str]] = {}
    for group, name in frame.columns:
        if group == SCORES:
            errors = frame.get((STDERR, name), nan)
            out[(SCORES, name)] = [_with_error(v, e, digits, plus_minus) for v, e in zip(frame[(group, name)], errors)]
    for group in dict.fromkeys(group for group, _ in frame.columns):
        if group == RETENTION:
            low, high = frame.get((RETENTION, "low"), nan), frame.get((RETENTION, "high"), nan)
            for name in [n for g, n in frame.columns if g == RETENTION and n not in RETENTION_PARTS]:
                if name == "draws":
                    out[(RETENTION, "draws [min, max]")] = [
                        f"{int(n)} [{_number(lo, digits)}, {_number(hi, digits)}]" if n > 1 else ""
                        for n, lo, hi in zip(frame[(RETENTION, name)], frame[(RETENTION, "draw min")],
                                             frame[(RETENTION, "draw max")])]
                    continue
                label = name + (" [95% CI]" if name == AVERAGE and (RETENTION, "low") in frame.columns else "")
                interval = (low, high) if name == AVERAGE else (nan, nan)
                out[(RETENTION, label)] = [_with_interval(v, lo, hi, digits)
                                           for v, lo, hi in zip(frame[(RETENTION, name)], *interval)]
        elif group == CHANGED:
            for name in [n for g, n in frame.columns if g == CHANGED]:
                out[(CHANGED, name)] = [str(v) for v in frame[(CHANGED, name)]]
        elif {(group, "diff"), (group, "low"), (group, "high")} <= set(frame.columns):  # a difference
            tested = (group, "p_adj") in frame.columns
            label = f"diff [95% CI] p ({ADJUSTMENT_NAMES[adjust]})" if tested else "diff [95% CI]"
            out[(group, label)] = [
                _with_interval(d, lo, hi, digits, sign=True, p=p)
                for d, lo, hi, p in zip(frame[(group, "diff")], frame[(group, "low")], frame[(group, "high")],
                                        frame.get((group, "p_adj"), nan))]
    shown = pd.DataFrame(out, index=frame.index)
    shown.columns = pd.MultiIndex.from_tuples(list(out))
    return shown


RETENTION_PARTS = ("low", "high", "draw min", "draw max")  # shown inside another retention column


def to_markdown(frame: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub markdown table, one column per index level, uncertainty beside each number
    (:func:`display_frame`); NaN cells are left empty."""
    shown = display_frame(frame, digits)
    header = [*frame.index.names, *_flat_header(shown)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in shown.iterrows():
        keys = [str(k) for k in (key if isinstance(key, tuple) else (key,))]
        lines.append("| " + " | ".join(keys + list(row)) + " |")
    note = family_note(frame)
    return "\n".join(lines) + "\n" + (f"\n{note}" if note else "")


def to_latex(frame: pd.DataFrame, digits: int = 2) -> str:
    """A LaTeX table through pandas' Styler: booktabs rules, the column groups as grouped headers and the
    row groups (settings) as ``\\multirow`` blocks (needs the booktabs and multirow packages)."""
    shown = display_frame(frame, digits, plus_minus=r"$\pm$").replace("p<", "p$<$", regex=True)
    styler = shown.style.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    note = family_note(frame).strip().replace("%", r"\%").replace("<", "$<$")
    return styler.to_latex(hrules=True, multirow_align="t", multicol_align="c", clines="skip-last;data",
                           column_format="l" * frame.index.nlevels + "r" * len(shown.columns),
                           caption=note or None)


def write_table(frame: pd.DataFrame, out: Path, name: str, note: str = "", digits: int = 2) -> str:
    """Write ``name``.md, .csv and .tex into ``out`` (``note``, a paragraph under the markdown table);
    returns the markdown."""
    markdown = to_markdown(frame, digits) + (f"\n{note}" if note else "")
    write_text_atomic(out / f"{name}.md", markdown)
    flat = frame.copy()
    flat.columns = _flat_header(frame)
    write_text_atomic(out / f"{name}.csv", flat.reset_index().to_csv(index=False))
    write_text_atomic(out / f"{name}.tex", to_latex(frame, digits))
    return markdown


def write_grid_table(results: pd.DataFrame, out: Path, grid: str, model: str | None = None,
                     name: str | None = None, items: pd.DataFrame | None = None, boots: int = BOOTS, seed: int = 0,
                     adjust: str = "holm", per_draw: bool = True, records: dict | None = None) -> str:
    """The table of a finished grid (``table1`` or ``table2``) written into ``out`` as ``name``.md/.csv/.tex
    (``name`` defaults to the grid); a method grid with ATV selection-signal cells also gets
    ``<name>_signals`` in Table 3's layout, and one with per-item scores ``<name>_tasks_vs_wanda``
    (:func:`task_differences`; ``_tasks_vs_dense`` for a grid without Wanda's rows, such as a sweep); a
    Table 1 grid with per-item scores gets ``<name>_pools``
    (:func:`pool_differences`) and ``<name>_findings.md``, the paper's Findings A and B on the image and the
    text tasks (:mod:`analysis.pathway_findings`), and with ``mask_iou.csv`` ``<name>_mask_iou.md``
    (:mod:`analysis.mask_overlap`). A grid of several calibration draws also gets each draw's own table,
    ``<name>_calib<seed>`` (unless ``per_draw`` is False). When the paper reports ``model``, the average
    retentions next to the paper's go to ``<name>_vs_paper``. The per-item scores are ``items`` when given,
    else those kept in ``out`` (``items/``). Under the main table, where the cells' records differ in code
    revision, machine, package versions, dtype or device, a paragraph says how
    (:func:`analysis.provenance.provenance_note`; ``records``: the cells' run records, default those in
    ``out/cells``).
    A grid scored by the proxy metric (``proxy.csv``) also gets ``<name>_proxy`` and, beside task scores,
    ``<name>_proxy_correlation`` (:mod:`analysis.proxy`)."""
    from analysis.provenance import load_records, provenance_note
    from analysis.proxy import load_proxy
    from analysis.results import load_items

    name = name or grid
    rows = ["pathway", "pool"] if grid == "table1" else ["method"]
    proxy = load_proxy(out)
    if results.empty and proxy is None:
        raise ResultsError(f"{out} holds no finished cell yet")
    markdown = ""
    if not results.empty:
        items = load_items(out) if items is None else items
        records = load_records(out) if records is None else records
        note = provenance_note(records, set(results.cell) if "cell" in results else None)
        markdown = _write_task_tables(results, out, grid, model, name, items, rows, note, boots, seed, adjust,
                                      per_draw)
    if proxy is not None:
        from analysis.proxy import correlation_markdown, proxy_correlation, proxy_table

        table = proxy_table(proxy, rows)
        cells = set(proxy.cell)
        note = provenance_note({c: r for c, r in load_records(out).items() if c in cells})
        markdown += ("\n" if markdown else "") + write_table(table, out, f"{name}_proxy", note, digits=4)
        if not results.empty:
            ordered = in_table1_order(results) if grid == "table1" else _with_token_methods(results)
            retained = average_retention(retention_table(ordered, rows))
            correlation = correlation_markdown(proxy_correlation(retained, table, boots, seed))
            write_text_atomic(out / f"{name}_proxy_correlation.md", correlation)
            markdown += "\n" + correlation
    return markdown


def _write_task_tables(results: pd.DataFrame, out: Path, grid: str, model: str | None, name: str,
                       items: pd.DataFrame | None, rows: list[str], note: str, boots: int, seed: int,
                       adjust: str, per_draw: bool) -> str:
    from analysis.results import load_paper, paper_model

    has_items = items is not None and not items.empty
    if grid == "table1":
        markdown = write_table(table1(results, items, boots, seed), out, name, note)
        if has_items:
            differences = pool_differences(results, items, boots=boots, seed=seed, adjust=adjust)
            if not differences.empty:
                markdown += "\n" + write_table(differences, out, f"{name}_pools")
            from analysis.pathway_findings import findings_markdown, pathway_findings

            findings = findings_markdown(pathway_findings(results, items, boots, seed, adjust), adjust, boots, seed)
            if findings:
                write_text_atomic(out / f"{name}_findings.md", findings)
                markdown += "\n" + findings
        if (out / "mask_iou.csv").is_file():
            from analysis.mask_overlap import iou_markdown

            iou = pd.read_csv(out / "mask_iou.csv")
            if not iou.empty:
                overlap = iou_markdown(iou)
                write_text_atomic(out / f"{name}_mask_iou.md", overlap)
                markdown += "\n" + overlap
    else:
        markdown = write_table(table2(results, items, boots=boots, seed=seed, adjust=adjust), out, name, note)
        if has_items:
            differences = task_differences(results, items, boots=boots, seed=seed, adjust=adjust)
            if not differences.empty:
                baseline = effective_baseline(results, "wanda")
                markdown += "\n" + write_table(differences, out, f"{name}_tasks_vs_{baseline}")
        signals = table3(results)
        if signals.index.droplevel("setting").nunique() > 2:  # the dense row and more than one ATV variant
            markdown += "\n" + write_table(signals, out, f"{name}_signals")
    for draw, draw_results in (split_draws(results) if per_draw else {}).items():
        table = (table1(draw_results, items, boots, seed) if grid == "table1"
                 else table2(draw_results, items, boots=boots, seed=seed, adjust=adjust))
        markdown += "\n" + write_table(table, out, f"{name}_calib{draw}")
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
