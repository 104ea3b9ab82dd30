"""The sensitivity grid: every cell evaluated once, resumable, nothing lost; Table 1 layout."""

import hashlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.tables import retention, table1, table2, to_latex, to_markdown
from probe.experiments import grid as grid_module
from probe.experiments.grid import GridConfig, GridConfigError, cells, run_grid
from probe.experiments.grid import cell as grid_cell
from probe.experiments.grid import plan as grid_plan
from probe.experiments.task_checkpoint import (
    WeightsChangedError,
    describe_weight_change,
    largest_sum_change,
    weights_fingerprint,
)

ROOT = Path(__file__).resolve().parent.parent


def small_config(tmp_path, **kw):
    base = dict(model="tiny:llava_next", tasks="digits,quote_completion", limit=3, nsamples=3,
                sparsities=[0.5], pools=["text", "visual"], out=str(tmp_path / "grid"))
    base.update(kw)
    return GridConfig(**base)


def test_grid_runs_every_cell_once_and_resumes(tmp_path, monkeypatch):
    config = small_config(tmp_path)
    results = run_grid(config, show_progress=False)
    assert len(cells(config)) == 1 + 2 * 2 * 1
    assert len(results) == len(cells(config)) * 2
    assert set(results.cell) == {"dense", "text/text/0.5", "text/visual/0.5", "visual/text/0.5", "visual/visual/0.5"}
    iou = pd.read_csv(tmp_path / "grid" / "mask_iou.csv")
    assert set(iou.pathway) == {"text", "visual"} and iou.iou.between(0, 1).all() and (iou.iou < 1).any()

    calls = []
    monkeypatch.setattr(grid_cell, "evaluate_with_items", lambda *a, **k: calls.append(1))
    again = run_grid(config, show_progress=False)
    assert calls == [] and again.equals(results)


def test_mot_cells_leave_the_shared_model_alone_and_free_their_copy_before_the_next(tmp_path, monkeypatch):
    import gc

    import torch

    from probe.pruning.mot import RoutedLinear

    alive_at_start, bases = [], []
    to_mot, sharing_copy = grid_cell.to_mot, grid_cell.weight_sharing_copy

    def counting_to_mot(*args, **kwargs):
        alive_at_start.append(sum(isinstance(o, RoutedLinear) for o in gc.get_objects()))
        return to_mot(*args, **kwargs)

    def recording_copy(model):
        if not bases:
            bases.append((model, {k: v.clone() for k, v in model.state_dict().items()}))
        return sharing_copy(model)

    monkeypatch.setattr(grid_cell, "to_mot", counting_to_mot)
    monkeypatch.setattr(grid_cell, "weight_sharing_copy", recording_copy)
    gc.collect()
    gc.disable()  # an automatic collection must not hide a copy left in a reference cycle
    try:
        config = small_config(tmp_path, pathways=["text", "visual"], pools=["text"], tasks="quote_completion", limit=2)
        run_grid(config, show_progress=False)
    finally:
        gc.enable()
    assert alive_at_start == [0, 0]
    base, before = bases[0]
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # both pathways pruned copies only


def test_sensitivity_cells_run_one_sparsity_column_at_a_time(tmp_path):
    config = small_config(tmp_path, sparsities=[0.5, 0.6])
    assert [c.cell_id for c in cells(config)] == [
        "dense", "text/text/0.5", "text/visual/0.5", "visual/text/0.5", "visual/visual/0.5",
        "text/text/0.6", "text/visual/0.6", "visual/text/0.6", "visual/visual/0.6"]


def _kill_on_evaluation(monkeypatch, number: int) -> list[list[str]]:
    """Make the grid's ``number``-th evaluation call (one per cell and task) raise KeyboardInterrupt; returns
    the list that records every call's tasks."""
    real = grid_cell.evaluate_with_items
    calls = []

    def evaluate(loaded, tasks, *args, **kwargs):
        calls.append(list(tasks))
        if len(calls) == number:
            raise KeyboardInterrupt
        return real(loaded, tasks, *args, **kwargs)

    monkeypatch.setattr(grid_cell, "evaluate_with_items", evaluate)
    return calls


def test_a_killed_grid_keeps_finished_cells_and_the_finished_tasks_of_the_cell_in_progress(tmp_path, monkeypatch):
    config = small_config(tmp_path, pathways=["visual"])  # dense + 2 cells, each scored on 2 tasks
    calls = _kill_on_evaluation(monkeypatch, 6)  # the third cell's second task
    with pytest.raises(KeyboardInterrupt):
        run_grid(config, show_progress=False)
    assert calls == [["digits"], ["quote_completion"]] * 3
    kept = pd.read_csv(tmp_path / "grid" / "results.csv")
    assert len(kept) == 4 and kept.cell.nunique() == 2
    partial = tmp_path / "grid" / "partial" / "visual_visual_0_5"
    assert sorted(p.name for p in partial.iterdir()) == [
        "digits.items.csv", "digits.scores.csv", "fingerprint", "parameters.json"]

    calls.clear()
    resumed = run_grid(config, show_progress=False)
    assert calls == [["quote_completion"]]  # pruned again, and only the task left is scored
    assert not (tmp_path / "grid" / "partial").exists()
    monkeypatch.undo()
    whole = run_grid(small_config(tmp_path, pathways=["visual"], out=str(tmp_path / "whole")), show_progress=False)
    columns = ["cell", "task", "metric", "score", "n"]
    assert resumed[columns].sort_values(columns).reset_index(drop=True).equals(
        whole[columns].sort_values(columns).reset_index(drop=True))
    for name in ("visual_visual_0_5.csv", "dense.csv"):
        assert (tmp_path / "grid" / "items" / name).read_text() == (tmp_path / "whole" / "items" / name).read_text()


