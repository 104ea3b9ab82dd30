"""Uncertainty: standard errors, paired bootstrap intervals of retention and of differences between
methods, each against a plain computation; tables show them."""

import numpy as np
import pandas as pd
import pytest

from analysis.results import ResultsError
from analysis.tables import (
    join_draws,
    pool_differences,
    rerun_differences,
    table1,
    table2,
    task_differences,
    to_markdown,
    write_grid_table,
)
from probe.evaluation.uncertainty import (
    BOOTS,
    ItemsError,
    bootstrap_retention,
    paired_difference,
    paired_score_differences,
    standard_error,
)

DENSE = {"a": np.array([1, 1, 0, 1, 1, 0, 1, 1.0]), "b": np.array([1, 0, 1, 1, 0, 1, 1, 1.0])}
WANDA = {"a": np.array([1, 0, 0, 1, 0, 0, 1, 1.0]), "b": np.array([0, 0, 1, 1, 0, 1, 0, 1.0])}
ATV = {"a": np.array([1, 1, 0, 1, 0, 0, 1, 1.0]), "b": np.array([1, 0, 1, 1, 0, 1, 1, 1.0])}


def test_standard_error_by_hand():
    # mean 0.75, sample variance (6 * 0.0625 + 2 * 0.5625) / 7 = 0.2142857
    assert standard_error(DENSE["a"]) == pytest.approx(np.sqrt(0.2142857142857 / 8))
    assert np.isnan(standard_error(np.array([1.0])))


def _plain_bootstrap(boots, seed, *runs):
    """One loop per resample: the same item indices (per task, tasks in sorted order) for every run."""
    rng = np.random.default_rng(seed)
    tasks = sorted(DENSE)
    draws = {t: rng.integers(0, len(DENSE[t]), size=(boots, len(DENSE[t]))) for t in tasks}
    values = []
    for b in range(boots):
        per_run = []
        for run in runs:
            ratios = []
            for t in tasks:
                picked = draws[t][b]
                dense = sum(DENSE[t][i] for i in picked) / len(picked)
                score = sum(run[t][i] for i in picked) / len(picked)
                ratios.append(score / dense if dense > 0 else float("nan"))
            per_run.append(100 * sum(ratios) / len(ratios))
        values.append(per_run[0] - per_run[1] if len(runs) == 2 else per_run[0])
    kept = np.array([v for v in values if v == v])
    return np.percentile(kept, [2.5, 97.5]), 1 - len(kept) / boots


def test_bootstrap_retention_equals_a_plain_loop():
    interval = bootstrap_retention(WANDA, DENSE, boots=300, seed=7)
    # point estimate: mean of 0.5/0.75 and 0.5/0.75 = 66.67%
    assert interval.estimate == pytest.approx(100 * (4 / 6 + 4 / 6) / 2)
    (low, high), dropped = _plain_bootstrap(300, 7, WANDA)
    assert (interval.low, interval.high) == pytest.approx((low, high)) and interval.dropped == pytest.approx(dropped)
    assert interval.low < interval.estimate < interval.high
    same = bootstrap_retention(DENSE, DENSE, boots=50)
    assert (same.low, same.estimate, same.high) == pytest.approx((100.0, 100.0, 100.0))


def test_paired_difference_equals_a_plain_loop():
    interval = paired_difference(ATV, WANDA, DENSE, boots=300, seed=3)
    assert interval.estimate == pytest.approx(100 * ((5 / 6 + 1) / 2 - (4 / 6 + 4 / 6) / 2))
    (low, high), _ = _plain_bootstrap(300, 3, ATV, WANDA)
    assert (interval.low, interval.high) == pytest.approx((low, high))
    with pytest.raises(ItemsError, match="same items"):
        paired_difference({"a": ATV["a"][:4], "b": ATV["b"]}, WANDA, DENSE)


