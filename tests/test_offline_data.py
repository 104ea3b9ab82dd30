"""Offline tasks come from the real shipped data, with disjoint splits and gold answers intact."""

import collections
import gzip

import numpy as np
import pytest
import torch

from probe.data import offline
from probe.evaluation import offline as scoring
from probe.models import get_adapter
from probe.tiny import tiny_lvlm


def test_fashion_mnist_test_file_has_1000_images_per_class():
    images, labels = offline._fashion_arrays("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert set(collections.Counter(labels.tolist()).values()) == {1000}
    with gzip.open(offline.FASHION_DIR / "t10k-labels-idx1-ubyte.gz") as fh:
        raw = fh.read()
    assert int.from_bytes(raw[:4], "big") == 2049 and raw[8:18] == bytes(labels[:10].tolist())


def test_splits_are_disjoint_and_answers_are_labels():
    from sklearn.datasets import load_digits

    train, test = offline.digits("train"), offline.digits("test")
    assert not {i.item_id.split("/")[-1] for i in train} & {i.item_id.split("/")[-1] for i in test}
    target = load_digits().target
    assert all(item.answer == str(target[int(item.item_id.split("/")[-1])]) for item in test)
    fashion = offline.fashion_mnist("test")
    _, labels = offline._fashion_arrays("test")
    assert all(i.answer == offline.FASHION_CLASSES[labels[int(i.item_id.split("/")[-1])]] for i in fashion)
    assert len(offline.projector_training_items()) == 1520


def test_skimage_choice_points_to_the_images_own_description():
    for item in offline.skimage_photos():
        name = item.item_id.split("/")[1]
        import skimage.data

        description = getattr(skimage.data, name).__doc__.strip().splitlines()[0]
        line = next(x for x in item.question.splitlines() if x.startswith(item.answer + ". "))
        assert line[3:] == description


def test_quote_completion_reassembles_the_original_quote():
    quotes = dict(offline._quotes())
    for item in offline.quote_completion()[:50]:
        original = quotes[item.item_id.split("/", 1)[1]]
        assert item.prefix + item.endings[item.answer] == original
        assert len(set(item.endings)) == 4


def test_unknown_task_is_named():
    with pytest.raises(scoring.UnknownTaskError, match="nope"):
        scoring.resolve_tasks("digits,nope")
    assert "quote_completion" in scoring.resolve_tasks("offline")


@pytest.mark.parametrize("prediction,answer,choices,ok", [
    ("Sandal", "Sandal", [], True), (" sandal.\nmore", "Sandal", [], True), ("Sandals", "Sandal", [], False),
    ("B. Chelsea the cat", "B", ["A", "B", "C", "D"], True), ("(c)", "C", ["A", "B", "C", "D"], True),
    ("Because", "B", ["A", "B", "C", "D"], False), ("7", "7", [], True), ('"T-shirt"', "T-shirt", [], True),
])
def test_answer_matching(prediction, answer, choices, ok):
    item = offline.VQAItem("x", lambda: None, "q", answer, choices)
    assert scoring.is_correct(prediction, item) is ok


def test_ending_loglikelihood_equals_a_token_by_token_computation():
    tiny = tiny_lvlm("llava")
    tok = tiny.processor.tokenizer
    item = offline.CompletionItem("q", "what color is the", [" cat", " red dog", " sky"], 0)
    scores = scoring.ending_loglikelihoods(tiny.model, tok, item)
    for ending, score in zip(item.endings, scores):
        prefix = tok(item.prefix, add_special_tokens=False)["input_ids"]
        full = tok(item.prefix + ending, add_special_tokens=False)["input_ids"]
        total = 0.0
        for t in range(len(prefix), len(full)):
            with torch.no_grad():
                logits = tiny.model(input_ids=torch.tensor([full[:t]])).logits[0, -1]
            total += torch.log_softmax(logits, -1)[full[t]].item()
        assert abs(total - score) < 1e-4


def test_a_model_answering_gold_scores_one(monkeypatch):
    tiny = tiny_lvlm("llava")
    monkeypatch.setattr(scoring, "generate_answer", lambda model, adapter, processor, item: item.answer + ".")
    for task in ("digits", "skimage_photos", "fashion_mnist"):
        score = scoring.evaluate_task(tiny.model, get_adapter(tiny.model), tiny.processor, task, limit=20,
                                      show_progress=False)
        assert score.score == 1.0 and score.n == min(20, len(offline.task_items(task, "test")))
