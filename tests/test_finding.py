"""The demo's finding (`analysis/finding.py`): retentions against a hand computation, and a sentence that
follows the numbers: the direction, the size and whether the test clears the noise."""

import numpy as np
import pandas as pd
import pytest

from analysis.finding import FindingError, PathwayFinding, finding_sentence, finding_table, pathway_finding
from probe.evaluation.uncertainty import Interval

TASKS = ("digits", "quote_completion")


def _grid(answers: dict[str, dict[str, list[int]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Results and per-item scores of a grid whose cells gave ``answers`` ({cell: {task: 0/1 per item}})."""
    results, items = [], []
    for cell, tasks in answers.items():
        pathway = cell.split("/")[0]
        for task, values in tasks.items():
            results.append({"cell": cell, "pathway": pathway, "pool": "-" if cell == "dense" else "mixed",
                            "sparsity": 0.0 if cell == "dense" else 0.5, "task": task, "metric": "exact_match",
                            "score": float(np.mean(values)), "n": len(values)})
            items += [{"cell": cell, "task": task, "doc_id": i, "value": v} for i, v in enumerate(values)]
    return pd.DataFrame(results), pd.DataFrame(items)


def _answers(dense_right: int, text_right: int, visual_right: int, n: int = 30) -> dict:
    def run(right: int) -> dict[str, list[int]]:
        return {t: [1] * right + [0] * (n - right) for t in TASKS}
    return {"dense": run(dense_right), "text/mixed/0.5": run(text_right), "visual/mixed/0.5": run(visual_right)}


def test_retentions_and_their_difference_equal_a_hand_computation():
    results, items = _grid(_answers(dense_right=20, text_right=5, visual_right=18))
    finding = pathway_finding(results, items, boots=500)
    # retention: the mean over tasks of pruned score / dense score, in percent
    assert finding.retention["text"].estimate == pytest.approx(100 * 5 / 20)
    assert finding.retention["visual"].estimate == pytest.approx(100 * 18 / 20)
    assert finding.difference.estimate == pytest.approx(100 * 18 / 20 - 100 * 5 / 20)
    assert finding.scores["dense"]["digits"] == pytest.approx(100 * 20 / 30)
    assert finding.difference.p < 0.01  # 13 items per task answered by one pathway only, all one way
    table = finding_table(finding)
    assert "25.0 [" in table and "90.0 [" in table


def test_the_sentence_says_the_text_pathway_is_sensitive_only_when_the_test_says_so():
    results, items = _grid(_answers(dense_right=20, text_right=5, visual_right=18))
    sentence = finding_sentence(pathway_finding(results, items, boots=500))
    assert "text pathway keeps 25%" in sentence and "visual pathway 90%" in sentence
    assert "pruning the text pathway costs 65 points more" in sentence and "beyond the noise" in sentence

    results, items = _grid(_answers(dense_right=20, text_right=17, visual_right=18))  # one item apart
    sentence = finding_sentence(pathway_finding(results, items, boots=500))
    assert "inside the noise of 30 items per task" in sentence and "cannot tell" in sentence


def _finding(estimate: float, low: float, high: float, p: float) -> PathwayFinding:
    return PathwayFinding(0.5, "mixed", list(TASKS), {"digits": 14, "quote_completion": 40}, {},
                          {"text": Interval(60.0, 50.0, 70.0), "visual": Interval(60.0 + estimate, 50.0, 80.0)},
                          Interval(estimate, low, high, p=p))


def test_the_sentence_follows_direction_interval_and_p():
    assert "opposite of the paper" in finding_sentence(_finding(-12.0, -20.0, -4.0, 0.003))
    assert "visual pathway costs 12 points more" in finding_sentence(_finding(-12.0, -20.0, -4.0, 0.003))
    # an interval excluding zero with p above the level, or the reverse, is not a finding
    assert "inside the noise of 14 to 40 items per task" in finding_sentence(_finding(12.0, 2.0, 22.0, 0.08))
    assert "inside the noise" in finding_sentence(_finding(12.0, -1.0, 22.0, 0.01))
    assert "p = 0.003" in finding_sentence(_finding(12.0, 4.0, 20.0, 0.003))


def test_a_grid_without_both_pathways_is_refused():
    answers = _answers(20, 5, 18)
    del answers["visual/mixed/0.5"]
    results, items = _grid(answers)
    with pytest.raises(FindingError, match="both pathways"):
        pathway_finding(results, items, boots=100)


def test_a_cell_scored_on_other_items_than_dense_is_refused():
    results, items = _grid(_answers(20, 5, 18))
    items = items[~((items.cell == "visual/mixed/0.5") & (items.doc_id == 0))]
    with pytest.raises(FindingError, match="visual/mixed/0.5"):
        pathway_finding(results, items, boots=100)


def _pool_grid(answers: dict[tuple[str, str], dict[str, list[int]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A Table 1 grid whose (pathway, pool) cells gave ``answers`` ({task: 0/1 per item})."""
    results, items = [], []
    for (pathway, pool), tasks in answers.items():
        cell = "dense" if pathway == "dense" else f"{pathway}/{pool}/0.5"
        for task, values in tasks.items():
            results.append({"cell": cell, "pathway": pathway, "pool": pool, "sparsity": 0.0 if cell == "dense" else 0.5,
                            "task": task, "metric": "acc", "score": float(np.mean(values)), "n": len(values)})
            items += [{"cell": cell, "task": task, "doc_id": i, "value": v} for i, v in enumerate(values)]
    return pd.DataFrame(results), pd.DataFrame(items)


def _right(count: int, n: int = 40) -> list[int]:
    return [1] * count + [0] * (n - count)


def test_findings_a_and_b_are_restated_per_task_group_with_holm_over_all_comparisons():
    from analysis.pathway_findings import pathway_findings, sentence
    from probe.evaluation.significance import retention_test

    image, text = "clipart_category", "quote_completion"  # an image task and the text-only one
    dense = {image: _right(30), text: _right(32)}
    answers = {("dense", "-"): dense,
               ("text", "text"): {image: _right(27), text: _right(30)},
               ("text", "visual"): {image: _right(26), text: _right(12)},
               ("visual", "text"): {image: _right(8), text: dense[text]},  # text-only: the visual pathway is idle
               ("visual", "visual"): {image: _right(29), text: dense[text]}}
    results, items = _pool_grid(answers)
    found = pathway_findings(results, items, boots=2000)
    keys = [(c.finding, c.label, c.group) for c in found]
    assert keys == [("A", "text pathway: text − visual pool", "image tasks"),  # text − mixed: no mixed cell
                    ("A", "text pathway: text − visual pool", "text tasks"),
                    ("B", "visual − text pathway: text pool", "image tasks"),
                    ("B", "visual − text pathway: text pool", "text tasks"),
                    ("B", "visual − text pathway: visual pool", "image tasks"),
                    ("B", "visual − text pathway: visual pool", "text tasks")]
    by_key = {(c.finding, c.label, c.group): c for c in found}
    # differences by hand: retention over a group's one task is score / dense score, in points
    run_base = {("A", "text pathway: text − visual pool"): (("text", "text"), ("text", "visual")),
                ("B", "visual − text pathway: text pool"): (("visual", "text"), ("text", "text")),
                ("B", "visual − text pathway: visual pool"): (("visual", "visual"), ("text", "visual"))}
    raw = []
    for (finding, label), (run, base) in run_base.items():
        for group, task in (("image tasks", image), ("text tasks", text)):
            expected = 100 * (np.mean(answers[run][task]) - np.mean(answers[base][task])) / np.mean(dense[task])
            comparison = by_key[(finding, label, group)]
            assert comparison.difference.estimate == pytest.approx(expected)
            assert comparison.tasks == (task,) and comparison.draws == 1
            p = retention_test({task: np.array(answers[run][task], float)},
                               {task: np.array(answers[base][task], float)},
                               {task: np.array(dense[task], float)}, resamples=2000)
            assert comparison.difference.p == pytest.approx(p)
            raw.append(((finding, label, group), p))
    # Holm by hand: the k-th smallest of m p-values times (m - k + 1), made monotone, capped at 1
    ordered = sorted(raw, key=lambda r: r[1])
    running, holm = 0.0, {}
    for k, (key, p) in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - k) * p))
        holm[key] = running
    for key, c in by_key.items():
        assert c.p_adjusted == pytest.approx(holm[key])
        expected = "inside the noise" if holm[key] >= 0.05 else "holds" if c.difference.estimate > 0 else "reversed"
        assert c.verdict == expected
    # the text pathway's visual-pool statistics cost the quotes 18 of 32 items: Finding A holds there
    assert by_key[("A", "text pathway: text − visual pool", "text tasks")].verdict == "holds"
    # the visual pathway pruned with text tokens loses clip art: the opposite of Finding B on the image tasks
    assert by_key[("B", "visual − text pathway: text pool", "image tasks")].verdict == "reversed"
    idle = by_key[("B", "visual − text pathway: visual pool", "text tasks")]
    assert "cannot change a text-only task" in sentence(idle) and idle.difference.estimate == pytest.approx(
        100 * 20 / 32)


