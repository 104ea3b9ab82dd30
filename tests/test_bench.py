"""The scale benchmark's arithmetic (fits, operation counts), its stored output and the benchmarks page's table
made from it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import bench_module

ROOT = Path(__file__).resolve().parent.parent


def _bench_scale():
    return bench_module("bench_scale")


def test_time_fit_recovers_a_per_block_line():
    bench = _bench_scale()
    runs = [{"nsamples": 2, "blocks": 2, "seconds": 2 * (3.0 + 5.0 * 2)},
            {"nsamples": 4, "blocks": 2, "seconds": 2 * (3.0 + 5.0 * 4)}]
    assert bench.fit_time(runs) == pytest.approx((3.0, 5.0))
    counts = [{"nsamples": 1, "flops": {"torch.float32": 10.0 + 7.0}, "ops": 100 + 40},
              {"nsamples": 2, "flops": {"torch.float32": 10.0 + 14.0}, "ops": 100 + 80}]
    fitted = bench.fit_counts(counts)
    assert fitted["torch.float32"] == pytest.approx((10.0, 7.0)) and fitted["ops"] == pytest.approx((100.0, 40.0))


def test_operation_counter_counts_matrix_products_by_dtype():
    bench = _bench_scale()
    a32, b32 = torch.randn(3, 5), torch.randn(5, 7)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    q = torch.randn(1, 2, 6, 4)
    with bench.OpCounter() as counter:
        a32 @ b32
        a16 @ b16
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.flops["torch.float32"] == 2 * 3 * 5 * 7 + 4 * 1 * 2 * 6 * 6 * 4
    assert counter.flops["torch.bfloat16"] == 2 * 3 * 5 * 7


def test_the_readme_performance_tables_are_the_stored_scale_results():
    from analysis.performance import MARKERS, PAGE, SCALE_JSON, page_block, scale_markdown

    report = json.loads(SCALE_JSON.read_text())
    assert page_block(PAGE.read_text()) == scale_markdown(report)
    assert report["shape"] == "llava-hf/llama3-llava-next-8b-hf decoder widths" and len(report["nsamples"]) == 2
    assert {"wanda", "sparsegpt", "atv", "tamp", "dense"} <= {r["method"] for r in report["runs"]}
    assert MARKERS[0] in PAGE.read_text()


def test_the_batched_scoring_tables_are_the_stored_benchmark():
    """The README's and the benchmarks page's batched-scoring tables are the stored bench_eval output, whose
    every run scored what batch 1 scored; the ratios are recomputed from its items per second."""
    from analysis.performance import EVAL_JSON, EVAL_MARKERS, EVAL_PAGES, eval_batching_markdown, page_block

    report = json.loads(EVAL_JSON.read_text())
    for page in EVAL_PAGES:
        assert page_block(page.read_text(), EVAL_MARKERS) == eval_batching_markdown(report)
    assert all(run["equal_to_batch_1"] for run in report["runs"])
    assert {str(r["batch_size"]) for r in report["runs"]} == {"1", "4", "16", "auto"}
    for run in report["runs"]:
        first = next(r for r in report["runs"] if (r["model"], r["task"], r["batch_size"]) ==
                     (run["model"], run["task"], 1))
        assert run["ratio_to_batch_1"] == pytest.approx(run["items_per_second"] / first["items_per_second"])


def test_the_eval_benchmark_finds_a_changed_score():
    bench = bench_module("bench_eval")
    items = pd.DataFrame({"task": ["t", "t"], "metric": ["acc", "acc"], "doc_id": [0, 1], "value": [1.0, 0.0]})
    answers = {("t", 0): "two", ("t", 1): [[1.25, False], [2.5, True]]}
    assert bench.same_scores((items, answers), (items.iloc[::-1], dict(answers))) == []
    near = {("t", 0): "two", ("t", 1): [[1.25 + 5e-5, False], [2.5, True]]}
    assert bench.same_scores((items, answers), (items, near)) == []
    far = {("t", 0): "two", ("t", 1): [[1.25 + 5e-3, False], [2.5, True]]}
    assert bench.same_scores((items, answers), (items, far)) == ["option log-likelihoods of ('t', 1) differ"]
    other = {("t", 0): "three", ("t", 1): answers[("t", 1)]}
    assert bench.same_scores((items, answers), (items, other)) == ["answer of ('t', 0) differs"]
    flipped = items.assign(value=[0.0, 0.0])
    assert bench.same_scores((items, answers), (flipped, answers)) == ["per-item scores differ"]
