"""`probe prune` end to end on a tiny model: checkpoint, manifest, errors."""

import json

import pandas as pd
import pytest
from transformers import AutoModelForImageTextToText

from probe.cli import main


def test_prune_writes_loadable_checkpoint_and_manifest(tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(["prune", "tiny:llava_next", "--method", "wanda", "--pattern", "2:4", "--nsamples", "3",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["sparsity"] == 0.5 and manifest["settings"]["pattern"] == "2:4"
    assert len(manifest["calibration"]["sample_ids"]) == 3
    assert manifest["versions"]["torch"] and manifest["peak_memory_bytes"] > 0
    model = AutoModelForImageTextToText.from_pretrained(out)
    weight = model.model.language_model.layers[1].self_attn.q_proj.weight
    groups = (weight == 0).reshape(weight.shape[0], -1, 4).sum(-1)
    assert (groups >= 2).all()
    assert abs(manifest["sparsity"]["layers.1.self_attn.q_proj"] - (weight == 0).float().mean().item()) < 1e-6
    assert (out / "processor_config.json").exists() and not list(tmp_path.glob(".pruned.*"))


def test_prune_composes_the_axes_from_flags(tmp_path):
    out = tmp_path / "composed"
    assert main(["prune", "tiny:llava", "--tokens", "atv", "--scorer", "sparsegpt", "--allocation", "owl",
                 "--owl-lambda", "0.05", "--alpha", "2", "--true-sequential", "--nsamples", "3", "--out", str(out),
                 "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    settings = manifest["settings"]
    assert (settings["tokens"], settings["scorer"], settings["allocation"]) == ("atv", "sparsegpt", "owl")
    assert settings["allocation_settings"]["lam"] == 0.05 and settings["tokens_settings"]["alpha"] == 2.0
    assert settings["true_sequential"] and manifest["method"] == "atv+sparsegpt+owl"
    blocks = sorted({v for v in manifest["target_sparsity"].values()})
    assert len(blocks) > 1 and max(blocks) - min(blocks) <= 0.1 + 1e-9
    assert set(manifest["timings"]) >= {"capture", "prepass", "prune", "wall"} and manifest["selector_blocks"]


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    cases = [
        (["prune", "--sparsity", "1.0"], "sparsity must be in [0, 1)"),
        (["prune", "--pattern", "2:4", "--sparsity", "0.6"], "2:4"),
        (["prune", str(tmp_path / "missing")], "not found"),
        (["prune", "tiny:nosuchfamily"], "no tiny model for 'nosuchfamily'"),
        (["prune", "--calib", str(tmp_path / "none.json")], "not found"),
        (["prune", "--nsamples", "5000"], "only"),
        (["prune", "--owl-m", "3"], "--owl-m is a setting of allocation 'owl'; this run uses 'uniform'"),
        (["prune", "--method", "sparsegpt", "--use-variant"], "--use-variant is a setting of scorer"),
        (["prune", "--method", "atv", "--tokens", "text"], "method 'atv' uses tokens 'atv'"),
        (["prune", "--method", "owl", "--pattern", "2:4"], "N:M"),
        (["prune", "--scorer", "sparsegpt", "--blocksize", "6", "--pattern", "4:8"], "not a multiple of M"),
    ]
    for argv, message in cases:
        assert main(argv + ["--out", str(tmp_path / "o"), "--no-progress"]) == 2
        assert message in capsys.readouterr().err
    for argv in (["prune", "--method", "prune-everything"], ["prune", "--pool", "audio"], ["prune", "--scorer", "obd"],
                 ["prune", "--allocation", "owl2"],
                 ["prune", "--k-rule", "mine"], ["eval", "--dtype", "int3"], ["plot", "table9"]):
        with pytest.raises(SystemExit) as exit_info:  # argparse's choices: usage and one error line
            main(argv + ["--out", str(tmp_path / "o")])
        assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["grid", "--quick", "--cells", "wanda/50%", "--out", str(tmp_path / "g"), "--no-progress"]) == 2
    assert "no cell 'wanda/50%' in this grid; its cells are dense, text/text/0.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["grid", "--quick", "--cells", ",", "--out", str(tmp_path / "g")])
    assert "name at least one cell" in capsys.readouterr().err


def test_cli_answers_fast_without_loading_torch():
    """--help, --version and bad flags need no torch, transformers or lmms-eval: they answer at once."""
    import subprocess
    import sys

    code = ("import sys; from probe.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'lmms_eval') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    for argv in (["--help"], ["--version"], ["prune", "--method", "nope", "--out", "x"], ["grid", "--help"]):
        result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
        assert "HEAVY []" in result.stdout, (argv, result.stdout[-500:], result.stderr[-500:])


def test_prune_keeps_the_source_video_processor_config_it_could_not_load(tmp_path):
    """Without torchvision the video processor is left out of the loaded processor; the pruned
    checkpoint still carries the source's config file, byte for byte, when the source has one."""
    from probe.models.compat import save_processor
    from probe.models.tiny import tiny_lvlm

    source = tmp_path / "source"
    tiny = tiny_lvlm("qwen2_vl")
    tiny.model.save_pretrained(source)
    save_processor(tiny.processor, source)
    config = {"video_processor_type": "Qwen2VLVideoProcessor", "patch_size": 4, "merge_size": 2,
              "temporal_patch_size": 2, "min_pixels": 256, "max_pixels": 2304}
    (source / "video_preprocessor_config.json").write_text(json.dumps(config, indent=2))
    out = tmp_path / "pruned"
    assert main(["prune", str(source), "--method", "magnitude", "--out", str(out), "--no-progress"]) == 0
    copied = out / "video_preprocessor_config.json"
    assert copied.read_bytes() == (source / "video_preprocessor_config.json").read_bytes()

    bare = tmp_path / "bare"
    assert main(["prune", "tiny:qwen2_vl", "--method", "magnitude", "--out", str(bare), "--no-progress"]) == 0
    assert not (bare / "video_preprocessor_config.json").exists()


def test_quick_and_default_grids_never_write_into_stored_results(tmp_path, monkeypatch, capsys):
    """`probe grid CONFIG --quick` goes to runs/grid/<config>-quick even when the config names a folder
    under results/; --log-samples writes every item's answer per cell."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "mine.yaml"
    config.write_text("model: tiny:llava\ntasks: digits\npathways: [text]\npools: [text]\n"
                      "out: results/grid/mine\n")
    assert main(["grid", str(config), "--quick", "--log-samples", "--no-progress"]) == 0
    out = tmp_path / "runs" / "grid" / "mine-quick"
    assert not (tmp_path / "results").exists()
    results = pd.read_csv(out / "results.csv")
    assert set(results.cell) == {"dense", "text/text/0.5"} and set(results.n) == {5}
    samples = sorted((out / "samples").glob("*.jsonl"))
    assert [p.stem for p in samples] == ["dense", "text_text_0_5"]
    assert all(len(p.read_text().splitlines()) == 5 for p in samples)

    from probe.experiments.grid import GridConfig

    assert GridConfig().out == "runs/grid/table1" and GridConfig(grid="table2").out == "runs/grid/table2"


def test_progress_in_a_log_file_is_a_line_per_tenth_of_the_work():
    import io

    from probe.core.progress import LogLines, progress_bar

    with progress_bar("scoring", 25) as bar:  # under pytest the output is not a terminal
        assert isinstance(bar, LogLines)
    stream = io.StringIO()
    lines = LogLines("scoring", 25, stream=stream)
    for _ in range(12):
        lines.advance()
    lines.advance(13)
    done = [line.split(",")[0] for line in stream.getvalue().splitlines()]
    # a tenth of 25 is 2.5 steps: the first four tenths are passed at steps 3, 5, 8 and 10; step 12 (4.8
    # tenths) passes none; the jump to 25 passes the rest at once
    assert done == ["scoring: 3/25 (12%)", "scoring: 5/25 (20%)", "scoring: 8/25 (32%)", "scoring: 10/25 (40%)",
                    "scoring: 25/25 (100%)"]
    assert all(line.endswith("elapsed") for line in stream.getvalue().splitlines())


def test_table_writes_a_grid_folders_tables_from_its_manifest(tmp_path, capsys):
    """`probe table` rebuilds the tables of a grid stopped part-way, with the grid kind and model of its
    manifest: Wanda's 0.4 / 0.4 against dense 0.8 / 0.4 is (50 + 100) / 2 = 75% retention."""
    rows = [("dense", "-", "-", "a", 0.8), ("dense", "-", "-", "b", 0.4),
            ("all", "wanda", "50%", "a", 0.4), ("all", "wanda", "50%", "b", 0.4)]
    pd.DataFrame(rows, columns=["pathway", "method", "setting", "task", "score"]).to_csv(
        tmp_path / "results.csv", index=False)
    assert main(["table", str(tmp_path)]) == 2
    assert "no grid manifest at" in capsys.readouterr().err
    config = {"grid": "table2", "model": "llava-hf/llama3-llava-next-8b-hf", "name": "methods"}
    (tmp_path / "manifest.json").write_text(json.dumps({"config": config}))
    assert main(["table", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "methods.md").read_text() in printed
    assert "| 50% | wanda | 75.00 | 88.36 |" in (tmp_path / "methods_vs_paper.md").read_text()
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"grid": "table9"}}))
    assert main(["table", str(tmp_path)]) == 2
    assert "names no grid (table1, table2)" in capsys.readouterr().err


def test_prune_summarises_the_sparsity_of_all_pruned_weights_and_says_when_the_mean_differs(tmp_path, capsys):
    """TAMP's allocation gives matrices different sparsities: the summary counts zeros over all pruned
    weights (checked here on the written weights) and names the unweighted mean over matrices apart."""
    import re

    from probe.models.loading import load_model

    out = tmp_path / "ck"
    assert main(["prune", "tiny:llava_next", "--method", "tamp-full", "--sparsity", "0.5", "--nsamples", "3",
                 "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    found = re.search(r"sparsity (\d\.\d{3}) of all pruned weights \(unweighted mean over the (\d+) matrices "
                      r"(\d\.\d{3})\)", printed)
    assert found, printed
    loaded = load_model(str(out))
    zeros = total = 0
    for layer in loaded.adapter.decoder_layers(loaded.model):
        for linear in loaded.adapter.prunable_linears(layer).values():
            zeros += int((linear.weight == 0).sum())
            total += linear.weight.numel()
    assert float(found.group(1)) == pytest.approx(zeros / total, abs=0.0006)
    assert float(found.group(1)) != float(found.group(3))


def test_probe_families_tabulates_what_each_family_supports(capsys):
    from probe.models.base import supported_families

    assert main(["families"]) == 0
    lines = capsys.readouterr().out.split("\n\n", 1)[0].splitlines()
    header, rows = lines[0].split(), {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert header == ["family", "weights", "+", "MoT", "fastv", "random", "vitcop", "max-pixels", "tiny", "model"]
    assert sorted(rows) == supported_families()
    # what the README says of each: Qwen3-VL's DeepStack and Gemma 3's sliding windows refuse token pruning,
    # ViTCoP's compact positions need 1-D rotary positions, and --max-pixels caps the Qwen families' images
    assert rows["llava_next"] == ["yes", "yes", "yes", "yes", "-", "yes"]
    assert rows["qwen2_vl"] == ["yes", "yes", "yes", "deep_positions=keep", "yes", "yes"]
    assert rows["qwen3_vl"][1:4] == ["-", "-", "-"] and rows["gemma3"][1:4] == ["-", "-", "-"]


def test_a_fresh_clone_reusing_a_set_up_environment_does_not_set_it_up_again(tmp_path):
    """The set-up stamp follows pyproject.toml's content, not its date: a new checkout with the same
    dependencies only points the editable install at itself; other dependencies set the environment up."""
    import hashlib
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(root / name, clone / name)  # newer than any stamp
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    key = hashlib.sha256((clone / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (venv / f".probe-installed-{key}").touch()
    (venv / ".probe-source").write_text("/somewhere/else\n")

    def planned() -> str:
        done = subprocess.run(["make", "-n", "setup", f"VENV={venv}"], cwd=clone, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    steps = planned()
    assert "-m venv" not in steps and "torch" not in steps and "pip install -q --no-deps -e ." in steps
    (clone / "pyproject.toml").write_text((clone / "pyproject.toml").read_text() + "\n# another dependency\n")
    assert "-m venv" in planned()