def test_probe_table_writes_the_findings_beside_a_table1_grid(tmp_path):
    from analysis.tables import write_grid_table

    image, text = "clipart_category", "quote_completion"
    answers = {("dense", "-"): {image: _right(30), text: _right(32)},
               ("text", "visual"): {image: _right(25), text: _right(20)},
               ("visual", "visual"): {image: _right(28), text: _right(32)}}
    results, items = _pool_grid(answers)
    markdown = write_grid_table(results, tmp_path, "table1", items=items, boots=500, records={})
    written = (tmp_path / "table1_findings.md").read_text()
    assert written in markdown and "visual − text pathway: visual pool" in written
    assert "Family: 2 comparisons" in written  # Finding A needs the text pool's cell; B has one pool, two groups


def test_mask_overlap_summary_by_hand(tmp_path):
    from analysis.mask_overlap import iou_markdown, iou_summary
    from analysis.tables import write_grid_table

    iou = pd.DataFrame({"pathway": ["text"] * 4 + ["visual"] * 2, "sparsity": [0.5] * 6,
                        "linear": ["layers.0.mlp.down_proj", "layers.0.self_attn.q_proj", "layers.1.mlp.down_proj",
                                   "layers.1.self_attn.q_proj", "layers.0.mlp.down_proj", "layers.0.self_attn.q_proj"],
                        "iou": [0.6, 0.8, 0.7, 0.9, 0.5, 0.75]})
    text = iou_summary(iou).set_index("pathway").loc["text"]
    assert (text["linears"], text["least"], text["median"], text["most"]) == (4, 0.6, pytest.approx(0.75), 0.9)
    assert text["mean down_proj"] == pytest.approx(0.65) and text["mean q_proj"] == pytest.approx(0.85)
    assert text["random masks"] == pytest.approx(0.5 / 1.5)  # s / (2 - s) at 50%
    assert "| visual | 50% | 2 | 0.50 | 0.62 | 0.75 |" in iou_markdown(iou)
    # probe table writes it beside a Table 1 grid that holds mask_iou.csv
    image, text_task = "clipart_category", "quote_completion"
    results, items = _pool_grid({("dense", "-"): {image: _right(30), text_task: _right(32)},
                                 ("text", "visual"): {image: _right(25), text_task: _right(20)}})
    iou.to_csv(tmp_path / "mask_iou.csv", index=False)
    write_grid_table(results, tmp_path, "table1", items=items, boots=200, records={})
    assert (tmp_path / "table1_mask_iou.md").read_text() == iou_markdown(iou)
