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
- :func:`average_draws`: reruns of a grid on other calibration draws as one grid whose items score the
  mean of the draws' answers, which the tables above then read like any grid;

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
                    baseline: str | None = None, boots: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The paper's layout: a row group per setting (50%, 60%, 2:4, ...) holding a row per ``rows`` key,
    the dense row first; columns are the task scores (in %) under ``score (%)``, their standard errors
    under ``stderr (%)`` and the average retention under ``retention (%)``.

    ``results`` has one row per cell and task with columns ``cell``, ``pathway`` (``dense`` for the dense
    cell), ``task``, ``score``, the ``rows`` keys and ``setting`` (or ``sparsity``), and ``stderr`` or
    ``n`` for the standard errors. With per-item scores (``items``: cell, task, doc_id, value), the
    retention gets a paired bootstrap 95% interval (``low``, ``high``), and with ``baseline`` (a value of
    the last ``rows`` key, e.g. ``wanda``) each row's difference in average retention to the baseline's
    row of the same setting, in percentage points, with its paired bootstrap interval
    (``vs <baseline> (pp)``: ``diff``, ``low``, ``high``).
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
    errors = results.assign(se=task_stderr(results))
    matches = {key: _rows_of(key, results, rows) for key in frame.index}
    for t in tasks:
        column = []
        for key in frame.index:
            match = errors.loc[matches[key]]
            match = match[match.task == t]
            column.append(100 * float(match.se.iloc[0]) if len(match) else float("nan"))
        frame[(STDERR, t)] = column
    if items is not None and not items.empty:
        _add_intervals(frame, results, rows, items, baseline, boots, seed)
    return frame


def _rows_of(key: tuple, results: pd.DataFrame, rows: list[str]) -> pd.Index:
    """The index of the result rows behind one row of a :func:`retention_table` (``key``: setting, then
    the ``rows`` keys)."""
    if key[0] == "dense":
        return results.index[results.pathway == "dense"]
    match = (results.pathway != "dense") & (_setting_labels(results) == key[0])
    for name, value in zip(rows, key[1:]):
        match &= results[name].astype(str) == str(value)
    return results.index[match]


def _cell_items(items: pd.DataFrame, cell: str, tasks: list[str], dense_order: dict[str, list]) -> dict | None:
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
    from probe.uncertainty import bootstrap_retention, paired_difference

    tasks = [t for group, t in frame.columns if group == SCORES]
    dense_cell = results[results.pathway == "dense"].cell.iloc[0]
    dense_raw = items[items.cell == dense_cell]
    order = {t: sorted(dense_raw[dense_raw.task == t].doc_id) for t in tasks}
    dense = _cell_items(items, dense_cell, tasks, order)
    if dense is None:
        return
    cell_of = {}
    for key in frame.index:
        match = results.loc[_rows_of(key, results, rows)]
        if key[0] != "dense" and len(match):
            cell_of[key] = match.cell.iloc[0]
    per_row = {key: _cell_items(items, cell, tasks, order) for key, cell in cell_of.items()}
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
    diff, low, high = [], [], []
    for key in frame.index:
        base = per_row.get((key[0], *key[1:-1], baseline))
        scored = per_row.get(key)
        interval = (paired_difference(scored, base, dense, boots, seed)
                    if scored is not None and base is not None and key[-1] != baseline else None)
        diff.append(interval.estimate if interval else float("nan"))
        low.append(interval.low if interval else float("nan"))
        high.append(interval.high if interval else float("nan"))
    frame[(group, "diff")], frame[(group, "low")], frame[(group, "high")] = diff, low, high


def average_retention(frame: pd.DataFrame) -> pd.Series:
    """The average retention column of a :func:`retention_table`."""
    return frame[(RETENTION, AVERAGE)]


TABLE1_PATHWAYS = ("dense", "text", "visual")  # Table 1's row order; pools follow MODALITY_POOLS