def test_a_difference_against_the_dense_run_is_tested_as_one_when_the_caller_says_so():
    from probe.evaluation.significance import retention_test

    # answers lost and gained in both tasks, so the two tests weigh the items differently
    dense = {"a": np.array([1, 0, 1, 1, 1, 1, 1, 0.]), "b": np.array([1, 0, 0, 0, 1, 0, 0, 1.])}
    run = {"a": np.array([0, 1, 0, 0, 0, 1, 0, 1.]), "b": np.array([0, 0, 0, 0, 1, 1, 0, 1.])}
    dense_copy = {task: values.copy() for task, values in dense.items()}  # equal values, another object
    marked = paired_difference(run, dense_copy, dense, boots=500, seed=1, against_dense=True)
    unmarked = paired_difference(run, dense_copy, dense, boots=500, seed=1)
    assert marked.p == pytest.approx(retention_test(run, dense, dense, against_dense=True))
    assert unmarked.p == pytest.approx(retention_test(run, dense, dense))
    assert marked.p != pytest.approx(unmarked.p)
    assert (marked.estimate, marked.low, marked.high) == (unmarked.estimate, unmarked.low, unmarked.high)


def _grid(runs: dict[str, dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, items = [], []
    for cell, scores in runs.items():
        pathway, method, setting = ("dense", "-", "-") if cell == "dense" else ("all", cell, "50%")
        for task, values in scores.items():
            rows.append({"cell": cell, "pathway": pathway, "method": method, "setting": setting, "task": task,
                         "score": values.mean(), "n": len(values)})
            items += [{"cell": cell, "task": task, "doc_id": i, "value": v} for i, v in enumerate(values)]
    return pd.DataFrame(rows), pd.DataFrame(items)


def test_table2_shows_errors_intervals_and_differences_to_wanda():
    results, items = _grid({"dense": DENSE, "wanda": WANDA, "atv": ATV})
    table = table2(results, items.sample(frac=1, random_state=0))  # item order does not matter
    atv = table.loc[("50%", "atv")]
    expected = bootstrap_retention(ATV, DENSE)
    assert (atv[("retention (%)", "low")], atv[("retention (%)", "high")]) == pytest.approx((expected.low,
                                                                                               expected.high))
    difference = paired_difference(ATV, WANDA, DENSE)
    assert atv[("vs wanda (pp)", "diff")] == pytest.approx(difference.estimate)
    assert atv[("vs wanda (pp)", "low")] == pytest.approx(difference.low)
    assert np.isnan(table.loc[("50%", "wanda"), ("vs wanda (pp)", "diff")])
    # binomial standard error of a 0/1 score: sqrt(p (1 - p) / (n - 1)), the sample standard error
    assert atv[("stderr (%)", "a")] == pytest.approx(100 * standard_error(ATV["a"]))
    markdown = to_markdown(table)
    assert "avg [95% CI] retention (%)" in markdown.splitlines()[0]
    line = next(line for line in markdown.splitlines() if "| atv |" in line)
    assert f"62.50 ± {100 * standard_error(ATV['a']):.2f}" in line
    # one comparison in the table (atv against wanda), so the adjusted p-value is the exact one
    from probe.evaluation.significance import retention_test

    p = retention_test(ATV, WANDA, DENSE)
    assert atv[("vs wanda (pp)", "p")] == pytest.approx(p) and atv[("vs wanda (pp)", "p_adj")] == pytest.approx(p)
    star = " *" if p < 0.05 else ""
    assert f"{difference.estimate:+.2f} [{difference.low:+.2f}, {difference.high:+.2f}] p={p:.3f}{star}" in line
    assert "Family: 1 paired comparisons in this table" in markdown


def test_a_sweep_without_wanda_compares_every_cell_with_the_dense_model():
    """A grid of one method (a sparsity sweep) has no Wanda row: each cell is compared with the dense model,
    its retention minus 100, and per task its score minus the dense score, each with its exact p-value."""
    from probe.evaluation.significance import adjust, paired_test, retention_test

    results, items = _grid({"dense": DENSE, "wanda-text": WANDA, "atv": ATV})  # no "wanda" row
    table = table2(results, items)
    p_values = []
    for method, run in (("wanda-text", WANDA), ("atv", ATV)):
        row = table.loc[("50%", method)]
        kept = 100 * np.mean([run[t].mean() / DENSE[t].mean() for t in ("a", "b")])  # retention by hand
        assert row[("vs dense (pp)", "diff")] == pytest.approx(kept - 100)
        p_values.append(retention_test(run, DENSE, DENSE, against_dense=True))
        assert row[("vs dense (pp)", "p")] == pytest.approx(p_values[-1])
    assert list(table.loc[("50%", slice(None)), ("vs dense (pp)", "p_adj")]) == pytest.approx(
        list(adjust(np.array(p_values))))
    assert np.isnan(table.loc[("dense", "dense"), ("vs dense (pp)", "diff")])
    per_task = task_differences(results, items)
    assert list(per_task.index) == [("50%", "wanda-text"), ("50%", "atv")]
    for method, run in (("wanda-text", WANDA), ("atv", ATV)):
        for t in ("a", "b"):
            row = per_task.loc[("50%", method), f"{t} vs dense (pp)"]
            assert row["diff"] == pytest.approx(100 * (run[t].mean() - DENSE[t].mean()))
            assert row["p"] == pytest.approx(paired_test(run[t], DENSE[t]))


def test_delta_method_interval_by_hand():
    from probe.evaluation.uncertainty import delta_retention

    # task 1: 0.4 / 0.8 = 0.5, var = (0.05 / 0.8)^2 + (0.4 * 0.04 / 0.64)^2; task 2: 0.3 / 0.5 = 0.6
    interval = delta_retention([0.4, 0.3], [0.05, 0.1], [0.8, 0.5], [0.04, 0.0])
    var = (0.05 / 0.8) ** 2 + (0.4 * 0.04 / 0.64) ** 2 + (0.1 / 0.5) ** 2
    half = 100 * 1.96 * np.sqrt(var) / 2
    assert interval.estimate == pytest.approx(55.0)
    assert (interval.low, interval.high) == pytest.approx((55.0 - half, 55.0 + half))
    assert np.isnan(delta_retention([0.4], [0.1], [0.0], [0.0]).estimate)


def test_paired_score_differences_equal_a_plain_loop():
    differences = paired_score_differences(ATV, WANDA, boots=300, seed=5)
    assert differences["a"].estimate == pytest.approx(100 * (5 / 8 - 4 / 8))
    assert differences["b"].estimate == pytest.approx(100 * (6 / 8 - 4 / 8))
    rng = np.random.default_rng(5)
    draws = {t: rng.integers(0, 8, size=(300, 8)) for t in ("a", "b")}  # tasks in sorted order
    for t in ("a", "b"):
        values = [100 * (sum(ATV[t][i] for i in draws[t][b]) - sum(WANDA[t][i] for i in draws[t][b])) / 8
                  for b in range(300)]
        assert (differences[t].low, differences[t].high) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))
    with pytest.raises(ItemsError, match="same items"):
        paired_score_differences({"a": ATV["a"][:4], "b": ATV["b"]}, WANDA)


