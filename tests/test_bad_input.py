"""Bad input and interruptions: one line naming the problem (exit 2), raised before model work, and
nothing half-written; Ctrl-C says what was kept (exit 130)."""

import errno
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from probe import manifest
from probe.cli import main
from probe.errors import ProbeError

OUT = "--out"


def fails_with(capsys, argv, message):
    """Run the CLI; it must exit 2 with exactly one line on stderr containing ``message``, no traceback."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert message in err, err


def test_devices_this_machine_lacks(tmp_path, capsys):
    out = str(tmp_path / "o")
    fails_with(capsys, ["prune", "tiny:llava", "--device", "cuda:99", OUT, out], "'cuda:99'")
    fails_with(capsys, ["prune", "tiny:llava", "--device", "gpu", OUT, out], "invalid device 'gpu'")
    fails_with(capsys, ["prune", "tiny:llava", "--offload", "--run-device", "cuda:99", OUT, out], "'cuda:99'")
    fails_with(capsys, ["eval", "tiny:llava", "--device", "cuda:99", "--tasks", "digits"], "'cuda:99'")
    fails_with(capsys, ["eval", "tiny:llava", "--device", "quantum", "--tasks", "digits"], "invalid device")
    assert not (tmp_path / "o").exists()


def test_half_precision_on_a_cpu_that_emulates_it_is_warned_about(tmp_path, monkeypatch, caplog):
    import torch

    from probe import devices
    from probe.loading import load_model

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2 fma\n")
    assert devices.cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "fma"}
    assert devices.cpu_flags(tmp_path / "absent") is None
    avx2, bf16 = {"avx2", "fma"}, {"avx2", "avx512_bf16"}
    warning = devices.slow_dtype_warning("cpu", torch.bfloat16, avx2)
    assert "bfloat16 on this CPU (no avx512_bf16 or amx_bf16)" in warning
    assert "float16" in devices.slow_dtype_warning("cpu", torch.float16, bf16)
    assert devices.slow_dtype_warning("cpu", torch.bfloat16, bf16) is None
    assert devices.slow_dtype_warning("cpu", torch.bfloat16, {"amx_bf16"}) is None
    assert devices.slow_dtype_warning("cpu", torch.float32, avx2) is None
    assert devices.slow_dtype_warning("cuda", torch.bfloat16, avx2) is None
    assert devices.slow_dtype_warning("cpu", torch.bfloat16, None) is None

    monkeypatch.setattr(devices, "cpu_flags", lambda: avx2)
    with caplog.at_level("WARNING", logger="probe.devices"):
        load_model("tiny:llava", dtype=torch.bfloat16)
        load_model("tiny:llava")
    assert [r.getMessage().split(" on ")[0] for r in caplog.records] == ["bfloat16"]


def test_output_folders_that_cannot_be_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    args = ["prune", "tiny:llava", "--nsamples", "2", "--no-progress"]
    fails_with(capsys, [*args, OUT, "."], "current folder")
    fails_with(capsys, [*args, OUT, ".."], "current folder")
    fails_with(capsys, [*args, OUT, "a-file"], "existing file")
    fails_with(capsys, [*args, OUT, "a-file/sub"], "is a file, not a folder")
    fails_with(capsys, [*args, OUT, "notes"], "holding other files")
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"

    real_mkdtemp = manifest.tempfile.mkdtemp

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(manifest.tempfile, "mkdtemp", read_only)
    fails_with(capsys, [*args, OUT, "new"], "Read-only file system")
    fails_with(capsys, ["eval", "tiny:llava", "--tasks", "digits", OUT, "scores.csv"], "Read-only file system")
    monkeypatch.setattr(manifest.tempfile, "mkdtemp", real_mkdtemp)
    monkeypatch.setattr(manifest.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**6, 10**6 - 10, 10))
    fails_with(capsys, [*args, OUT, "new"], "10 B are free")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "notes"]


def test_model_folders_that_are_not_models(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "untyped").mkdir()
    (tmp_path / "untyped" / "config.json").write_text('{"hidden_size": 8}')
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "alien").mkdir()
    (tmp_path / "alien" / "config.json").write_text('{"model_type": "bert"}')
    out = str(tmp_path / "o")
    fails_with(capsys, ["prune", str(tmp_path / "empty"), OUT, out], "has no config.json")
    fails_with(capsys, ["prune", str(tmp_path / "untyped"), OUT, out], "names no model_type")
    fails_with(capsys, ["prune", str(tmp_path / "broken"), OUT, out], "not valid JSON")
    fails_with(capsys, ["prune", str(tmp_path / "alien"), OUT, out], "unknown model family 'bert'")
    fails_with(capsys, ["eval", str(tmp_path / "empty"), "--tasks", "digits"], "has no config.json")


def test_eval_limits_and_dense_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "tiny:llava", "--limit", "0"])
    assert exit_info.value.code == 2 and "--limit: must be at least 1" in capsys.readouterr().err

    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x00\xff\xfe\x00")
    columns = tmp_path / "columns.csv"
    columns.write_text("a,b\n1,2\n")
    other = tmp_path / "other.csv"
    other.write_text("task,metric,score,n\nquote_completion,acc,0.5,3\n")
    base = ["eval", "tiny:llava", "--tasks", "digits", "--limit", "3", "--no-progress", "--dense"]
    fails_with(capsys, [*base, str(binary)], "not a CSV of scores")
    fails_with(capsys, [*base, str(columns)], "lacks the column(s) task, metric, score, n")
    fails_with(capsys, [*base, str(other)], "no dense score for digits (it holds: quote_completion)")
    fails_with(capsys, [*base, str(tmp_path / "missing.csv")], "not found")
    fails_with(capsys, ["eval", "tiny:llava", "--tasks", "digits", "--out", str(tmp_path)], "is a folder")


def test_retention_refuses_other_items_and_never_drops_a_task(tmp_path, capsys):
    dense = tmp_path / "dense.csv"
    dense.write_text("task,metric,score,n\ndigits,exact_match,0.5,5\n")
    fails_with(capsys, ["eval", "tiny:llava", "--tasks", "digits", "--limit", "3", "--no-progress", "--dense",
                        str(dense)], "digits: 3 items here but 5 in the dense run")

    from analysis.tables import retention

    # a task whose dense score is 0 makes the mean undefined instead of silently leaving it out
    assert pd.isna(retention(pd.Series({"a": 0.5, "b": 0.2}), pd.Series({"a": 0.5, "b": 0.0})))
    assert retention(pd.Series({"a": 0.5}), pd.Series({"a": 0.5, "b": 0.4})) == pytest.approx(100.0)
    with pytest.raises(ProbeError, match="missing: c"):
        retention(pd.Series({"a": 0.5, "c": 0.2}), pd.Series({"a": 0.5}))


GRID_YAML_ERRORS = [
    ("grid: [table1\n", "not valid YAML (line 2)"),
    ("- nsamples\n- 8\n", "should hold a mapping of settings"),
    ("nsamples: many\n", "'nsamples' should be a valid integer"),
    ("limit: lots\n", "'limit' should be a valid integer"),
    ("sparsities: half\n", "'sparsities' should be a valid list"),
    ("sparsities: 0.5\n", "'sparsities' should be a valid list"),
    ("settings: 0.5\n", "'settings' should be a valid list"),
    ("tasks: [digits]\n", "'tasks' should be a valid string"),
    ("methods: wanda\n", "'methods' should be a valid list"),
    ("grid: table2\nmethods: ['atv(alpha=x)']\n",
     "methods[0] ('atv(alpha=x)'): tokens 'atv' setting 'alpha' should be a valid number, got 'x'"),
    ("grid: table2\nmethods: ['atv(seed=0.5)']\n", "tokens 'atv' setting 'seed' should be a valid integer"),
    ("grid: table2\nmethods: [{method: atv, alpha: 2, lam: 0.1}]\n",
     "methods[0] ({'method': 'atv', 'alpha': 2, 'lam': 0.1}): unknown setting 'lam'"),
    ("grid: table2\nmethods: [{scorer: obd}]\n", "unknown scorer 'obd'; choose from magnitude, wanda"),
    ("device: cuda:99\n", "'cuda:99'"),
    ("sparsitys: [0.5]\n", "unknown grid setting(s) sparsitys"),
]


@pytest.mark.parametrize(("text", "message"), GRID_YAML_ERRORS)
def test_grid_yaml_errors(tmp_path, capsys, text, message):
    config = tmp_path / "grid.yaml"
    config.write_text(text)
    fails_with(capsys, ["grid", str(config), OUT, str(tmp_path / "out")], message)
    assert not (tmp_path / "out").exists()


def test_plots_from_the_wrong_records(tmp_path, capsys):
    table1 = tmp_path / "table1"
    table1.mkdir()
    rows = [{"cell": "dense", "pathway": "dense", "pool": "-", "method": "-", "setting": "-", "task": "digits",
             "score": 0.5},
            {"cell": "text/text/0.5", "pathway": "text", "pool": "text", "method": "wanda", "setting": "50%",
             "task": "digits", "score": 0.4}]
    pd.DataFrame(rows).to_csv(table1 / "results.csv", index=False)
    fails_with(capsys, ["plot", "alpha", str(table1)], "no atv(alpha=...) cells")
    fails_with(capsys, ["plot", "text-ratio", str(table1)], "no atv(text_ratio=...) cells")
    fails_with(capsys, ["plot", "iou", str(table1)], "no mask IoU")
    (table1 / "mask_iou.csv").write_text("pathway,sparsity,linear,iou\n")
    fails_with(capsys, ["plot", "iou", str(table1)], "holds no IoU records")
    fails_with(capsys, ["plot", "drift", str(table1)], "no pruning record")
    assert not (table1 / "figures").exists()


def test_interrupted_prune_writes_nothing_and_says_so(tmp_path, capsys, monkeypatch):
    import probe.api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(probe.api, "prune", interrupted)
    out = tmp_path / "o"
    assert main(["prune", "tiny:llava", "--nsamples", "2", "--no-progress", OUT, str(out)]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing was written to" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_interrupted_grid_keeps_finished_cells_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    from probe import grid as grid_module

    real = grid_module.evaluate_with_items
    calls = []

    def dies_in_second_cell(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(grid_module, "evaluate_with_items", dies_in_second_cell)
    config = tmp_path / "g.yaml"
    config.write_text("model: tiny:llava\ntasks: digits\nlimit: 2\nnsamples: 2\nsparsities: [0.5]\n"
                      "pathways: [text]\npools: [text]\n")
    out = tmp_path / "grid"
    assert main(["grid", str(config), OUT, str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run the same command again to resume" in err
    assert set(pd.read_csv(out / "results.csv").cell) == {"dense"}


def _fails_while_writing(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"partial")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_checkpoint_write_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    """A full disk (or a permission error) while the checkpoint is written: no partial output folder, no
    temporary folder, a checkpoint that was there before is kept, and one line says why."""
    from transformers import PreTrainedModel

    out = tmp_path / "o"
    argv = ["prune", "tiny:llava", "--method", "magnitude", "--no-progress", OUT, str(out)]
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", lambda self, folder, **kw: _fails_while_writing(folder))
    fails_with(capsys, argv, "No space left on device")
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    assert main(argv) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def no_permission(self, folder, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", no_permission)
    fails_with(capsys, argv, "Permission denied")
    assert [p.name for p in tmp_path.iterdir()] == ["o"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_outputs_follow_the_users_umask(tmp_path):
    """Atomic writes go through mkstemp/mkdtemp (0600/0700); the results must be readable like any file
    the user writes, so collaborators on a shared cluster can read them."""
    old = os.umask(0o022)
    try:
        manifest.write_text_atomic(tmp_path / "scores.csv", "a,b\n")
        manifest.write_dir_atomic(tmp_path / "ckpt", lambda folder: (folder / "x.json").write_text("{}"))
        os.umask(0o027)
        manifest.write_text_atomic(tmp_path / "group.csv", "a,b\n")
    finally:
        os.umask(old)
    assert (tmp_path / "scores.csv").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "ckpt" / "x.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "group.csv").stat().st_mode & 0o777 == 0o640


def test_a_rewritten_output_folder_is_replaced_whole(tmp_path):
    out = tmp_path / "ckpt"
    manifest.write_dir_atomic(out, lambda folder: (folder / "old.json").write_text("{}"))
    manifest.write_dir_atomic(out, lambda folder: (folder / "new.json").write_text("{}"))
    assert [p.name for p in out.iterdir()] == ["new.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # neither the old folder nor a temporary one