def in_table1_order(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` rows in Table 1's layout, whichever cells ran first: by sparsity, then pathway (text
    before visual), then pool (text, visual, mixed); names outside these keep their order, after them."""
    from probe.names import MODALITY_POOLS

    def rank(order: tuple[str, ...]):
        return lambda column: column.astype(str).map(lambda v: order.index(v) if v in order else len(order))

    keys = [k for k in ("sparsity", "pathway", "pool") if k in results]
    ranks = {"pathway": rank(TABLE1_PATHWAYS), "pool": rank(MODALITY_POOLS)}
    return results.sort_values(keys, key=lambda c: ranks.get(c.name, lambda v: v)(c), kind="stable")


def table1(results: pd.DataFrame, items: pd.DataFrame | None = None) -> pd.DataFrame:
    """The sensitivity grid in Table 1's layout (:func:`in_table1_order`): a row per (pathway, pool);
    retention intervals from ``items`` (:func:`analysis.results.load_items`) where given."""
    return retention_table(in_table1_order(results), ["pathway", "pool"], items)


def table2(results: pd.DataFrame, items: pd.DataFrame | None = None, baseline: str | None = "wanda") -> pd.DataFrame:
    """The method comparison in Table 2's layout: a row per method; with ``items``, retention intervals
    and each method's paired difference to ``baseline`` (Wanda, as in the paper's comparison). Cells with
    visual token pruning at inference are rows of their own, ``method with token method`` (``dense with
    fastv(...)`` for token pruning alone)."""
    results = _with_token_methods(results)
    has_baseline = baseline is not None and baseline in set(results.method.astype(str))
    return retention_table(results, ["method"], items, baseline if has_baseline else None)


def _with_token_methods(results: pd.DataFrame) -> pd.DataFrame:
    """Methods named with their inference-time token method where one ran (``wanda with fastv(...)``)."""
    if "token_pruning" not in results:
        return results
    tokens = results["token_pruning"].fillna("none").astype(str)
    return results.assign(method=[m if t == "none" else f"{m} with {t}"
                                  for m, t in zip(results.method.astype(str), tokens)])


def _dense_item_order(results: pd.DataFrame, items: pd.DataFrame) -> tuple[list[str], dict[str, list]]:
    """The dense cell's tasks and, per task, its items' ids in order: every cell's items are aligned to it."""
    dense = results[results.pathway == "dense"]
    if dense.empty:
        raise ResultsError("the results hold no dense cell")
    tasks = list(dense.task)
    dense_items = items[items.cell == dense.cell.iloc[0]]
    return tasks, {t: sorted(dense_items[dense_items.task == t].doc_id) for t in tasks}


def task_differences(results: pd.DataFrame, items: pd.DataFrame, baseline: str = "wanda", boots: int = 2000,
                     seed: int = 0) -> pd.DataFrame:
    """Per setting and method, each task's score minus the ``baseline`` method's at the same setting, in
    percentage points, with a paired bootstrap 95% interval over the same items (``<task> vs <baseline>
    (pp)``: ``diff``, ``low``, ``high``). Rows whose cell or baseline lacks per-item scores are left out."""
    from probe.uncertainty import paired_score_differences

    results = _with_token_methods(results)
    tasks, order = _dense_item_order(results, items)
    pruned = results[results.pathway != "dense"].assign(label=lambda f: _setting_labels(f))
    cell_of = {key: group.cell.iloc[0] for key, group in pruned.groupby(["label", "method"], sort=False)}
    entries = {}
    for (label, method), cell in cell_of.items():
        if method == baseline or (label, baseline) not in cell_of:
            continue
        scored = _cell_items(items, cell, tasks, order)
        base = _cell_items(items, cell_of[(label, baseline)], tasks, order)
        if scored is None or base is None:
            continue
        differences = paired_score_differences(scored, base, boots, seed)
        entries[(label, method)] = [v for t in tasks for v in (differences[t].estimate, differences[t].low,
                                                                 differences[t].high)]
    columns = [(f"{t} vs {baseline} (pp)", name) for t in tasks for name in ("diff", "low", "high")]
    frame = pd.DataFrame.from_dict(entries, orient="index", columns=pd.MultiIndex.from_tuples(columns))
    frame.index = pd.MultiIndex.from_tuples(list(entries), names=["setting", "method"])
    return frame


POOL_PAIRS = (("text", "visual"), ("mixed", "visual"), ("text", "mixed"))
PATHWAY_PAIRS = (("visual", "text"),)
RETENTION_DIFFERENCE = "avg retention (pp)"


def pool_differences(results: pd.DataFrame, items: pd.DataFrame, pairs: tuple[tuple[str, str], ...] = POOL_PAIRS,
                     pathway_pairs: tuple[tuple[str, str], ...] = PATHWAY_PAIRS, boots: int = 2000,
                     seed: int = 0) -> pd.DataFrame:
    """Table 1's comparisons, per setting and pathway: each pool's cell against the dense model
    (``<pool> - dense``) and against another pool's (``pairs``: ``text - visual`` and so on); then, per
    pool, one pathway's cell against the other's (``pathway_pairs``: pathway ``visual - text``). Each is
    the difference in average retention (``avg retention (pp)``) and in each task's score
    (``<task> (pp)``), in percentage points, with paired bootstrap 95% intervals over the same items
    (``diff``, ``low``, ``high``). Against the dense model the retention difference is the retention
    minus 100. Comparisons whose cells lack per-item scores are left out."""
    from probe.uncertainty import paired_difference, paired_score_differences

    results = in_table1_order(results)
    tasks, order = _dense_item_order(results, items)
    dense_scores = _cell_items(items, results[results.pathway == "dense"].cell.iloc[0], tasks, order)
    if dense_scores is None:
        raise ResultsError("the dense cell lacks per-item scores for some task")
    pruned = results[results.pathway != "dense"].assign(label=lambda f: _setting_labels(f))
    scored = {key: _cell_items(items, group.cell.iloc[0], tasks, order)
              for key, group in pruned.groupby(["label", "pathway", "pool"], sort=False)}
    comparisons = []  # (row key, run, baseline)
    for label in dict.fromkeys(key[0] for key in scored):
        pathways = dict.fromkeys(key[1] for key in scored if key[0] == label)
        for pathway in pathways:
            pools = {key[2]: values for key, values in scored.items() if key[:2] == (label, pathway)}
            comparisons += [((label, pathway, f"{pool} - dense"), values, dense_scores)
                            for pool, values in pools.items()]
            comparisons += [((label, pathway, f"{a} - {b}"), pools.get(a), pools.get(b)) for a, b in pairs]
        for a, b in pathway_pairs:
            for pool in dict.fromkeys(key[2] for key in scored if key[0] == label):
                comparisons.append(((label, f"{a} - {b}", pool), scored.get((label, a, pool)),
                                    scored.get((label, b, pool))))
    entries = {}
    for key, run, baseline in comparisons:
        if run is None or baseline is None:
            continue
        overall = paired_difference(run, baseline, dense_scores, boots, seed)
        per_task = paired_score_differences(run, baseline, boots, seed)
        entries[key] = [v for interval in (overall, *(per_task[t] for t in tasks))
                        for v in (interval.estimate, interval.low, interval.high)]
    groups = [RETENTION_DIFFERENCE, *(f"{t} (pp)" for t in tasks)]
    columns = pd.MultiIndex.from_tuples([(g, name) for g in groups for name in ("diff", "low", "high")])
    index = pd.MultiIndex.from_arrays(list(zip(*entries)) or [[], [], []], names=["setting", "pathway", "pools"])
    return pd.DataFrame(list(entries.values()), index=index, columns=columns)


CHANGED = "items answered differently"


def _dense_items(results: pd.DataFrame, items: pd.DataFrame, tasks: list[str], order: dict[str, list]
                 ) -> dict | None:
    """The dense cell's per-item scores as {task: array} in ``order`` (None if any is missing)."""
    return _cell_items(items, results[results.pathway == "dense"].cell.iloc[0], tasks, order)


def _dense_differences(dense: dict | None, other_results: pd.DataFrame, other_items: pd.DataFrame,
                       tasks: list[str], order: dict[str, list]) -> int | None:
    """How many items another grid's dense cell answers differently from ``dense`` (None where either
    lacks per-item scores)."""
    other = _dense_items(other_results, other_items, tasks, order)
    if dense is None or other is None:
        return None
    return sum(int((dense[t] != other[t]).sum()) for t in tasks)


def rerun_differences(results: pd.DataFrame, items: pd.DataFrame, rerun_results: pd.DataFrame,
                      rerun_items: pd.DataFrame, boots: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per cell finished in both grids (same cell id, in the first grid's order), the rerun minus the first
    run on the same items: how many items each task answers differently (``items answered differently``),
    and the difference in average retention and in each task's score, in percentage points, with paired
    bootstrap 95% intervals (``diff``, ``low``, ``high``). Both grids must hold the same dense cell (a
    rerun takes it with ``dense_from``), since retention is read against it."""
    from probe.uncertainty import paired_difference, paired_score_differences

    tasks, order = _dense_item_order(results, items)
    if _dense_item_order(rerun_results, rerun_items) != (tasks, order):
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
        first, second = _cell_items(items, cell, tasks, order), _cell_items(rerun_items, cell, tasks, order)
        if first is None or second is None:
            continue
        overall = paired_difference(second, first, dense, boots, seed)
        per_task = paired_score_differences(second, first, boots, seed)
        entries[cell] = [*(int((first[t] != second[t]).sum()) for t in tasks),
                         *(v for interval in (overall, *(per_task[t] for t in tasks))
                           for v in (interval.estimate, interval.low, interval.high))]
    groups = [RETENTION_DIFFERENCE, *(f"{t} (pp)" for t in tasks)]
    columns = [(CHANGED, t) for t in tasks] + [(g, name) for g in groups for name in ("diff", "low", "high")]
    frame = pd.DataFrame(list(entries.values()), index=pd.Index(list(entries), name="cell"),
                         columns=pd.MultiIndex.from_tuples(columns))
    return frame.astype({(CHANGED, t): int for t in tasks})


def average_draws(draws: list[tuple[pd.DataFrame, pd.DataFrame]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs of one grid on several calibration draws (each a grid's results and per-item scores, the first
    draw first) as one grid whose per-item score is the mean of the draws' answers. It keeps the cells
    finished in every draw, in the first draw's order; each task's score is the mean of the averaged
    items, and its ``stderr`` the standard error of those means. The draws must share the dense cell
    (the same answers, item for item) and score the same items, so that :func:`table1` and
    :func:`table2` give the averaged cells paired intervals over the same items."""
    from probe.uncertainty import standard_error

    if len(draws) < 2:
        raise ResultsError(f"averaging draws needs at least two grids, got {len(draws)}")
    (results, items), others = draws[0], draws[1:]
    tasks, order = _dense_item_order(results, items)
    dense_cell = results[results.pathway == "dense"].cell.iloc[0]
    dense = _dense_items(results, items, tasks, order)
    for number, (other_results, other_items) in enumerate(others, start=2):
        if _dense_item_order(other_results, other_items) != (tasks, order):
            raise ResultsError(f"draw {number} scores other tasks or items than the first; draws are averaged "
                               "on the same ones")
        differing = _dense_differences(dense, other_results, other_items, tasks, order)
        if differing is None:
            raise ResultsError(f"the first draw's or draw {number}'s dense cell lacks per-item scores for some "
                               "task")
        if differing:
            raise ResultsError(f"draw {number}'s dense cell answers {differing} items differently from the "
                               "first's; draws share the first draw's dense cell (dense_from)")
    kept_rows, kept_items = [results[results.pathway == "dense"]], [items[items.cell == dense_cell]]
    for cell in dict.fromkeys(results[results.pathway != "dense"].cell):
        runs = [_cell_items(draw_items, cell, tasks, order) if cell in set(draw_results.cell) else None
                for draw_results, draw_items in draws]
        if any(run is None for run in runs):
            continue
        rows = results[results.cell == cell].copy()
        for t in tasks:
            mean = sum(run[t] for run in runs) / len(runs)
            rows.loc[rows.task == t, ["score", "stderr", "n"]] = [float(mean.mean()), standard_error(mean),
                                                                 len(mean)]
            kept_items.append(pd.DataFrame({"cell": cell, "task": t, "doc_id": order[t], "value": mean}))
        kept_rows.append(rows)
    if len(kept_rows) == 1:
        raise ResultsError("no pruned cell is finished in every draw")
    return pd.concat(kept_rows, ignore_index=True), pd.concat(kept_items, ignore_index=True)


def table3(results: pd.DataFrame) -> pd.DataFrame:
    """The selection-signal ablation in Table 3's layout: a row per (signal, adaptive budget), from ATV
    cells such as ``atv``, ``atv(budget=fixed)``, ``atv(signal=random, budget=fixed)``,
    ``atv(signal=abs)``; cells that change other ATV settings are left out."""
    from probe.method_spec import parse_method_spec

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


def _with_interval(value: float, low: float, high: float, digits: int, sign: bool = False) -> str:
    text = _number(value, digits, sign)
    if not text or pd.isna(low):
        return text
    star = " *" if sign and (low > 0 or high < 0) else ""
    return f"{text} [{_number(low, digits, sign)}, {_number(high, digits, sign)}]{star}"


def display_frame(frame: pd.DataFrame, digits: int = 2, plus_minus: str = "±") -> pd.DataFrame:
    """The table as text: ``score ± stderr`` per task, ``avg [low, high]`` for the retention, and
    ``diff [low, high]`` against the baseline, starred where the interval excludes 0. Without
    uncertainty columns the numbers stand alone."""
    nan = pd.Series(float("nan"), index=frame.index)
    out: dict[tuple[str, str], list[str]] = {}
    for group, name in frame.columns:
        if group == SCORES:
            errors = frame.get((STDERR, name), nan)
            out[(SCORES, name)] = [_with_error(v, e, digits, plus_minus) for v, e in zip(frame[(group, name)], errors)]
    for group in dict.fromkeys(group for group, _ in frame.columns):
        if group == RETENTION:
            low, high = frame.get((RETENTION, "low"), nan), frame.get((RETENTION, "high"), nan)
            for name in [n for g, n in frame.columns if g == RETENTION and n not in ("low", "high")]:
                label = name + (" [95% CI]" if name == AVERAGE and (RETENTION, "low") in frame.columns else "")
                interval = (low, high) if name == AVERAGE else (nan, nan)
                out[(RETENTION, label)] = [_with_interval(v, lo, hi, digits)
                                           for v, lo, hi in zip(frame[(RETENTION, name)], *interval)]
        elif group == CHANGED:
            for name in [n for g, n in frame.columns if g == CHANGED]:
                out[(CHANGED, name)] = [str(v) for v in frame[(CHANGED, name)]]
        elif {(group, "diff"), (group, "low"), (group, "high")} <= set(frame.columns):  # a difference
            out[(group, "diff [95% CI]")] = [
                _with_interval(d, lo, hi, digits, sign=True)
                for d, lo, hi in zip(frame[(group, "diff")], frame[(group, "low")], frame[(group, "high")])]
    shown = pd.DataFrame(out, index=frame.index)
    shown.columns = pd.MultiIndex.from_tuples(list(out))
    return shown


def to_markdown(frame: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub markdown table, one column per index level, uncertainty beside each number
    (:func:`display_frame`); NaN cells are left empty."""
    shown = display_frame(frame, digits)
    header = [*frame.index.names, *_flat_header(shown)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in shown.iterrows():
        keys = [str(k) for k in (key if isinstance(key, tuple) else (key,))]
        lines.append("| " + " | ".join(keys + list(row)) + " |")
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame, digits: int = 2) -> str:
    """A LaTeX table through pandas' Styler: booktabs rules, the column groups as grouped headers and the
    row groups (settings) as ``\\multirow`` blocks (needs the booktabs and multirow packages)."""
    shown = display_frame(frame, digits, plus_minus=r"$\pm$")
    styler = shown.style.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    return styler.to_latex(hrules=True, multirow_align="t", multicol_align="c", clines="skip-last;data",
                           column_format="l" * frame.index.nlevels + "r" * len(shown.columns))


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
                     name: str | None = None, items: pd.DataFrame | None = None) -> str:
    """The table of a finished grid (``table1`` or ``table2``) written into ``out`` as ``name``.md/.csv/.tex
    (``name`` defaults to the grid); a method grid with ATV selection-signal cells also gets
    ``<name>_signals`` in Table 3's layout, and one with per-item scores ``<name>_tasks_vs_wanda``
    (:func:`task_differences`); a Table 1 grid with per-item scores gets ``<name>_pools``
    (:func:`pool_differences`). When the paper reports ``model``, the average retentions next to the
    paper's go to ``<name>_vs_paper``. The per-item scores are ``items`` when given, else those kept in
    ``out`` (``items/``)."""
    from analysis.results import load_items, load_paper, paper_model

    name = name or grid
    items = load_items(out) if items is None else items
    rows = ["pathway", "pool"] if grid == "table1" else ["method"]
    if grid == "table1":
        markdown = write_table(table1(results, items), out, name)
        if items is not None and not items.empty:
            differences = pool_differences(results, items)
            if not differences.empty:
                markdown += "\n" + write_table(differences, out, f"{name}_pools")
    else:
        markdown = write_table(table2(results, items), out, name)
        if items is not None and not items.empty:
            differences = task_differences(results, items)
            if not differences.empty:
                markdown += "\n" + write_table(differences, out, f"{name}_tasks_vs_wanda")
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