def _stopped_with_one_task_scored(tmp_path, monkeypatch):
    """A grid stopped in its second cell after that cell's first task: (config, calls, partial folder)."""
    config = small_config(tmp_path, pathways=["visual"], pools=["text"])
    calls = _kill_on_evaluation(monkeypatch, 4)  # the second cell's second task
    with pytest.raises(KeyboardInterrupt):
        run_grid(config, show_progress=False)
    calls.clear()
    return config, calls, tmp_path / "grid" / "partial" / "visual_text_0_5"


def test_task_checkpoints_of_other_weights_are_refused(tmp_path, monkeypatch):
    config, calls, partial = _stopped_with_one_task_scored(tmp_path, monkeypatch)
    (partial / "fingerprint").write_text("0123456789abcdef\n")  # as if the cell's pruning had come out otherwise
    recorded = json.loads((partial / "parameters.json").read_text())
    name = next(n for n, (_, zeros, _) in recorded.items() if zeros > 0)
    recorded[name][1] -= 1  # one weight fewer pruned in one parameter
    (partial / "parameters.json").write_text(json.dumps(recorded))
    with pytest.raises(WeightsChangedError, match=rf"finished tasks \(digits\) were scored on \(1 of {len(recorded)} "
                                                  "parameters have another zero count") as refused:
        run_grid(config, show_progress=False)
    assert str(partial) in str(refused.value) and calls == []
    assert len(str(refused.value).splitlines()) == 1
    shutil.rmtree(partial)  # as the message says: the cell's tasks are scored again
    run_grid(config, show_progress=False)
    assert calls == [["digits"], ["quote_completion"]]


def test_task_checkpoints_of_weights_equal_up_to_float_noise_are_kept(tmp_path, monkeypatch):
    """Another thread count changes the last bits of a sum, not the weights: the finished task stays, and the
    cell's record says what was compared."""
    config, calls, partial = _stopped_with_one_task_scored(tmp_path, monkeypatch)
    recorded = json.loads((partial / "parameters.json").read_text())
    name = next(n for n, (_, _, total) in recorded.items() if total != 0)
    recorded[name][2] *= 1 + 2e-12
    (partial / "parameters.json").write_text(json.dumps(recorded))
    (partial / "fingerprint").write_text(weights_fingerprint(
        {n: (tuple(shape), zeros, total) for n, (shape, zeros, total) in recorded.items()}) + "\n")
    run_grid(config, show_progress=False)
    assert calls == [["quote_completion"]]
    resumed = json.loads((tmp_path / "grid" / "cells" / "visual_text_0_5.json").read_text())["context"]["resumed"]
    assert resumed["tasks"] == ["digits"]
    assert resumed["compared"] == "parameter names, shapes and zero counts equal, sums within 1e-06 relative"
    assert resumed["largest_relative_change"] == pytest.approx(2e-12, rel=1e-3)


def test_largest_sum_change_against_a_loop():
    before = {"a": ((2, 2), 1, 4.0), "b": ((3,), 0, -2.0), "c": ((1,), 0, 0.0)}
    assert largest_sum_change(before, dict(before)) == 0.0
    after = {"a": ((2, 2), 1, 4.0 + 4e-9), "b": ((3,), 0, -2.0 - 1e-8), "c": ((1,), 0, 0.0)}
    expected = max(abs(after[n][2] - before[n][2]) / max(abs(before[n][2]), abs(after[n][2]), 1e-30)
                   for n in before)
    assert largest_sum_change(before, after) == pytest.approx(expected) == pytest.approx(5e-9)
    assert largest_sum_change(before, {**after, "a": ((2, 2), 2, 4.0)}) is None  # another zero count
    assert largest_sum_change(before, {**after, "a": ((4,), 1, 4.0)}) is None  # another shape
    assert largest_sum_change(before, {"a": before["a"]}) is None  # a parameter missing


def test_a_grid_resumes_only_on_the_same_versions(tmp_path, monkeypatch):
    config = small_config(tmp_path, pathways=["visual"], pools=["text"], tasks="digits")
    run_grid(config, show_progress=False, only=["dense"])
    manifest = tmp_path / "grid" / "manifest.json"
    stored = json.loads(manifest.read_text())
    stored["versions"]["torch"] = "0.0.1"
    manifest.write_text(json.dumps(stored))
    with pytest.raises(GridConfigError, match=r"other settings \(torch 0.0.1 there, .+ here\)"):
        run_grid(config, show_progress=False)


def test_a_second_driver_on_the_same_folder_is_refused_with_the_holder_named(tmp_path):
    config = small_config(tmp_path, pathways=["visual"], pools=["text"], tasks="digits")
    run_grid(config, show_progress=False, only=["dense"])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from probe.experiments.grid import driver_lock\n"
         "with driver_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)",
         str(tmp_path / "grid")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GridConfigError, match=rf"is in use by another probe grid \(process {holder.pid} on "
                                                  rf"{socket.gethostname()}, started .+\); wait for it to end"):
            run_grid(config, show_progress=False)
    finally:
        holder.kill()
        holder.wait()
    results = run_grid(config, show_progress=False)  # the lock went with the killed holder
    assert set(results.cell) == {"dense", "visual/text/0.5"}
    assert not (tmp_path / "grid" / "driver.json").exists()


