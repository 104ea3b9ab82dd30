"""Bad input and interruptions: one line naming the problem (exit 2), raised before model work, and
nothing half-written; Ctrl-C says what was kept (exit 130)."""

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from probe.cli import main
from probe.core import manifest
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

    from probe.models import devices
    from probe.models.loading import load_model

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
    with caplog.at_level("WARNING", logger="probe.models.devices"):
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
    ("", "is empty; a grid config names at least its grid"),
    ("# only a comment\n", "is empty; a grid config names at least its grid"),
    ("limit: 0\n", "limit must be at least 1 item per task"),
    ("grid: table2\nmethods: []\n", "methods is empty: a table2 grid needs at least one"),
    ("grid: table2\nsettings: []\n", "settings is empty: a table2 grid needs at least one"),
    ("sparsities: []\n", "sparsities is empty: a table1 grid needs at least one"),
    ("grid: table2\nsettings: []\nmethods: [{scorer: wanda, sed: 3}]\n", "settings is empty"),
    ("methods: [{scorer: wanda, sed: 3}]\n", "unknown setting 'sed'"),
    ("cluster: {gpus_per_cell: -1}\n", "cluster: gpus_per_cell should be a whole number of at least 0, got -1"),
    ("cluster: {max_parallel: lots}\n", "cluster: max_parallel should be a whole number of at least 0, got 'lots'"),
    ("cluster: {nodes: 2}\n", "cluster: unknown cluster setting(s) nodes"),
    ("nsamples: 4\nlimit: 2\nnsamples: 8\n", "the key 'nsamples' appears twice in one mapping (line 3)"),
    ("grid: table2\nmethods: [{method: atv, alpha: 1, alpha: 2}]\n", "the key 'alpha' appears twice"),
    ("model: tiny:nope\n", "no tiny model for 'nope'"),
    ("dtype: float8\n", "unknown dtype 'float8'"),
    ("model: tiny:llava\ngrid: table2\ntoken_methods: ['fastv(k=99)']\n",
     "token_methods: 'fastv(k=99)' cannot run on tiny:llava: fastv prunes before layer 99"),
    ("model: tiny:qwen3_vl\ngrid: table2\ntoken_methods: [none, vitcop-1/9]\n",
     "token_methods: 'vitcop-1/9' cannot run on tiny:qwen3_vl: token pruning does not support qwen3_vl"),
    ("grid: table2\ntoken_methods: ['']\n", "the token-pruning method is empty"),
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
    from probe.experiments.grid import cell as grid_cell

    real = grid_cell.evaluate_with_items
    calls = []

    def dies_in_second_cell(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(grid_cell, "evaluate_with_items", dies_in_second_cell)
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


def test_every_file_of_a_pruned_checkpoint_follows_the_umask(tmp_path):
    """safetensors creates model.safetensors 0600 whatever the umask; the checkpoint's files must not."""
    old = os.umask(0o022)
    try:
        assert main(["prune", "tiny:llava", "--nsamples", "2", "--no-progress", OUT, str(tmp_path / "ck")]) == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "ck").rglob("*") if p.is_file()]
    assert "model.safetensors" in {p.name for p in files}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o644" for p in files}
    folders = [tmp_path / "ck", *(p for p in (tmp_path / "ck").rglob("*") if p.is_dir())]
    assert all(p.stat().st_mode & 0o777 == 0o755 for p in folders)


