"""Analysis: figures from small hand-built result frames, side-by-side tables, paper tables, plot CLI."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis import figures
from analysis.results import ResultsError, load_atv_blocks, load_paper
from analysis.tables import side_by_side
from probe.core.record import RecordError


def method_results(specs_and_scores):
    rows = [("dense", "-", "-", "a", 0.8), ("dense", "-", "-", "b", 0.4)]
    for spec, setting, a, b in specs_and_scores:
        rows += [("all", spec, setting, "a", a), ("all", spec, setting, "b", b)]
    return pd.DataFrame(rows, columns=["pathway", "method", "setting", "task", "score"])


def labels(fig):
    return [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]


def test_alpha_and_text_ratio_figures(tmp_path):
    results = method_results([("atv(alpha=0)", "50%", 0.4, 0.4), ("atv", "50%", 0.8, 0.4),
                              ("atv(alpha=4)", "50%", 0.6, 0.2), ("wanda", "50%", 0.1, 0.1),
                              ("atv(signal=random)", "50%", 0.0, 0.0)]).assign(n=20)
    fig = figures.plot_alpha(results, tmp_path / "alpha", model="some-model")
    assert (tmp_path / "alpha.png").stat().st_size > 0 and (tmp_path / "alpha.pdf").stat().st_size > 0
    task_a, task_b, average = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["a", "b", "average"]
    assert fig.texts[0].get_text() == "some-model: ATV: alpha"
    # alpha on a categorical axis: 0, 1, 4 equally spaced; wanda and the random-signal cell are left out
    assert [t.get_text() for t in average.get_xticklabels()] == ["0", "1", "4"]
    x, y = average.lines[0].get_data()
    assert list(x) == [0, 1, 2] and list(y) == pytest.approx([75.0, 100.0, 62.5])
    # task a: scores with one binomial standard error sqrt(p (1 - p) / n), the dense line at 80%
    container = task_a.containers[0]
    assert list(container.lines[0].get_ydata()) == pytest.approx([40.0, 80.0, 60.0])
    bars = container.lines[2][0].get_segments()
    expected = [100 * np.sqrt(p * (1 - p) / 20) for p in (0.4, 0.8, 0.6)]
    assert [seg[1][1] - seg[0][1] for seg in bars] == pytest.approx([2 * e for e in expected])
    assert task_a.lines[0].get_ydata()[0] == pytest.approx(80.0) and task_a.lines[0].get_linestyle() == "--"
    # the average retention with its 95% interval: without per-item scores, the delta method over the tasks'
    # standard errors sqrt(p (1 - p) / (n - 1)); alpha = 1 keeps a at 0.8 of 0.8 and b at 0.4 of 0.4
    def var(p, d):
        se_p, se_d = np.sqrt(p * (1 - p) / 19), np.sqrt(d * (1 - d) / 19)
        return (se_p / d) ** 2 + (p * se_d / d**2) ** 2

    half = 100 * 1.96 * np.sqrt(var(0.8, 0.8) + var(0.4, 0.4)) / 2
    segments = average.containers[0].lines[2][0].get_segments()
    assert segments[1][1][1] - segments[1][0][1] == pytest.approx(2 * half)
    ratios = method_results([("atv(text_ratio=0.5)", "50%", 0.4, 0.2), ("atv", "50%", 0.8, 0.4)])
    fig = figures.plot_text_ratio(ratios, tmp_path / "ratio")
    assert fig.axes[-1].get_xlabel() == "retained text-token ratio"
    assert list(fig.axes[-1].lines[0].get_data()[0]) == [0.5, 1.0]
    assert list(fig.axes[-1].lines[0].get_data()[1]) == pytest.approx([50.0, 100.0])


def test_iou_drift_and_tsne_figures(tmp_path):
    iou = pd.DataFrame({"pathway": ["text"] * 3 + ["visual"] * 3, "sparsity": [0.5] * 6, "linear": list("abcdef"),
                        "iou": [0.5, 0.6, 0.7, 0.2, 0.3, 0.9]})
    fig = figures.plot_mask_iou(iou, tmp_path / "iou")
    assert [ax.get_title() for ax in fig.axes] == ["text pathway", "visual pathway"]
    assert labels(fig)[0] == ("mask IoU (text pool vs visual pool)", "linears")
    outline = fig.axes[0].patches[0].get_xy()  # an outlined histogram is one polygon over the bin edges
    counts, _ = np.histogram([0.5, 0.6, 0.7], bins=np.unique(outline[:, 0]))
    assert outline[:, 1].max() == counts.max() and sum(1 for ax in fig.axes for _ in ax.patches) == 2
    # the axis spans the data (0.2 to 0.9) and the random-mask baseline, not all of [0, 1]
    low, high = fig.axes[0].get_xlim()
    assert 0 < low <= 0.2 and 0.9 <= high < 1
    random_line = next(line for line in fig.axes[0].lines if line.get_label() == "random masks, 50%")
    assert random_line.get_xdata()[0] == pytest.approx(0.25 / 0.75)  # s^2 / (2s - s^2) at s = 0.5
    import torch

    from probe.pruning.sparsity.masks import mask_iou

    generator = torch.Generator().manual_seed(0)
    masks = [torch.rand(400, 400, generator=generator) < 0.5 for _ in range(2)]
    assert mask_iou(*masks) == pytest.approx(figures.random_mask_iou(0.5), abs=0.01)
    blocks = pd.DataFrame({"block": [0, 1, 2], "mean_drift": [0.1, 0.3, 0.2], "k_mean": [3.0, 9.0, 6.0]})
    fig = figures.plot_drift(blocks, tmp_path / "drift", title="m: drift")
    line_axis, bar_axis = fig.axes
    assert line_axis.get_ylabel() == "mean visual drift s̄" and bar_axis.get_ylabel() == "mean visual tokens kept K"
    assert [p.get_height() for p in bar_axis.patches] == [3.0, 9.0, 6.0]
    assert line_axis.get_zorder() > bar_axis.get_zorder() and line_axis.get_legend() is not None
    assert line_axis.get_title() == "m: drift"
    rng = np.random.RandomState(0)
    activations = np.concatenate([rng.randn(20, 8), rng.randn(20, 8) + 5])
    visual = np.array([False] * 20 + [True] * 20)
    fig = figures.plot_tsne(activations, visual, tmp_path / "tsne")
    assert labels(fig) == [("t-SNE 1", "t-SNE 2")] and (tmp_path / "tsne.pdf").is_file()


def test_side_by_side_with_the_papers_table2():
    paper = load_paper("table2")
    paper = paper[paper.model == "llava-next-8b"]
    ours = method_results([("wanda", "50%", 0.4, 0.4), ("atv", "50%", 0.8, 0.2), ("magnitude", "50%", 0.2, 0.2)])
    table = side_by_side(ours, paper, ["method"])
    ours_col, paper_col = ("retention (%)", "ours"), ("retention (%)", "paper")
    assert table.loc[("50%", "wanda"), ours_col] == pytest.approx(75.0)
    assert table.loc[("50%", "wanda"), paper_col] == pytest.approx(88.36)
    assert table.loc[("50%", "atv"), paper_col] == pytest.approx(94.00)
    assert np.isnan(table.loc[("50%", "magnitude"), paper_col])


def test_paper_tables_agree_with_the_spec():
    t1 = load_paper("table1")
    row = t1[(t1.pathway == "text") & (t1.pool == "visual") & (t1.setting == "60%")].set_index("task")["score"]
    assert row["scienceqa_img"] == 11.11 and row["avg retention"] == 50.92
    dense = t1[t1.pathway == "dense"].set_index("task")["score"]
    # the paper's retention is the mean of pruned / dense over the three benchmarks
    assert (row.drop("avg retention") / dense.drop("avg retention")).mean() * 100 == pytest.approx(50.92, abs=0.01)
    assert set(load_paper("table4").method) == {"wanda", "sparsegpt", "tamp", "atv"}
    with pytest.raises(ResultsError, match="table9"):
        load_paper("table9")


def test_plot_cli(tmp_path):
    from probe.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"atv_blocks": [
        {"block": 0, "mean_drift": 0.1, "k_mean": 2.0}, {"block": 1, "mean_drift": 0.2, "k_mean": 4.0}]}))
    assert main(["plot", "drift", str(run)]) == 0
    assert (run / "figures" / "drift.png").is_file() and (run / "figures" / "drift.pdf").is_file()
    assert main(["plot", "iou", str(tmp_path)]) == 2  # no mask_iou.csv there
    with pytest.raises(RecordError, match="not an ATV run"):
        (tmp_path / "plain").mkdir()
        (tmp_path / "plain" / "manifest.json").write_text("{}")
        load_atv_blocks(tmp_path / "plain")
    assert main(["plot", "tsne", "tiny:llava", "--block", "1", "--nsamples", "2", "--out", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t.png").is_file()


def test_table3_layout_from_ablation_cells():
    from analysis.tables import table3

    results = method_results([("atv", "50%", 0.8, 0.4), ("atv(budget=fixed)", "50%", 0.4, 0.4),
                              ("atv(signal=random, budget=fixed)", "50%", 0.4, 0.2),
                              ("atv(signal=abs)", "50%", 0.8, 0.2),
                              ("atv(alpha=2)", "50%", 0.0, 0.0), ("wanda", "50%", 0.0, 0.0)])
    t = table3(results)
    assert list(t.index) == [("dense", "dense", "-"), ("50%", "drift", "yes"), ("50%", "drift", "no"),
                             ("50%", "random", "no"), ("50%", "abs", "yes")]
    assert t.loc[("50%", "drift", "no"), ("retention (%)", "avg")] == pytest.approx(75.0)
    assert t.loc[("50%", "random", "no"), ("retention (%)", "avg")] == pytest.approx(50.0)
    assert t.loc[("50%", "abs", "yes"), ("score (%)", "a")] == pytest.approx(80.0)


def test_grid_tables_go_next_to_the_papers_when_the_model_matches(tmp_path):
    from analysis.tables import write_grid_table

    ours = method_results([("wanda", "50%", 0.4, 0.4), ("atv", "50%", 0.8, 0.2)])
    write_grid_table(ours, tmp_path, "table2", "some/other-model")
    assert not (tmp_path / "table2_vs_paper.md").exists()
    markdown = write_grid_table(ours, tmp_path, "table2", "llava-hf/llama3-llava-next-8b-hf")
    compared = (tmp_path / "table2_vs_paper.md").read_text()
    assert "| setting | method | ours retention (%) | paper retention (%) |" in compared
    assert "| 50% | wanda | 75.00 | 88.36 |" in compared and "| dense | dense | 100.00 | 100.00 |" in compared
    assert compared in markdown


def test_analysis_reads_results_without_the_grid_runner():
    """analysis/ imports no grid runner (nor torch through it): tables and figures of stored results are
    a pandas matter."""
    import subprocess
    import sys

    code = ("import sys, analysis.results, analysis.tables, analysis.figures\n"
            "print(sorted(m for m in ('probe.experiments.grid', 'probe.pruning.engine', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_flops_figure_names_every_cell_with_its_retention_interval(tmp_path):
    from probe.evaluation.uncertainty import bootstrap_retention

    rng = np.random.default_rng(0)
    answers = {"dense": {"a": rng.integers(0, 2, 30) | 1, "b": rng.integers(0, 2, 30) | 1}}
    for cell in ("wanda/50%", "dense/-/fastv", "wanda/50%/fastv"):
        answers[cell] = {t: v * rng.integers(0, 2, 30) for t, v in answers["dense"].items()}
    rows, items = [], []
    for cell, scores in answers.items():
        pathway = "dense" if cell == "dense" else "all"
        method = "dense" if cell.startswith("dense") else "wanda"
        tokens = "fastv" if cell.endswith("fastv") else "none"
        for task, values in scores.items():
            rows.append({"cell": cell, "pathway": pathway, "method": method, "token_pruning": tokens, "task": task,
                         "score": values.mean(), "n": len(values), "gflops_sparse": 1.0 + len(cell)})
            items += [{"cell": cell, "task": task, "doc_id": i, "value": float(v)} for i, v in enumerate(values)]
    results, items = pd.DataFrame(rows), pd.DataFrame(items)
    points = figures.flops_points(results, items=items).set_index("cell")
    assert list(points.kind) == ["weights", "tokens", "joint"]
    for cell in points.index:
        expected = bootstrap_retention({t: answers[cell][t].astype(float) for t in "ab"},
                                       {t: answers["dense"][t].astype(float) for t in "ab"})
        assert (points.at[cell, "low"], points.at[cell, "high"]) == pytest.approx((expected.low, expected.high))
    fig = figures.plot_retention_vs_flops(results, tmp_path / "flops", items=items)
    ax = fig.axes[0]
    assert [text.get_text() for text in ax.texts] == ["1", "2", "3"]
    assert [label.get_text() for label in ax.get_legend().get_texts()][1:] == [
        f"{i}. {kind}: {cell}" for i, (cell, kind) in enumerate(points.kind.items(), start=1)]
    markers = [container.lines[0].get_marker() for container in ax.containers]
    assert len(set(markers)) == len(points)  # every cell its own marker
    assert ax.get_ylabel() == "average retention (%) [95% CI]"
