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
