"""A grid that says what it does: the banner, a line per cell with the time left, --list-cells, --dry-run
and command-line overrides of the config."""

import logging

import pytest

from probe.experiments.grid.status import CellClock, banner, duration


def test_durations_read_as_hours_minutes_and_seconds():
    assert [duration(s) for s in (0, 12.4, 185, 3725, 36000)] == ["0s", "12s", "3m 05s", "1h 02m", "10h 00m"]


def test_the_banner_counts_the_cells_done_and_to_do():
    line = banner("table1", "reference", "runs/g", ["dense", "a", "b"], {"dense"}, ["a", "b"])
    assert line == "probe grid table1 on reference: 3 cells, 1 done, 2 to do, writing to runs/g"
    assert banner("table1", "m", "o", ["dense"], {"dense"}, []).endswith("1 done, 0 to do, writing to o; nothing to do")


def test_the_time_left_is_the_mean_of_the_pruned_cells_so_far_times_the_cells_left():
    ticks = iter([0.0, 10.0, 10.0, 130.0, 130.0, 370.0, 370.0])
    clock = CellClock(["dense", "a", "b", "c"], now=lambda: next(ticks))
    clock.start()
    assert clock.finished("dense") == "[1/4] dense finished in 10s; 3 to do, about 30s left"  # only dense so far
    assert clock.finished("a") == "[2/4] a finished in 2m 00s; 2 to do, about 4m 00s left"  # dense not counted
    assert clock.finished("b") == "[3/4] b finished in 4m 00s; 1 to do, about 3m 00s left"  # mean of 2m and 4m


GRID = ("model: tiny:llava\ntasks: digits\nlimit: 2\nnsamples: 2\nsparsities: [0.5]\npathways: [text]\n"
        "pools: [text]\n")


def test_list_cells_and_dry_run_write_nothing(tmp_path, capsys):
    from probe.cli import main

    config = tmp_path / "g.yaml"
    config.write_text(GRID)
    out = tmp_path / "grid"
    assert main(["grid", str(config), "--out", str(out), "--list-cells"]) == 0
    assert capsys.readouterr().out.splitlines() == ["to do  dense", "to do  text/text/0.5"]
    assert main(["grid", str(config), "--out", str(out), "--dry-run", "--sparsity", "0.5,0.6", "--calib-seeds",
                 "0,1", "--limit", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"probe grid table1 on tiny:llava: 5 cells, 0 done, 5 to do, writing to {out}"
    assert "2 samples from bundled in 2 draw(s)" in printed[1]
    assert printed[2:] == ["to do  dense", "to do  text/text/0.5", "to do  text/text/0.6",
                           "to do  text/text/0.5@calib1", "to do  text/text/0.6@calib1",
                           "dry run: every check passed; nothing was written"]
    assert not out.exists()
    assert main(["grid", str(config), "--out", str(out), "--dry-run", "--tasks", "no_such_task"]) == 2
    assert "no_such_task" in capsys.readouterr().err


def test_a_grid_run_prints_its_banner_and_a_line_per_cell(tmp_path, capsys, caplog):
    from probe.cli import main

    config = tmp_path / "g.yaml"
    config.write_text(GRID)
    out = tmp_path / "grid"
    with caplog.at_level(logging.INFO, logger="probe"):
        assert main(["grid", str(config), "--out", str(out), "--no-progress"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("probe.experiments.grid")]
    assert lines[0] == f"probe grid table1 on tiny:llava: 2 cells, 0 done, 2 to do, writing to {out}"
    assert lines[-2].startswith("[1/2] dense finished in ") and "1 to do, about" in lines[-2]
    assert lines[-1].startswith("[2/2] text/text/0.5 finished in ") and lines[-1].endswith("the grid is done")
    capsys.readouterr()
    assert main(["grid", str(config), "--out", str(out), "--list-cells"]) == 0
    assert capsys.readouterr().out.splitlines() == ["done   dense", "done   text/text/0.5"]


def test_overrides_are_checked_like_the_config():
    from probe.cli import main

    with pytest.raises(SystemExit):
        main(["grid", "--sparsity", "half", "--list-cells"])
    with pytest.raises(SystemExit):
        main(["grid", "--calib-seeds", "0,x", "--list-cells"])
    assert main(["grid", "--metrics", "ppl", "--list-cells"]) == 2