def test_a_grid_takes_its_dense_cell_from_another_grid_scored_alike(tmp_path, monkeypatch):
    source = small_config(tmp_path, grid="table2", methods=["magnitude"], settings=["0.5"], tasks="digits",
                          out=str(tmp_path / "table2"))
    run_grid(source, show_progress=False)
    for bad, match in (({"limit": 2}, r"other settings \(limit: 3 there, 2 here\)"),
                       ({"dense_from": str(tmp_path / "nowhere")}, "has no finished dense cell")):
        settings = dict(tasks="digits", pathways=["visual"], pools=["text"], dense_from=str(tmp_path / "table2"),
                        out=str(tmp_path / "bad"))
        config = small_config(tmp_path, **{**settings, **bad})
        with pytest.raises(GridConfigError, match=match):
            run_grid(config, show_progress=False)
    calls = _kill_on_evaluation(monkeypatch, 0)  # counts calls, kills none
    config = small_config(tmp_path, tasks="digits", pathways=["visual"], pools=["text"],
                          dense_from=str(tmp_path / "table2"), out=str(tmp_path / "table1"))
    results = run_grid(config, show_progress=False)
    assert len(calls) == 1  # the visual/text cell only
    theirs = pd.read_csv(tmp_path / "table2" / "results.csv").set_index("cell").loc["dense"]
    ours = results.set_index("cell").loc["dense"]
    assert (ours.task, ours.score, ours.n) == (theirs.task, theirs.score, theirs.n)
    items = "items/dense.csv"
    assert (tmp_path / "table1" / items).read_text() == (tmp_path / "table2" / items).read_text()
    assert table1(results).shape[0] == 2  # dense and visual/text


def test_the_weights_fingerprint_sees_one_changed_weight():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    before = weights_fingerprint(model)
    assert weights_fingerprint(model) == before
    with torch.no_grad():
        model[1].weight[2, 3] = 0.0  # one more pruned weight
    pruned = weights_fingerprint(model)
    assert pruned != before
    with torch.no_grad():
        model[0].weight[1, 1] += 0.25  # a kept weight updated (as SparseGPT does)
    assert weights_fingerprint(model) != pruned


def test_the_weights_fingerprint_hashes_each_parameter_as_documented():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0, 0] = 0.0
    digest = hashlib.sha256()
    for name, values in (("weight", model.weight), ("bias", model.bias)):
        zeros = sum(1 for v in values.flatten().tolist() if v == 0.0)
        total = float(values.detach().double().sum())
        digest.update(f"{name}:{tuple(values.shape)}:({zeros}, {total!r});".encode())
    assert weights_fingerprint(model) == digest.hexdigest()[:16]  # stamps written earlier stay valid


def test_a_weight_change_is_described_by_zero_counts_and_sums():
    before = {"a": ((2, 2), 2, 1.0), "b": ((2,), 0, 4.0), "c": ((2,), 1, -2.0)}
    after = {"a": ((2, 2), 3, 0.5), "b": ((2,), 0, 4.0 + 4e-6), "c": ((2,), 1, -2.0 - 3e-6)}
    assert describe_weight_change(before, after) == (
        "1 of 3 parameters have another zero count (3 zeros before, 4 now); "
        "2 more have the same zero count and another sum (largest relative change 1.5e-06)")
    assert describe_weight_change(before, {**after, "a": ((4,), 3, 0.5)}) == "the parameters' names or shapes differ"