def test_names_too_long_for_the_file_system(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    long = "n" * 300
    fails_with(capsys, ["prune", "tiny:llava", "--nsamples", "2", OUT, long], f"the name {long[:24]}... is 300 bytes")
    fails_with(capsys, ["prune", "tiny:llava", OUT, f"runs/{long}/ckpt"], "is 300 bytes")
    # the name itself fits, but not with the temporary sibling an atomic write makes first
    fails_with(capsys, ["prune", "tiny:llava", OUT, "m" * 250], "at most 215 fit on this file system")
    deep = "/".join(["d" * 200] * 25)
    fails_with(capsys, ["prune", "tiny:llava", OUT, deep], "bytes and this file system allows")
    fails_with(capsys, ["eval", "tiny:llava", "--tasks", "digits", OUT, f"{long}.csv"], "is 304 bytes")
    grid = tmp_path / "g.yaml"
    grid.write_text("model: tiny:llava\nnsamples: 2\n")
    fails_with(capsys, ["grid", str(grid), OUT, long], "is 300 bytes")
    fails_with(capsys, ["plot", "alpha", str(tmp_path), OUT, long], "is 304 bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml"]


def _tiny_checkpoint(folder: Path) -> Path:
    from probe.models.loading import load_model

    loaded = load_model("tiny:llava")
    loaded.model.save_pretrained(folder)
    loaded.processor.save_pretrained(folder)
    return folder


def test_damaged_checkpoints_and_reference_folders(tmp_path, capsys, monkeypatch):
    folder = _tiny_checkpoint(tmp_path / "ck")
    capsys.readouterr()  # the writer's progress
    weights = folder / "model.safetensors"
    whole = weights.read_bytes()
    out = str(tmp_path / "o")
    weights.write_bytes(whole[: len(whole) // 2])
    fails_with(capsys, ["prune", str(folder), "--nsamples", "2", OUT, out], "model.safetensors is truncated (")
    fails_with(capsys, ["eval", str(folder), "--tasks", "digits"], "the checkpoint is damaged; write it again")
    weights.write_bytes(b"")
    fails_with(capsys, ["prune", str(folder), OUT, out], "model.safetensors is empty (0 bytes)")
    weights.write_bytes(whole[:5])
    fails_with(capsys, ["prune", str(folder), OUT, out], "truncated (5 bytes, less than a header)")
    weights.write_bytes(whole[:8] + b"{not json" + whole[17:])
    fails_with(capsys, ["prune", str(folder), OUT, out], "its header is not JSON")
    weights.unlink()
    fails_with(capsys, ["prune", str(folder), OUT, out], "holds no weights (no .safetensors or .bin file)")
    weights.write_bytes(whole)
    (folder / "config.json").write_text('{"model_type": "llava",')
    fails_with(capsys, ["prune", str(folder), OUT, out], "config.json is not valid JSON")
    assert not Path(out).exists()

    # the same damage in the assembled reference model's folder (PROBE_REFERENCE_DIR)
    from probe.reference.build import BUILD_STAMP, SMALL, build_stamp

    reference = _tiny_checkpoint(tmp_path / "reference")
    capsys.readouterr()
    (reference / BUILD_STAMP).write_text(json.dumps(build_stamp(SMALL)))
    monkeypatch.setenv("PROBE_REFERENCE_DIR", str(reference))
    (reference / "model.safetensors").write_bytes(b"")
    fails_with(capsys, ["prune", "reference", "--nsamples", "2", OUT, out],
               "the reference model in " + str(reference) + " is damaged")
    (reference / "model.safetensors").write_bytes(whole)
    (reference / "config.json").write_text("{")
    fails_with(capsys, ["eval", "reference", "--tasks", "digits"], "config.json is not valid JSON")


def _calibration_file(folder: Path, records) -> Path:
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 10, 10)).save(folder / "red.png")
    path = folder / "calib.json"
    path.write_text(json.dumps(records))
    return path


def test_calibration_files_that_are_not_samples(tmp_path, capsys, monkeypatch):
    turns = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Red."}]
    good = {"id": "a", "image": "red.png", "conversations": turns}
    out = str(tmp_path / "o")

    def calib(name: str, records) -> list[str]:
        folder = tmp_path / name
        folder.mkdir()
        path = _calibration_file(folder, records)
        return ["prune", "tiny:llava", "--calib", str(path), "--nsamples", "1", "--no-progress", OUT, out]

    fails_with(capsys, calib("string", [{**good, "conversations": "hello"}]),
               "sample 'a': 'conversations' should be a list of turns, not a str")
    fails_with(capsys, calib("value", [{**good, "conversations": [{"from": "human", "value": 3}]}]),
               "sample 'a': turn 0's 'value' should be a string, got 3")
    fails_with(capsys, calib("turn", [{**good, "conversations": ["<image> hi"]}]),
               "turn 0 should be a mapping with 'from' and 'value', not a str")
    fails_with(capsys, calib("numbers", [1, 2, 3]), "record 0 should be a mapping with 'image' and 'conversations'")
    lines = tmp_path / "lines"
    lines.mkdir()
    _calibration_file(lines, [])
    (lines / "calib.jsonl").write_text("1\n2\n")
    fails_with(capsys, ["prune", "tiny:llava", "--calib", str(lines / "calib.jsonl"), OUT, out],
               "record 0 should be a mapping")
    latin = tmp_path / "latin.json"
    latin.write_bytes(json.dumps([good]).replace("Red", "R\u00e9d").encode("latin-1"))
    (tmp_path / "red.png").write_bytes((tmp_path / "lines" / "red.png").read_bytes())
    fails_with(capsys, ["prune", "tiny:llava", "--calib", str(latin), OUT, out], "not UTF-8 text (byte ")

    # a truncated PNG is refused even after lmms-eval turned PIL's LOAD_TRUNCATED_IMAGES on for the process
    from PIL import Image, ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as lmms-eval sets it when imported
    cut = tmp_path / "cut"
    cut.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(cut / "noise.png")
    data = (cut / "noise.png").read_bytes()
    (cut / "noise.png").write_bytes(data[: len(data) * 2 // 3])
    (cut / "calib.json").write_text(json.dumps([{**good, "image": "noise.png"}]))
    fails_with(capsys, ["prune", "tiny:llava", "--calib", str(cut / "calib.json"), "--nsamples", "1", OUT, out],
               "sample 'a': image cannot be read (image file is truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the process-wide setting is left as it was

    # hf: a name the datasets package cannot load (offline here), a folder that is not a saved dataset
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    fails_with(capsys, ["prune", "tiny:llava", "--calib", "hf:nobody/no-such-set", OUT, out],
               "hf:nobody/no-such-set: the dataset cannot be loaded")
    fails_with(capsys, ["prune", "tiny:llava", "--calib", "hf:nobody/no-such-set", "--calib-split", "test", OUT, out],
               "hf:nobody/no-such-set: the dataset cannot be loaded")
    fails_with(capsys, ["prune", "tiny:llava", "--calib", f"hf:{cut}", OUT, out],
               "is a folder but not a dataset saved with save_to_disk")
    assert not Path(out).exists()


def test_dense_files_with_scores_that_are_not_scores(tmp_path, capsys):
    base = ["eval", "tiny:llava", "--tasks", "digits", "--limit", "3", "--no-progress", "--dense"]
    header = "task,metric,score,n\n"
    cases = {"twice": ("digits,exact_match,0.5,3\ndigits,exact_match,0.4,3\n",
                       "holds 2 rows for the same task and metric (task digits"),
             "nan": ("digits,exact_match,nan,3\n", "row 2 (task digits, metric exact_match) has the score nan"),
             "empty": ("digits,exact_match,,3\n", "has the score nan"),
             "negative": ("digits,exact_match,-0.5,3\n", "has the score -0.5"),
             "infinite": ("digits,exact_match,inf,3\n", "has the score inf"),
             "torn": ("digits,exact_match,0.5,3\nquote_completion,acc,0.", "its last row (row 3) is cut off")}
    for name, (rows, message) in cases.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(header + rows)
        fails_with(capsys, [*base, str(path)], message)
    (tmp_path / "blank.csv").write_text("")
    fails_with(capsys, [*base, str(tmp_path / "blank.csv")], "is empty: it holds no scores")


def _grid_folder(folder: Path, rows: str, manifest: str = '{"config": {"grid": "table2", "model": "m"}}') -> Path:
    folder.mkdir()
    (folder / "manifest.json").write_text(manifest)
    (folder / "results.csv").write_text(rows)
    return folder


def test_tables_from_results_that_are_not_whole(tmp_path, capsys):
    header = "cell,pathway,pool,sparsity,method,setting,task,metric,score,n\n"
    dense = "dense,dense,-,0.0,-,-,digits,exact_match,0.5,4\n"
    wanda = "wanda/50%,all,-,0.5,wanda,50%,digits,exact_match,0.25,4\n"
    fails_with(capsys, ["table", str(_grid_folder(tmp_path / "empty", ""))], "results.csv is empty")
    fails_with(capsys, ["table", str(_grid_folder(tmp_path / "twice", header + dense + wanda + wanda))],
               "holds 2 rows for the same cell and task (cell wanda/50%, task digits)")
    fails_with(capsys, ["table", str(_grid_folder(tmp_path / "nan", header + dense + wanda.replace("0.25", "nan")))],
               "row 3 (cell wanda/50%, task digits) has the score nan")
    fails_with(capsys, ["table", str(_grid_folder(tmp_path / "torn", header + dense + wanda[:20]))],
               "its last row (row 3) is cut off")
    fails_with(capsys, ["table", str(_grid_folder(tmp_path / "short", header + dense[:20] + "\n" + wanda))],
               "row 2 has 6 fields where the header has 10")
    fails_with(capsys, ["table", str(_grid_folder(tmp_path / "manifest", header + dense, "{oops"))],
               "manifest.json is not a grid manifest (not valid JSON)")
    whole = _grid_folder(tmp_path / "whole", header + dense + wanda)
    assert main(["table", str(whole)]) == 0
    capsys.readouterr()
    # figures: an --out under a file, and retention against FLOPs from a grid without token methods
    (tmp_path / "a-file").write_text("x")
    fails_with(capsys, ["plot", "flops", str(whole), OUT, str(tmp_path / "a-file" / "fig")], "is a file, not a folder")
    fails_with(capsys, ["plot", "flops", str(whole)], "the grid has no cell with visual token pruning")
    assert not (whole / "figures").exists()


def test_standard_output_that_cannot_be_written(tmp_path):
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "probe.cli", "families"], stdout=full, stderr=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "probe: error: cannot write to standard output (No space left on device)"


def test_cache_folders_that_cannot_be_written(tmp_path, capsys, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("PROBE_TASKS_DIR", str(tmp_path / "a-file"))
    fails_with(capsys, ["eval", "tiny:llava", "--tasks", "digits"],
               f"the offline tasks' folder {tmp_path / 'a-file'} is a file")
    monkeypatch.setenv("PROBE_TASKS_DIR", str(tmp_path / "a-file" / "tasks"))
    fails_with(capsys, ["eval", "tiny:llava", "--tasks", "digits"], "cannot write the offline tasks into")
    # HOME under a file: the offline tasks and lmms-eval's datasets cache both live below it by default
    monkeypatch.delenv("PROBE_TASKS_DIR")
    for name in ("HF_HOME", "HF_DATASETS_CACHE", "LMMS_EVAL_DATASETS_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "a-file"))
    fails_with(capsys, ["eval", "tiny:llava", "--tasks", "digits"], "point PROBE_TASKS_DIR (or HOME) at a folder")
    from probe.evaluation.harness import check_datasets_cache

    with pytest.raises(ProbeError, match="the datasets cache .*a-file/.cache/huggingface/datasets cannot be written"):
        check_datasets_cache()


def test_options_that_would_do_nothing(tmp_path, capsys):
    out = [OUT, str(tmp_path / "o")]
    fails_with(capsys, ["prune", "tiny:llava", "--method", "atv", "--budget-from", str(tmp_path), *out],
               "--budget-from gives the total of a fixed budget; add --budget fixed")
    fails_with(capsys, ["prune", "tiny:llava", "--comp-epsilon", "0.3", *out],
               "--comp-epsilon is a setting of --comp-style")
    fails_with(capsys, ["prune", "tiny:llava", "--token-pruning", "", *out], "the token-pruning method is empty")
    fails_with(capsys, ["eval", "tiny:llava", "--token-pruning", " ", "--tasks", "digits"],
               "the token-pruning method is empty")
    fails_with(capsys, ["prune", "tiny:llava", "--device", "cpu:99", *out], "torch has one CPU device")
    fails_with(capsys, ["eval", "tiny:llava", "--device", "cpu:1", "--tasks", "digits"], "torch has one CPU device")
    fails_with(capsys, ["eval", "tiny:llava", "--offload", "--tasks", "digits"], "--offload and --run-device are "
                                                                                  "settings of probe prune")
    fails_with(capsys, ["check", "tiny:llava", "--run-device", "cpu"], "probe check runs the whole model")
    config = tmp_path / "g.yaml"
    config.write_text("model: tiny:llava\nnsamples: 2\n")
    fails_with(capsys, ["grid", str(config), "--retries", "2", *out], "--retries is a setting of cluster jobs")
    fails_with(capsys, ["grid", str(config), "--executor", "ray", "--retries", "-1", *out],
               "retries should be a whole number of at least 0, got -1")
    fails_with(capsys, ["grid", str(config), "--executor", "ray", "--gpus-per-cell", "-1", *out],
               "gpus_per_cell should be a whole number of at least 0, got -1")
    assert not (tmp_path / "o").exists()


def test_grid_output_folders_of_other_runs(tmp_path, capsys):
    config = tmp_path / "g.yaml"
    config.write_text("model: tiny:llava\nnsamples: 2\n")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    fails_with(capsys, ["grid", str(config), OUT, str(notes)], "is a folder holding other files (no manifest.json)")
    checkpoint = tmp_path / "ck"
    assert main(["prune", "tiny:llava", "--nsamples", "2", "--no-progress", OUT, str(checkpoint)]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in checkpoint.iterdir())
    fails_with(capsys, ["grid", str(config), OUT, str(checkpoint)], "holds another kind of run (its manifest.json is "
                                                                    "not a grid's, e.g. a pruned checkpoint)")
    assert sorted(p.name for p in checkpoint.iterdir()) == before
    assert [p.name for p in notes.iterdir()] == ["mine.txt"]


def test_a_rewritten_output_folder_is_replaced_whole(tmp_path):
    out = tmp_path / "ckpt"
    manifest.write_dir_atomic(out, lambda folder: (folder / "old.json").write_text("{}"))
    manifest.write_dir_atomic(out, lambda folder: (folder / "new.json").write_text("{}"))
    assert [p.name for p in out.iterdir()] == ["new.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # neither the old folder nor a temporary one


def test_a_hub_id_offline_fails_at_once_in_one_line(tmp_path, capsys, monkeypatch):
    """Not a folder, not in the cache, and the hub unreachable: one line, without asking the hub."""
    import time

    import transformers

    from probe.models import loading

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    real = transformers.AutoConfig.from_pretrained

    def local_only(ref, **kwargs):
        assert kwargs.get("local_files_only"), "the hub was asked although it cannot be reached"
        return real(ref, **kwargs)

    monkeypatch.setattr(loading.AutoConfig, "from_pretrained", local_only)
    started = time.perf_counter()
    assert main(["eval", "some-org/some-model", "--tasks", "digits", "--limit", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert time.perf_counter() - started < 10
    assert err.splitlines() == ["probe: error: cannot load 'some-org/some-model': not a local model folder nor in "
                                "the Hugging Face cache, and the hub cannot be reached (offline?); download it "
                                "where there is network, or give its local folder"]


def test_the_hub_is_unreachable_when_switched_off_or_when_its_host_does_not_answer(monkeypatch):
    import socket

    from huggingface_hub import constants

    from probe.models.loading import hub_reachable

    with socket.socket() as closed:  # a local port that nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub_reachable(timeout=1.0) is False
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable(timeout=1.0) is True
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        assert hub_reachable(timeout=1.0) is False


def test_a_token_method_the_model_cannot_run_is_refused_before_its_weights_load(capsys, monkeypatch):
    from probe.models import loading

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded before the token method was checked")

    monkeypatch.setattr(loading, "load_model", never)
    assert main(["eval", "tiny:llava", "--tasks", "digits", "--limit", "2", "--token-pruning", "fastv(k=99)"]) == 2
    assert "fastv prunes before layer 99" in capsys.readouterr().err
