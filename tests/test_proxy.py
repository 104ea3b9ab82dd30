"""The proxy metric: held-out conversations disjoint from calibration and tests, KL and NLL against plain
formulas, and its tables and rank correlation against scipy."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from analysis.proxy import PROXY_COLUMNS, permutation_p, proxy_correlation, proxy_table, spearman
from probe.data.calibration import CalibrationSpec, load_samples
from probe.data.heldout import heldout_image_samples, heldout_text_samples, text_paragraphs
from probe.evaluation.divergence import summarize, token_kl, token_nll
from probe.models.base import tiny_families


def test_held_out_photographs_are_neither_calibration_nor_test_items():
    from probe.data.offline import fashion_mnist_available

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed here (make setup installs it)")
    pool = {s.sample_id for s in load_samples(CalibrationSpec())}
    chosen = heldout_image_samples(CalibrationSpec(), 16, seed=3)
    ids = [s.sample_id for s in chosen]
    assert len(set(ids)) == 16 and not pool & set(ids)
    assert all(i.startswith("fashion_mnist/train/") for i in ids)  # the fashion_mnist task tests on t10k
    assert ids == [s.sample_id for s in heldout_image_samples(CalibrationSpec(), 16, seed=3)]


def test_held_out_records_of_a_json_source_leave_the_drawn_ones_out(tmp_path):
    import json

    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    records = [{"id": str(i), "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                                   {"from": "gpt", "value": "A square."}]}
               for i in range(6)]
    (tmp_path / "data.json").write_text(json.dumps(records))
    spec = CalibrationSpec.parse(str(tmp_path / "data.json"))
    drawn = {s.sample_id for s in load_samples(spec)[:4]}
    chosen = heldout_image_samples(spec, 2, exclude=drawn)
    assert {s.sample_id for s in chosen} == {s.sample_id for s in load_samples(spec)[4:]}
    with pytest.raises(Exception, match="only 2 that no calibration draw took"):
        heldout_image_samples(spec, 3, exclude=drawn)


def test_held_out_text_cuts_a_prose_paragraph_in_two():
    paragraphs = dict(text_paragraphs())
    samples = heldout_text_samples(5, seed=1)
    for sample in samples:
        human, answer = (turn["value"] for turn in sample.conversations)
        first = human.split("\n", 1)[1]
        assert f"{first} {answer}" == paragraphs[sample.sample_id.removeprefix("text/")]
        assert sample.image_loader is None and "<image>" not in human
    with pytest.raises(Exception, match="held-out text samples"):
        heldout_text_samples(len(paragraphs) + 1)


def test_token_kl_and_nll_equal_their_formulas():
    torch.manual_seed(0)
    dense = torch.randn(3, 7).log_softmax(-1)
    pruned = torch.randn(3, 7).log_softmax(-1)
    for row in range(3):
        p, q = dense[row].exp().tolist(), pruned[row].exp().tolist()
        expected = sum(a * (np.log(a) - np.log(b)) for a, b in zip(p, q))
        assert float(token_kl(dense, pruned)[row]) == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(token_kl(dense, dense), torch.zeros(3), atol=1e-7)
    targets = torch.tensor([1, 4, 6])
    assert token_nll(pruned, targets).tolist() == pytest.approx([-float(pruned[i, t]) for i, t in enumerate(targets)])


def test_a_groups_value_is_the_mean_over_samples_with_their_standard_error():
    per_sample = pd.DataFrame({"sample_id": list("abcde"), "group": ["image"] * 3 + ["text"] * 2,
                               "tokens": [10, 20, 30, 5, 5], "kl": [0.1, 0.2, 0.6, 0.0, 0.4],
                               "nll": [1.0, 2.0, 3.0, 1.0, 1.0]})
    summary = summarize(per_sample).set_index(["group", "metric"])
    image = summary.loc[("image", "kl")]
    assert (image.value, image.stderr, image.samples, image.tokens) == pytest.approx(
        (0.3, np.std([0.1, 0.2, 0.6], ddof=1) / np.sqrt(3), 3, 60))
    assert summary.loc[("text", "nll")].stderr == 0


def test_spearman_and_its_permutation_p_equal_scipy():
    rng = np.random.default_rng(5)
    for n in (5, 7):
        x, y = rng.normal(size=n), rng.normal(size=n)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
        expected = stats.permutation_test((y,), lambda v, x=x: stats.spearmanr(x, v).statistic,
                                          permutation_type="pairings", n_resamples=np.inf).pvalue
        assert permutation_p(x, y) == pytest.approx(expected)
    x = np.arange(12.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert permutation_p(x, -x, resamples=2000) == pytest.approx(1 / 2001)
    assert np.isnan(spearman(np.ones(4), x[:4]))


def _proxy_rows():
    rows = []
    for cell, pathway, method, calib, kl in [("dense", "dense", "-", None, 0.0), ("wanda/50%", "all", "wanda", 0, 0.2),
                                             ("wanda/50%@calib1", "all", "wanda", 1, 0.4),
                                             ("atv/50%", "all", "atv", 0, 0.1), ("sgpt/50%", "all", "sgpt", 0, 0.35)]:
        for group in ("image", "text"):
            for metric in ("kl", "nll"):
                value = kl if metric == "kl" else 1 + kl
                rows.append({"cell": cell, "pathway": pathway, "method": method, "setting": "-" if cell == "dense"
                             else "50%", "calib_seed": calib, "group": group, "metric": metric, "value": value,
                             "stderr": 0.01})
    return pd.DataFrame(rows)


def test_the_proxy_table_takes_the_mean_over_draws_and_correlates_with_retention():
    table = proxy_table(_proxy_rows(), ["method"])
    assert list(table.index) == [("dense", "dense"), ("50%", "wanda"), ("50%", "atv"), ("50%", "sgpt")]
    wanda = table.loc[("50%", "wanda")]
    assert wanda[("score (%)", "kl image")] == pytest.approx(0.3)
    # two draws: the items' noise they share plus the spread between them
    assert wanda[("stderr (%)", "kl image")] == pytest.approx(np.sqrt(0.01**2 + np.var([0.2, 0.4], ddof=1) / 2))
    retained = pd.Series({("dense", "dense"): 100.0, ("50%", "wanda"): 80.0, ("50%", "atv"): 90.0,
                          ("50%", "sgpt"): 85.0})
    correlation = proxy_correlation(retained, table)
    assert list(correlation.index) == list(PROXY_COLUMNS)
    assert correlation.loc["kl image", "rows"] == 3
    assert correlation.loc["kl image", "spearman"] == pytest.approx(stats.spearmanr([0.3, 0.1, 0.35], [80, 90, 85])
                                                                    .statistic)


def test_the_answer_tokens_are_those_of_the_reference_answer():
    from probe.evaluation.divergence import proxy_items
    from probe.models.loading import load_model

    loaded = load_model("reference")
    images, texts = heldout_image_samples(CalibrationSpec(), 2), heldout_text_samples(2)
    items = proxy_items(loaded.adapter, loaded.processor, images, texts)
    tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
    for item, sample in zip(items, [*images, *texts]):
        answer = sample.conversations[-1]["value"]
        decoded = tokenizer.decode(item.targets)
        assert decoded.startswith(answer) and len(decoded) - len(answer) < 20  # then only the turn's end
        assert item.group == ("image" if sample.image_loader is not None else "text")


@pytest.mark.parametrize("family", tiny_families())
def test_every_family_renders_held_out_conversations_with_their_answers_apart(family):
    from probe.evaluation.divergence import dense_answers, proxy_items
    from probe.models.loading import load_model

    loaded = load_model(f"tiny:{family}")
    items = proxy_items(loaded.adapter, loaded.processor, heldout_image_samples(CalibrationSpec(), 1),
                        heldout_text_samples(1))
    answers = dense_answers(loaded.model, items, show_progress=False)
    for item, logp in zip(items, answers):
        assert 0 < item.start < item.end == item.inputs["input_ids"].shape[1]
        assert logp.shape[0] == item.end - item.start
        assert torch.allclose(logp.exp().sum(-1), torch.ones(len(logp)), atol=1e-4)