def test_named_cells_run_first_in_the_order_named_and_a_later_run_does_the_rest(tmp_path, monkeypatch):
    config = small_config(tmp_path, grid="table2", tasks="digits", settings=["0.5"],
                          methods=["magnitude", "wanda", "atv", "atv(budget=fixed)"])
    monkeypatch.setattr(grid_plan, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    for only, match in ((["wanda/60%"], r"no cell 'wanda/60%'.*dense, magnitude/50%, wanda/50%"),
                        (["atv(budget=fixed)/50%"], r"'atv/50%': name that cell too")):
        with pytest.raises(GridConfigError, match=match):  # refused before the model loads
            run_grid(config, show_progress=False, only=only)
    monkeypatch.undo()

    first = run_grid(config, show_progress=False, only=["atv/50%", "wanda/50%", "atv/50%"])
    assert list(first.cell) == ["atv/50%", "wanda/50%"]
    fixed = run_grid(config, show_progress=False, only=["atv(budget=fixed)/50%"])  # its atv cell has finished
    assert list(fixed.cell) == ["atv/50%", "wanda/50%", "atv(budget=fixed)/50%"]
    rest = run_grid(config, show_progress=False)
    assert list(rest.cell) == ["atv/50%", "wanda/50%", "atv(budget=fixed)/50%", "dense", "magnitude/50%"]


def test_bad_grid_settings(tmp_path):
    with pytest.raises(GridConfigError, match="pathway"):
        GridConfig(pathways=["audio"])
    (tmp_path / "g.yaml").write_text("sparsitys: [0.5]\n")
    with pytest.raises(GridConfigError, match="sparsitys"):
        GridConfig.from_yaml(tmp_path / "g.yaml")
    with pytest.raises(GridConfigError, match="not found"):
        GridConfig.from_yaml(tmp_path / "none.yaml")


def test_retention_and_table1_layout_against_hand_computed_values():
    rows = [("dense", "-", 0.0, "a", 0.80), ("dense", "-", 0.0, "b", 0.50),
            ("text", "text", 0.5, "a", 0.40), ("text", "text", 0.5, "b", 0.50),
            ("text", "text", 0.6, "a", 0.20), ("text", "text", 0.6, "b", 0.25),
            ("visual", "mixed", 0.5, "a", 0.80), ("visual", "mixed", 0.5, "b", 0.55)]
    frame = pd.DataFrame(rows, columns=["pathway", "pool", "sparsity", "task", "score"])
    assert retention(pd.Series({"a": 0.4, "b": 0.5}), pd.Series({"a": 0.8, "b": 0.5})) == pytest.approx(75.0)
    t = table1(frame)
    # the paper's layout: sparsity as row groups, the dense row first, tasks as columns
    assert list(t.index) == [("dense", "dense", "-"), ("50%", "text", "text"), ("50%", "visual", "mixed"),
                             ("60%", "text", "text")]
    avg, a = ("retention (%)", "avg"), ("score (%)", "a")
    assert t.loc[("50%", "text", "text"), avg] == pytest.approx((0.5 + 1.0) / 2 * 100)
    assert t.loc[("60%", "text", "text"), avg] == pytest.approx((0.25 + 0.5) / 2 * 100)
    assert t.loc[("50%", "visual", "mixed"), avg] == pytest.approx((1.0 + 1.1) / 2 * 100)
    assert t.loc[("dense", "dense", "-"), a] == pytest.approx(80.0)
    assert t.loc[("dense", "dense", "-"), avg] == 100.0
    md = to_markdown(t)
    assert md.splitlines()[0] == "| setting | pathway | pool | a | b | avg retention (%) |"
    assert "| 50% | text | text | 40.00 | 50.00 | 75.00 |" in md
    assert "| 60% | text | text | 20.00 | 25.00 | 37.50 |" in md
    assert "| 50% | visual | mixed | 80.00 | 55.00 | 105.00 |" in md
    latex = to_latex(t)
    assert r"\multirow" in latex and r"\toprule" in latex and r"50\%" in latex
    assert r"\multicolumn{2}{c}{score (\%)}" in latex and "retention (\\%)" in latex
    assert latex.count("40.00") == 1 and latex.count("37.50") == 1


def test_method_grid_prunes_every_method_and_setting(tmp_path):
    config = small_config(tmp_path, grid="table2", methods=["magnitude", "atv", "tamp"], settings=["0.5", "2:4"],
                          tasks="digits")
    results = run_grid(config, show_progress=False)
    assert list(results.cell) == ["dense", "magnitude/50%", "atv/50%", "tamp/50%", "magnitude/2:4", "atv/2:4",
                                  "tamp/2:4"]  # column by column
    from analysis.results import load_cell_records

    records = load_cell_records(tmp_path / "grid")
    assert set(records) == set(results.cell)
    record = records["atv/2:4"]
    assert record["settings"]["pattern"] == "2:4" and record["selector_blocks"]
    assert set(record["sparsity"].values()) == {0.5}
    table = table2(results)
    assert list(table.index) == [("dense", "dense"), ("50%", "magnitude"), ("50%", "atv"), ("50%", "tamp"),
                                 ("2:4", "magnitude"), ("2:4", "atv"), ("2:4", "tamp")]
    assert list(table.columns) == [("score (%)", "digits"), ("retention (%)", "avg"), ("stderr (%)", "digits")]
    with pytest.raises(GridConfigError, match="other settings.*methods"):
        run_grid(small_config(tmp_path, grid="table2", methods=["wanda"], settings=["0.5", "2:4"], tasks="digits"),
                 show_progress=False)


def test_method_entries_are_mappings_and_every_setting_a_column(tmp_path):
    methods = [{"method": "atv", "alpha": 2}, {"tokens": "text", "scorer": "ria", "allocation": "owl", "lam": 0.05}]
    config = small_config(tmp_path, grid="table2", methods=methods, settings=["0.5"], tasks="digits")
    results = run_grid(config, show_progress=False).set_index("cell")
    assert list(results.index) == ["dense", "atv(alpha=2)/50%", "text+ria+owl(lam=0.05)/50%"]
    atv, ria = results.loc["atv(alpha=2)/50%"], results.loc["text+ria+owl(lam=0.05)/50%"]
    assert (atv["tokens"], atv["scorer"], atv["allocation"], atv["tokens.alpha"]) == ("atv", "wanda", "uniform", 2.0)
    assert atv["tokens.k_rule"] == "paper" and pd.isna(atv["allocation.lam"])
    assert (ria["tokens"], ria["scorer"], ria["allocation.lam"], ria["scorer.power"]) == ("text", "ria", 0.05, 0.5)
    assert pd.isna(results.loc["dense", "tokens"])


@pytest.mark.parametrize("methods, match", [
    ([{"method": "atv", "beta": 2}], r"methods\[0\].*unknown setting 'beta'"),
    (["wanda", {"scorer": "obd"}], r"methods\[1\].*unknown scorer 'obd'; choose from magnitude, wanda"),
    ([{"method": "owl", "lam": "wide"}], r"methods\[0\].*'lam'"),
    ([{"method": "owl", "lam": 0.6}], r"methods\[0\].*lam must lie in"),
    ([{"method": "wanda"}, "wanda"], "both labelled 'wanda'"),
    ([{"method": "owl"}], r"methods\[0\].*N:M"),
    ([7], r"methods\[0\].*should be"),
])
def test_grid_method_entry_errors_name_the_entry_and_key(tmp_path, methods, match):
    with pytest.raises(GridConfigError, match=match):
        small_config(tmp_path, grid="table2", methods=methods, settings=["0.5", "2:4"])
    with pytest.raises(GridConfigError, match="neither"):
        small_config(tmp_path, grid="table2", settings=["half"])


def test_table2_layout_against_hand_computed_values():
    rows = [("dense", "-", "-", "a", 0.8), ("dense", "-", "-", "b", 0.4),
            ("all", "wanda", "50%", "a", 0.4), ("all", "wanda", "50%", "b", 0.4),
            ("all", "wanda", "2:4", "a", 0.2), ("all", "wanda", "2:4", "b", 0.1),
            ("all", "atv", "50%", "a", 0.8), ("all", "atv", "50%", "b", 0.2)]
    frame = pd.DataFrame(rows, columns=["pathway", "method", "setting", "task", "score"])
    t = table2(frame)
    avg = ("retention (%)", "avg")
    assert t.loc[("50%", "wanda"), avg] == pytest.approx(75.0)
    assert t.loc[("2:4", "wanda"), avg] == pytest.approx(25.0)
    assert t.loc[("50%", "atv"), avg] == pytest.approx(75.0)
    assert "| setting | method | a | b | avg retention (%) |" in to_markdown(t)
    assert "| 2:4 | wanda | 20.00 | 10.00 | 25.00 |" in to_markdown(t)


def test_ablation_cells_take_atv_settings_and_fixed_budgets_match_adaptive(tmp_path):
    import json

    config = small_config(tmp_path, grid="table2", tasks="digits", settings=["0.5"],
                          methods=["atv", "atv(signal=random, budget=fixed)", "atv(alpha=0)"])
    results = run_grid(config, show_progress=False)
    # a fixed-budget cell runs after the cells it takes its budget from
    assert list(results.cell) == ["dense", "atv/50%", "atv(alpha=0)/50%", "atv(signal=random, budget=fixed)/50%"]
    records = {p.name: json.loads(p.read_text()) for p in (tmp_path / "grid" / "cells").glob("*.json")}
    adaptive = records["atv_50.json"]["selector_blocks"]
    fixed = records["atv_signal_random_budget_fixed_50.json"]
    assert fixed["settings"]["tokens_settings"]["signal"] == "random"
    assert sum(b["visual_kept"] for b in fixed["selector_blocks"]) == sum(b["visual_kept"] for b in adaptive)
    assert {b["visual_kept"] for b in records["atv_alpha_0_50.json"]["selector_blocks"]} == {0}
    for bad, match in (("wanda(alpha=2)", r"methods\[0\].*unknown setting 'alpha'.*wanda' takes use_variant"),
                       ("atv(beta=2)", "beta"), ("atv(alpha)", "key=value")):
        with pytest.raises(GridConfigError, match=match):
            small_config(tmp_path, grid="table2", methods=[bad])


def test_a_rerun_with_other_calibration_samples_is_refused(tmp_path):
    """Same settings but another calibration draw (e.g. a calibration source whose content changed): the
    finished cells were pruned with other samples, so resuming into them would mix two runs."""
    import json

    config = small_config(tmp_path, pathways=["visual"], pools=["text"], tasks="digits")
    run_grid(config, show_progress=False)
    manifest = tmp_path / "grid" / "manifest.json"
    stored = json.loads(manifest.read_text())
    stored["calibration_ids"] = ["digits/0", "digits/1", "digits/2"]
    manifest.write_text(json.dumps(stored))
    with pytest.raises(GridConfigError, match="other settings.*calibration samples"):
        run_grid(config, show_progress=False)


def test_calib_seed_prunes_again_on_another_draw_with_the_same_dense_cell_and_evaluation(tmp_path, monkeypatch):
    """``calib_seed`` changes the calibration draw only: the dense cell is taken from the first grid, the
    evaluation keeps ``seed``, and the samples are those a seeded draw from the bundled pool gives."""
    import random

    from probe.data.calibration import CalibrationSpec, load_samples

    first = small_config(tmp_path, grid="table2", methods=["wanda"], settings=["0.5"], tasks="digits",
                         out=str(tmp_path / "first"))
    run_grid(first, show_progress=False)
    seeds = []
    real = grid_cell.evaluate_with_items
    monkeypatch.setattr(grid_cell, "evaluate_with_items",
                        lambda *args, **kwargs: seeds.append(kwargs["seed"]) or real(*args, **kwargs))
    second = small_config(tmp_path, grid="table2", methods=["wanda"], settings=["0.5"], tasks="digits",
                          calib_seed=1, dense_from=str(tmp_path / "first"), out=str(tmp_path / "second"))
    run_grid(second, show_progress=False)
    assert seeds == [0]  # the wanda cell only, evaluated with the grid's seed

    def drawn(folder):
        record = json.loads(grid_module.cell_path(tmp_path / folder, "wanda/50%").read_text())
        return record["calibration"]["sample_ids"]

    pool = load_samples(CalibrationSpec())
    assert drawn("first") == [s.sample_id for s in random.Random(0).sample(pool, 3)]
    assert drawn("second") == [s.sample_id for s in random.Random(1).sample(pool, 3)]
    assert drawn("first") != drawn("second")
    dense = "items/dense.csv"
    assert (tmp_path / "second" / dense).read_text() == (tmp_path / "first" / dense).read_text()
    with pytest.raises(GridConfigError, match="other settings.*calib_seed"):
        run_grid(small_config(tmp_path, grid="table2", methods=["wanda"], settings=["0.5"], tasks="digits",
                              calib_seed=2, out=str(tmp_path / "second")), show_progress=False)


def test_calib_seeds_prune_each_cell_once_per_draw_against_one_dense_cell(tmp_path, monkeypatch):
    """Calibration draws as an axis: a cell that uses calibration is pruned once per draw (magnitude once),
    the dense cell is scored once, and the tables read the draws of a cell as one row."""
    import random

    from probe.data.calibration import CalibrationSpec, load_samples

    scored = []
    real = grid_cell.evaluate_with_items
    monkeypatch.setattr(grid_cell, "evaluate_with_items",
                        lambda *args, **kwargs: scored.append(1) or real(*args, **kwargs))
    config = small_config(tmp_path, grid="table2", methods=["magnitude", "wanda"], settings=["0.5"], tasks="digits",
                          calib_seeds=[0, 2])
    results = run_grid(config, show_progress=False)
    cells_run = list(dict.fromkeys(results.cell))
    assert cells_run == ["dense", "magnitude/50%", "wanda/50%", "wanda/50%@calib2"]
    assert len(scored) == 4  # one task, each cell scored once
    seeds = results.groupby("cell", sort=False).calib_seed.first()
    assert pd.isna(seeds["dense"]) and pd.isna(seeds["magnitude/50%"])  # no calibration: the same in any draw
    assert (seeds["wanda/50%"], seeds["wanda/50%@calib2"]) == (0, 2)
    pool = load_samples(CalibrationSpec())
    for cell, seed in (("wanda/50%", 0), ("wanda/50%@calib2", 2)):
        record = json.loads(grid_module.cell_path(tmp_path / "grid", cell).read_text())
        assert record["calibration"]["seed"] == seed
        assert record["calibration"]["sample_ids"] == [s.sample_id for s in random.Random(seed).sample(pool, 3)]
    manifest = json.loads((tmp_path / "grid" / "manifest.json").read_text())
    assert manifest["calibration_draws"]["2"] == [s.sample_id for s in random.Random(2).sample(pool, 3)]
    from analysis.tables import write_grid_table

    markdown = write_grid_table(results, tmp_path / "grid", "table2")
    wanda = next(line for line in markdown.splitlines() if line.startswith("| 50% | wanda |"))
    assert "| 2 [" in wanda  # two draws and the range of their retentions
    assert (tmp_path / "grid" / "table2_calib0.md").is_file() and (tmp_path / "grid" / "table2_calib2.md").is_file()
    with pytest.raises(GridConfigError, match="calib_seed .* or calib_seeds .*, not both"):
        small_config(tmp_path, calib_seed=1, calib_seeds=[0, 1])
    with pytest.raises(GridConfigError, match="names the draw 1 twice"):
        small_config(tmp_path, calib_seeds=[0, 1, 1])


def test_a_grid_adds_calibration_draws_after_its_own(tmp_path):
    """A finished grid of one draw takes more draws later: only the new draws' cells run."""
    config = small_config(tmp_path, pathways=["visual"], pools=["text"], tasks="digits")
    run_grid(config, show_progress=False)
    before = (tmp_path / "grid" / "items" / "visual_text_0_5.csv").read_text()
    results = run_grid(small_config(tmp_path, pathways=["visual"], pools=["text"], tasks="digits",
                                    calib_seeds=[0, 1]), show_progress=False)
    assert list(dict.fromkeys(results.cell)) == ["dense", "visual/text/0.5", "visual/text/0.5@calib1"]
    assert (tmp_path / "grid" / "items" / "visual_text_0_5.csv").read_text() == before
    assert (tmp_path / "grid" / "masks" / "visual-text-0.5-calib1.npz").is_file()
    with pytest.raises(GridConfigError, match=r"calib_seeds \[0, 1\] there, \[1, 0\] here"):
        run_grid(small_config(tmp_path, pathways=["visual"], pools=["text"], tasks="digits", calib_seeds=[1, 0]),
                 show_progress=False)


def _plain_answer_log_probs(model, item):
    """Log-probabilities of the answer's tokens from a plain forward, each from the position before it."""
    import torch

    with torch.no_grad():
        logits = model(**item.inputs).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[item.start - 1:item.end - 1]


def test_the_proxy_metric_is_the_kl_from_the_dense_model_on_held_out_answers(tmp_path, monkeypatch):
    """metrics: [tasks, kl] scores every cell by both; the pruned cell's KL and NLL equal a plain computation
    on the same weights (pruned again outside the grid), the dense cell's KL is 0 and comes from the dense
    answers kept for the comparison (no second forward pass)."""
    import torch.nn.functional as F

    from probe.calibration.calibrate import capture_calibration
    from probe.data.calibration import select
    from probe.data.heldout import heldout_image_samples, heldout_text_samples
    from probe.evaluation import divergence
    from probe.evaluation.divergence import proxy_items
    from probe.models.loading import load_model
    from probe.pruning.engine import prune

    config = small_config(tmp_path, grid="table2", methods=["wanda"], settings=["0.5"], tasks="digits",
                          metrics=["tasks", "kl"], proxy_samples=2)
    forwards = []
    real = divergence.answer_log_probs
    monkeypatch.setattr(divergence, "answer_log_probs", lambda model, item: forwards.append(1) or real(model, item))
    run_grid(config, show_progress=False)
    assert len(forwards) == 2 * 4  # 4 held-out samples: the dense answers, then the pruned cell
    proxy = pd.read_csv(tmp_path / "grid" / "proxy.csv")
    assert set(proxy.cell) == {"dense", "wanda/50%"} and set(pd.read_csv(tmp_path / "grid" / "results.csv").cell) == {
        "dense", "wanda/50%"}
    per_sample = pd.read_csv(grid_module.cell_path(tmp_path / "grid", "wanda/50%", "proxy", ".csv"))
    dense_rows = pd.read_csv(grid_module.cell_path(tmp_path / "grid", "dense", "proxy", ".csv"))
    assert (dense_rows.kl == 0).all()
    base = load_model("tiny:llava_next")
    pruned = load_model("tiny:llava_next")
    selected = select(config.calibration())
    captured = capture_calibration(pruned, selected, show_progress=False)
    prune(pruned.model, pruned.adapter, captured, config.prune_config("wanda", 0.5), show_progress=False)
    drawn = {s.sample_id for s in selected.samples}
    items = proxy_items(base.adapter, base.processor, heldout_image_samples(config.calibration(), 2, 0, drawn),
                        heldout_text_samples(2, 0))
    assert list(per_sample.sample_id) == [item.sample_id for item in items]
    assert list(per_sample.group) == ["image", "image", "text", "text"]
    for item, row in zip(items, per_sample.itertuples()):
        dense, ours = _plain_answer_log_probs(base.model, item), _plain_answer_log_probs(pruned.model, item)
        kl = F.kl_div(ours, dense, log_target=True, reduction="none").sum(-1).mean()
        nll = F.cross_entropy(ours, item.inputs["input_ids"][0, item.start:item.end])
        assert (row.kl, row.nll) == pytest.approx((float(kl), float(nll)), rel=1e-4, abs=1e-6)
        assert float(F.cross_entropy(dense, item.inputs["input_ids"][0, item.start:item.end])) == pytest.approx(
            float(dense_rows.nll[row.Index]), rel=1e-4)
    summary = proxy[(proxy.cell == "wanda/50%") & (proxy.group == "image") & (proxy.metric == "kl")].iloc[0]
    image = per_sample[per_sample.group == "image"].kl
    assert (summary.value, summary.stderr) == pytest.approx((image.mean(), image.std(ddof=1) / 2 ** 0.5))
    assert summary.value > 0
    from analysis.tables import write_grid_table

    markdown = write_grid_table(pd.read_csv(tmp_path / "grid" / "results.csv"), tmp_path / "grid", "table2")
    assert "kl image" in (tmp_path / "grid" / "table2_proxy.md").read_text()
    assert "Spearman" in markdown


def test_a_grid_adds_the_proxy_metric_later_and_a_proxy_only_grid_scores_no_task(tmp_path, monkeypatch):
    config = small_config(tmp_path, pathways=["visual"], pools=["text"], tasks="digits")
    run_grid(config, show_progress=False)
    first_records = {p.name: p.read_text() for p in (tmp_path / "grid" / "cells").glob("*.json")}
    scored = []
    real = grid_cell.evaluate_with_items
    monkeypatch.setattr(grid_cell, "evaluate_with_items",
                        lambda *args, **kwargs: scored.append(1) or real(*args, **kwargs))
    run_grid(small_config(tmp_path, pathways=["visual"], pools=["text"], tasks="digits", metrics=["tasks", "kl"],
                          proxy_samples=2), show_progress=False)
    assert scored == []  # the task scores were kept; only the proxy ran
    proxy = pd.read_csv(tmp_path / "grid" / "proxy.csv")
    assert set(proxy.cell) == {"dense", "visual/text/0.5"}
    for cell in ("dense", "visual/text/0.5"):  # pruned again for the proxy: the same weights, the first record
        record = json.loads(grid_module.cell_path(tmp_path / "grid", cell).read_text())
        assert set(proxy[proxy.cell == cell].weights_fingerprint) == {record["context"]["weights_fingerprint"]}
    assert {p.name: p.read_text() for p in (tmp_path / "grid" / "cells").glob("*.json")} == first_records
    with pytest.raises(GridConfigError, match="metrics may only be added"):
        run_grid(small_config(tmp_path, pathways=["visual"], pools=["text"], tasks="digits", metrics=["kl"],
                              proxy_samples=2), show_progress=False)
    only = small_config(tmp_path, pathways=["visual"], pools=["text"], tasks="digits", metrics=["kl"],
                        proxy_samples=2, out=str(tmp_path / "proxy-only"))
    results = run_grid(only, show_progress=False)
    assert scored == [] and results.empty and not (tmp_path / "proxy-only" / "results.csv").exists()
    from analysis.tables import write_grid_table

    assert "kl image" in write_grid_table(results, tmp_path / "proxy-only", "table1")
    with pytest.raises(GridConfigError, match="metrics: unknown 'ppl'"):
        small_config(tmp_path, metrics=["ppl"])
    with pytest.raises(GridConfigError, match="kl compares whole-model answers without token pruning"):
        small_config(tmp_path, grid="table2", metrics=["kl"], token_methods=["none", "fastv"])


def test_a_fixed_budget_cell_needs_plain_atv_in_the_grid(tmp_path):
    with pytest.raises(GridConfigError, match="add atv to methods"):
        small_config(tmp_path, grid="table2", methods=["wanda", "atv(budget=fixed)"])


def test_token_methods_are_a_grid_axis(tmp_path):
    config = small_config(tmp_path, grid="table2", methods=["wanda", {"tokens": "kept", "scorer": "wanda"}],
                          settings=["0.5"], tasks="digits", token_methods=["none", "fastv(k=1, ratio=0.5)"])
    results = run_grid(config, show_progress=False, log_samples=True).set_index("cell")
    fastv = "fastv(k=1, ratio=0.5)"
    import json

    from probe.experiments.grid import cell_path

    records = [json.loads(line) for line in
               cell_path(tmp_path / "grid", f"dense/-/{fastv}", "samples", ".tokens.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["alive_visual"][0] > r["alive_visual"][-1] > 0 for r in records)
    assert not cell_path(tmp_path / "grid", "dense", "samples", ".tokens.jsonl").exists()
    assert list(results.index) == ["dense", f"dense/-/{fastv}", "wanda/50%", f"wanda/50%/{fastv}",
                                   f"kept+wanda+uniform/50%/{fastv}"]
    assert results.loc["wanda/50%", "token_pruning"] == "none" and pd.isna(results.loc["wanda/50%", "visual_tokens"])
    visual = results.loc[f"dense/-/{fastv}", "visual_tokens"]
    assert visual > 0 and visual == results.loc[f"wanda/50%/{fastv}", "visual_tokens"]  # same count dropped
    table = table2(results.reset_index())
    assert ("-", f"dense with {fastv}") in table.index and ("50%", f"wanda with {fastv}") in table.index
    flops = results.groupby(level=0)[["gflops", "gflops_sparse"]].first()
    assert flops.loc[f"dense/-/{fastv}", "gflops"] < flops.loc["dense", "gflops"]  # fewer tokens, fewer FLOPs
    assert flops.loc["wanda/50%", "gflops"] == flops.loc["dense", "gflops"]  # dense kernels multiply zeros
    assert flops.loc["wanda/50%", "gflops_sparse"] < flops.loc["dense", "gflops_sparse"]
    from analysis.figures import flops_points
    from probe.cli import main

    points = flops_points(results.reset_index()).set_index("cell")
    assert points.loc[f"dense/-/{fastv}", "kind"] == "tokens" and points.loc["wanda/50%", "kind"] == "weights"
    assert points.loc[f"wanda/50%/{fastv}", "kind"] == "joint"
    from analysis.figures import plot_retention_vs_flops
    from analysis.results import load_items

    fig = plot_retention_vs_flops(results.reset_index(), tmp_path / "flops", items=load_items(tmp_path / "grid"))
    assert len(fig.axes[0].texts) == len(points)  # every cell numbered
    assert main(["plot", "flops", str(tmp_path / "grid")]) == 0
    assert (tmp_path / "grid" / "figures" / "flops.png").is_file()
    with pytest.raises(GridConfigError, match="token_methods names none"):
        small_config(tmp_path, grid="table2", methods=[{"tokens": "kept"}], token_methods=["none"])
    with pytest.raises(GridConfigError, match="token_methods: unknown token-pruning method 'fast'"):
        small_config(tmp_path, grid="table2", token_methods=["fast"])


def test_cell_records_name_the_machine_and_the_scored_weights(tmp_path):
    import torch

    from probe.models.loading import load_model

    config = small_config(tmp_path, grid="table2", tasks="digits", settings=["0.5"], methods=["magnitude"])
    run_grid(config, show_progress=False)
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "grid" / "cells").glob("*.json")}
    dense, pruned = records["dense"]["context"], records["magnitude_50"]["context"]
    assert dense["weights_fingerprint"] == weights_fingerprint(load_model("tiny:llava_next").model)
    assert pruned["weights_fingerprint"] != dense["weights_fingerprint"]
    assert pruned["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert pruned["machine"]["torch_threads"] == torch.get_num_threads()
    assert dense["machine"] == pruned["machine"]
    # dense cells too name their dtype, device and code revision (this checkout's commit)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    for record in records.values():
        assert (record["dtype"], record["device"]) == ("float32", "cpu")
        assert record["code"]["commit"] == head and isinstance(record["code"]["dirty"], bool)
    manifest = json.loads((tmp_path / "grid" / "manifest.json").read_text())
    assert manifest["code"]["commit"] == head and manifest["machine"]["cpu"] == dense["machine"]["cpu"]


def test_the_machine_is_named_from_the_cpu_description(tmp_path):
    import platform

    from probe.models.devices import machine_description

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: avx2\n\n"
                       "processor\t: 1\nmodel name\t: Example CPU 9000\nflags\t\t: avx2\n")
    assert machine_description("cpu", cpuinfo)["cpu"] == "Example CPU 9000"
    assert machine_description("cpu", cpuinfo)["cpu_flags"] == ["avx2"]
    assert "gpu" not in machine_description("cpu", cpuinfo)
    assert machine_description("cpu", tmp_path / "absent")["cpu"] == (platform.processor() or platform.machine())


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_grid_config_is_valid(path):
    config = GridConfig.from_yaml(path)
    assert cells(config)[0].cell_id == "dense"
    if path.name == "table1_large_draws.yaml":  # the stored Table 1 grid, extended by two more draws
        ids = [c.cell_id for c in cells(config)]
        assert len(ids) == 1 + 3 * 6 and "visual/text/0.5" in ids and "visual/text/0.5@calib2" in ids