def test_task_differences_table_holds_each_methods_paired_difference_to_wanda():
    results, items = _grid({"dense": DENSE, "wanda": WANDA, "atv": ATV})
    table = task_differences(results, items.sample(frac=1, random_state=1))  # item order does not matter
    assert list(table.index) == [("50%", "atv")]
    expected = paired_score_differences(ATV, WANDA)
    for t in ("a", "b"):
        row = table.loc[("50%", "atv"), f"{t} vs wanda (pp)"]
        assert (row["diff"], row["low"], row["high"]) == pytest.approx(
            (expected[t].estimate, expected[t].low, expected[t].high))
    assert "+25.00 [" in to_markdown(table)


def _pathway_grid(runs: dict[tuple[str, str], dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A Table 1 grid: the dense cell and one cell per (pathway, pool)."""
    rows, items = [], []
    for (pathway, pool), scores in runs.items():
        cell = "dense" if pathway == "dense" else f"{pathway}/{pool}/0.5"
        for task, values in scores.items():
            rows.append({"cell": cell, "pathway": pathway, "pool": pool, "sparsity": 0.5, "task": task,
                         "score": values.mean(), "n": len(values)})
            items += [{"cell": cell, "task": task, "doc_id": i, "value": v} for i, v in enumerate(values)]
    return pd.DataFrame(rows), pd.DataFrame(items)


def test_table1_rows_follow_the_papers_layout_whichever_cells_ran_first():
    runs = {("visual", "mixed"): DENSE, ("text", "visual"): WANDA, ("dense", "-"): DENSE,
            ("visual", "text"): ATV, ("text", "mixed"): ATV, ("text", "text"): DENSE}
    results, items = _pathway_grid(runs)
    late = results[results.pathway == "text"].assign(sparsity=0.6, cell=lambda f: f.cell + "-60")
    results = pd.concat([late, results])  # a 60% cell finished before the 50% ones
    items = pd.concat([items[items.cell.str.startswith("text/")].assign(cell=lambda f: f.cell + "-60"), items])
    expected = [("dense", "dense", "-"), ("50%", "text", "text"), ("50%", "text", "visual"),
                ("50%", "text", "mixed"), ("50%", "visual", "text"), ("50%", "visual", "mixed"),
                ("60%", "text", "text"), ("60%", "text", "visual"), ("60%", "text", "mixed")]
    assert list(table1(results, items).index) == expected
    pools = pool_differences(results, items)
    assert [key for key in pools.index if key[0] == "50%" and key[1] == "text"] == [
        ("50%", "text", f"{pool} - dense") for pool in ("text", "visual", "mixed")] + [
        ("50%", "text", pair) for pair in ("text - visual", "mixed - visual", "text - mixed")]
    assert pools.index[-1][0] == "60%"
    # a grid with no pruned cell yet has nothing to compare
    assert pool_differences(*_pathway_grid({("dense", "-"): DENSE})).empty


def test_pool_differences_compare_pools_and_dense_on_the_same_items(tmp_path):
    results, items = _pathway_grid({("dense", "-"): DENSE, ("text", "text"): ATV, ("text", "visual"): WANDA,
                                    ("visual", "visual"): DENSE})
    table = pool_differences(results, items.sample(frac=1, random_state=2))  # item order does not matter
    assert list(table.index) == [("50%", "text", "text - dense"), ("50%", "text", "visual - dense"),
                                 ("50%", "text", "text - visual"), ("50%", "visual", "visual - dense"),
                                 ("50%", "visual - text", "visual")]
    # against the dense model: retention - 100; ATV keeps 5 of 6 on a and 6 of 6 on b
    text_dense = table.loc[("50%", "text", "text - dense")]
    assert text_dense[("avg retention (pp)", "diff")] == pytest.approx(100 * (5 / 6 + 1) / 2 - 100)
    assert text_dense[("a (pp)", "diff")] == pytest.approx(100 * (5 / 8 - 6 / 8))
    assert text_dense[("b (pp)", "diff")] == pytest.approx(0.0)
    # between pools: the paired intervals of the plain loops tested above
    pair = table.loc[("50%", "text", "text - visual")]
    (low, high), _ = _plain_bootstrap(BOOTS, 0, ATV, WANDA)
    assert (pair[("avg retention (pp)", "low")], pair[("avg retention (pp)", "high")]) == pytest.approx((low, high))
    per_task = paired_score_differences(ATV, WANDA)
    assert pair[("a (pp)", "diff")] == pytest.approx(12.5)
    assert (pair[("b (pp)", "low")], pair[("b (pp)", "high")]) == pytest.approx((per_task["b"].low,
                                                                                 per_task["b"].high))
    # a pathway pruned without loss: every interval is [0, 0]
    same = table.loc[("50%", "visual", "visual - dense")]
    assert same.drop(["p", "p_adj"], level=1).abs().max() == 0
    assert (same.xs("p", level=1) == 1).all() and (same.xs("p_adj", level=1) == 1).all()
    # between pathways, same pool: the visual pathway's cell (dense answers) against the text pathway's
    # (Wanda's 4 of 8 on each task, retention (4/6 + 4/6) / 2)
    across = table.loc[("50%", "visual - text", "visual")]
    assert across[("avg retention (pp)", "diff")] == pytest.approx(100 - 100 * 4 / 6)
    assert across[("a (pp)", "diff")] == pytest.approx(100 * (6 / 8 - 4 / 8))
    (low, high), _ = _plain_bootstrap(BOOTS, 0, DENSE, WANDA)
    assert (across[("avg retention (pp)", "low")], across[("avg retention (pp)", "high")]) == pytest.approx(
        (low, high))
    # a Table 1 grid writes them beside the table
    (tmp_path / "items").mkdir()
    items.to_csv(tmp_path / "items" / "all.csv", index=False)
    markdown = write_grid_table(results, tmp_path, "table1")
    assert (tmp_path / "table1_pools.md").read_text() in markdown
    line = next(line for line in markdown.splitlines() if "| text - dense |" in line)
    assert line.startswith("| 50% | text | text - dense | -8.33 [")


def test_rerun_differences_pair_each_cell_with_its_rerun_on_the_same_items():
    first_results, first_items = _grid({"dense": DENSE, "wanda": WANDA, "atv": ATV})
    rerun_results, rerun_items = _grid({"dense": DENSE, "wanda": ATV})  # Wanda run again; ATV not (yet)
    table = rerun_differences(first_results, first_items, rerun_results, rerun_items.sample(frac=1, random_state=2),
                              boots=300, seed=3)
    assert list(table.index) == ["wanda"]
    row = table.loc["wanda"]
    for t in ("a", "b"):
        assert row[("items answered differently", t)] == sum(x != y for x, y in zip(WANDA[t], ATV[t]))
    assert (row[("items answered differently", "a")], row[("items answered differently", "b")]) == (1, 2)
    assert row[("a (pp)", "diff")] == pytest.approx(100 * (5 / 8 - 4 / 8))
    assert row[("b (pp)", "diff")] == pytest.approx(100 * (6 / 8 - 4 / 8))
    overall = row["avg retention (pp)"]
    assert overall["diff"] == pytest.approx(100 * ((5 / 6 + 1) / 2 - (4 / 6 + 4 / 6) / 2))
    (low, high), _ = _plain_bootstrap(300, 3, ATV, WANDA)
    assert (overall["low"], overall["high"]) == pytest.approx((low, high))
    assert "| wanda | 1 | 2 | +25.00 [" in to_markdown(table)
    moved = {"a": np.where(np.arange(8) == 2, 1.0, DENSE["a"]), "b": DENSE["b"]}
    with pytest.raises(ResultsError, match="dense cells answer 1 items differently"):
        rerun_differences(first_results, first_items, *_grid({"dense": moved, "wanda": ATV}))


def _grid_folder(folder, runs: dict[str, dict], name: str, grid: str = "table2", calib_seed: int | None = None
                 ) -> None:
    """A grid folder as `probe grid` leaves it: results.csv, items/ and the manifest naming the grid."""
    import json

    results, items = _grid(runs)
    (folder / "items").mkdir(parents=True)
    results.to_csv(folder / "results.csv", index=False)
    items.to_csv(folder / "items" / "all.csv", index=False)
    config = {"grid": grid, "name": name, "seed": 0, "calib_seed": calib_seed}
    (folder / "manifest.json").write_text(json.dumps({"config": config}))


def test_table_cli_compares_a_rerun_folder_against_the_first(tmp_path, capsys):
    """`probe table RERUN --against FIRST` writes RERUN/<name>_vs_<first name>.md with the paired differences."""
    from probe.cli import main

    _grid_folder(tmp_path / "first", {"dense": DENSE, "wanda": WANDA}, "table2")
    _grid_folder(tmp_path / "second", {"dense": DENSE, "wanda": ATV}, "table2-calib1")
    assert main(["table", str(tmp_path / "second"), "--against", str(tmp_path / "nowhere")]) == 2
    assert "no grid manifest at" in capsys.readouterr().err
    assert main(["table", str(tmp_path / "second"), "--against", str(tmp_path / "first")]) == 0
    written = (tmp_path / "second" / "table2-calib1_vs_table2.md").read_text()
    assert written in capsys.readouterr().out
    assert "| wanda | 1 | 2 | +25.00 [" in written


def _plain_stderr(values) -> float:
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5


def test_join_draws_read_each_cell_as_the_mean_of_its_draws():
    first = _grid({"dense": DENSE, "wanda": WANDA, "atv": ATV, "tamp": WANDA})
    second = _grid({"dense": DENSE, "wanda": ATV, "atv": ATV})  # TAMP not rerun: left out
    results, items = join_draws([(*first, 0), (second[0], second[1].sample(frac=1, random_state=4), 1)])
    assert list(dict.fromkeys(results.cell)) == ["dense", "wanda", "atv", "wanda@calib1", "atv@calib1"]
    assert results.groupby("cell").calib_seed.first().dropna().to_dict() == {"wanda": 0, "atv": 0, "wanda@calib1": 1,
                                                                    "atv@calib1": 1}
    table = table2(results, items)
    row = table.loc[("50%", "wanda")]
    assert (row[("score (%)", "a")], row[("score (%)", "b")]) == pytest.approx((100 * 4.5 / 8, 100 * 5 / 8))
    assert row[("retention (%)", "avg")] == pytest.approx(100 * (4.5 / 6 + 5 / 6) / 2)
    # the items' noise the draws share plus the spread between the draws' scores
    errors, scores = [_plain_stderr(WANDA["a"]), _plain_stderr(ATV["a"])], [4 / 8, 5 / 8]
    between = ((scores[0] - 4.5 / 8) ** 2 + (scores[1] - 4.5 / 8) ** 2) / 1
    expected = ((errors[0] ** 2 + errors[1] ** 2) / 2 + between / 2) ** 0.5
    assert row[("stderr (%)", "a")] == pytest.approx(100 * expected)
    (low, high) = _plain_two_level(BOOTS, 0, [WANDA, ATV])
    assert (row[("retention (%)", "low")], row[("retention (%)", "high")]) == pytest.approx((low, high))
    # each draw's own retention: Wanda's draw keeps 4/6 and 4/6, the rerun's 5/6 and 6/6
    assert (row[("retention (%)", "draws")], row[("retention (%)", "draw min")],
            row[("retention (%)", "draw max")]) == pytest.approx((2, 100 * 4 / 6, 100 * 11 / 12))
    atv = table.loc[("50%", "atv")]
    (low, high) = _plain_two_level(BOOTS, 0, [ATV, ATV], [WANDA, ATV])
    assert (atv[("vs wanda (pp)", "low")], atv[("vs wanda (pp)", "high")]) == pytest.approx((low, high))
    assert "| 2 [66.67, 91.67] |" in to_markdown(table)


def test_join_draws_refuse_draws_that_are_not_reruns():
    first = (*_grid({"dense": DENSE, "wanda": WANDA}), 0)
    moved = {"a": np.where(np.arange(8) == 2, 1.0, DENSE["a"]), "b": DENSE["b"]}
    with pytest.raises(ResultsError, match="draw 2's dense cell answers 1 items differently"):
        join_draws([first, (*_grid({"dense": moved, "wanda": ATV}), 1)])
    shorter = {t: v[:6] for t, v in DENSE.items()}
    with pytest.raises(ResultsError, match="draw 2 scores other tasks or items"):
        join_draws([first, (*_grid({"dense": shorter, "wanda": {t: v[:6] for t, v in ATV.items()}}), 1)])
    with pytest.raises(ResultsError, match="no pruned cell is finished in every draw"):
        join_draws([first, (*_grid({"dense": DENSE, "atv": ATV}), 1)])
    with pytest.raises(ResultsError, match="two grids drew their calibration with seed 0"):
        join_draws([first, (*_grid({"dense": DENSE, "wanda": ATV}), 0)])
    with pytest.raises(ResultsError, match="at least two grids"):
        join_draws([first])


def test_table_cli_joins_draws(tmp_path, capsys):
    """`probe table FIRST --average-with SECOND` writes FIRST/<name>_mean_of_2_draws.md."""
    from probe.cli import main

    _grid_folder(tmp_path / "first", {"dense": DENSE, "wanda": WANDA, "atv": ATV}, "table2")
    _grid_folder(tmp_path / "second", {"dense": DENSE, "wanda": ATV, "atv": ATV}, "table2-calib1", calib_seed=1)
    _grid_folder(tmp_path / "probe", {"dense": DENSE, "wanda": ATV}, "table1", grid="table1")
    assert main(["table", str(tmp_path / "first"), "--average-with", str(tmp_path / "probe")]) == 2
    assert "is not a table2 grid" in capsys.readouterr().err
    import json

    for folder, version in (("first", "5.25.0"), ("second", "5.23.0")):  # the rerun ran on other versions
        (tmp_path / folder / "cells").mkdir()
        for cell in ("dense", "wanda", "atv"):
            record = {"settings": {}, "method": cell, "dtype": "float32", "device": "cpu",
                      "versions": {"torch": "2.13.0", "transformers": version}, "code": {"version": "0.1.0"},
                      "context": {"cell": cell, "machine": {"cpu": "Example", "cpu_capability": "AVX2"}}}
            (tmp_path / folder / "cells" / f"{cell}.json").write_text(json.dumps(record))
    assert main(["table", str(tmp_path / "first"), "--average-with", str(tmp_path / "second"), "--adjust", "bh",
                 "--resamples", "500"]) == 0
    written = (tmp_path / "first" / "table2_mean_of_2_draws.md").read_text()
    assert written in capsys.readouterr().out
    assert "| 50% | wanda | 56.25 ± " in written and "| 2 [66.67, 91.67] |" in written
    assert "p-values adjusted by Benjamini-Hochberg" in written and "500 resamples" in written
    assert "- transformers: 5.25.0 (atv, dense, wanda); 5.23.0 (atv@calib1, wanda@calib1)" in written
    assert (tmp_path / "first" / "table2_mean_of_2_draws_tasks_vs_wanda.md").is_file()
    for path in (tmp_path / "second" / "items").iterdir():
        path.unlink()
    assert main(["table", str(tmp_path / "first"), "--average-with", str(tmp_path / "second")]) == 2
    assert "keeps no per-item scores" in capsys.readouterr().err


def _plain_two_level(boots, seed, draws, baseline=None):
    """One loop per resample: first the draws (with replacement, as many as there are), then per task (in
    sorted order) the items, the same for every draw, the baseline and the dense run; a baseline of several
    draws takes the same resampled draws."""
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(draws), size=(boots, len(draws)))
    tasks = sorted(DENSE)
    picks = {t: rng.integers(0, len(DENSE[t]), size=(boots, len(DENSE[t]))) for t in tasks}
    values = []
    for b in range(boots):
        ratios = []
        for t in tasks:
            picked = picks[t][b]
            dense = sum(DENSE[t][i] for i in picked) / len(picked)
            score = sum(sum(draws[k][t][i] for i in picked) / len(picked) for k in chosen[b]) / len(draws)
            if isinstance(baseline, list):
                score -= sum(sum(baseline[k][t][i] for i in picked) / len(picked) for k in chosen[b]) / len(draws)
            elif baseline is not None:
                score -= sum(baseline[t][i] for i in picked) / len(picked)
            ratios.append(score / dense if dense > 0 else float("nan"))
        values.append(100 * sum(ratios) / len(ratios))
    return np.percentile([v for v in values if v == v], [2.5, 97.5])


OTHER = {"a": np.array([1, 1, 1, 1, 1, 0, 1, 1.0]), "b": np.array([1, 1, 1, 1, 0, 1, 1, 1.0])}


def test_two_level_bootstrap_equals_a_plain_loop():
    draws = [WANDA, ATV, OTHER]
    interval = bootstrap_retention(draws, DENSE, boots=400, seed=11)
    expected_point = 100 * np.mean([np.mean([run[t].mean() for run in draws]) / DENSE[t].mean() for t in sorted(DENSE)])
    assert interval.estimate == pytest.approx(expected_point)
    assert (interval.low, interval.high) == pytest.approx(tuple(_plain_two_level(400, 11, draws)))
    difference = paired_difference(draws, WANDA, DENSE, boots=400, seed=11)
    assert (difference.low, difference.high) == pytest.approx(tuple(_plain_two_level(400, 11, draws, WANDA)))


def test_two_level_bootstrap_counts_the_spread_between_draws():
    """Draws that disagree widen the interval beyond that of the items' mean answers taken as one run."""
    draws = [WANDA, OTHER]
    mean = {t: (WANDA[t] + OTHER[t]) / 2 for t in DENSE}
    two_level, one_level = bootstrap_retention(draws, DENSE), bootstrap_retention(mean, DENSE)
    assert two_level.estimate == pytest.approx(one_level.estimate)
    assert two_level.high - two_level.low > one_level.high - one_level.low
    same = bootstrap_retention([WANDA, WANDA, WANDA], DENSE, boots=300, seed=2)
    assert (same.low, same.high) == pytest.approx(_plain_bootstrap(300, 2, WANDA)[0], abs=5.0)
    with pytest.raises(ItemsError, match="runs of 2 and 3 calibration draws"):
        paired_difference([WANDA, ATV], [WANDA, ATV, OTHER], DENSE)
