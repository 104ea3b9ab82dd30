"""Offline tasks come from the real shipped data, with disjoint splits and gold answers intact."""

import collections
import gzip

import numpy as np
import pytest

from probe.data import offline
from probe.evaluation.task_files import is_correct


def test_fashion_mnist_test_file_has_1000_images_per_class():
    images, labels = offline.fashion_arrays("test")
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
    _, labels = offline.fashion_arrays("test")
    assert all(i.answer == offline.FASHION_CLASSES[labels[int(i.item_id.split("/")[-1])]] for i in fashion)
    from probe.reference import reference_spec
    from probe.reference.train import training_items

    # the small reference's projector learns from Fashion-MNIST's 1,000 then the 520 training digits
    items = training_items(reference_spec("reference"))
    assert [i.item_id.split("/")[0] for i in items] == ["fashion_mnist"] * 1000 + ["digits"] * 520


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


@pytest.mark.parametrize("prediction,answer,choices,ok", [
    ("Sandal", "Sandal", [], True), (" sandal.\nmore", "Sandal", [], True), ("Sandals", "Sandal", [], False),
    ("B. Chelsea the cat", "B", ["A", "B", "C", "D"], True), ("(c)", "C", ["A", "B", "C", "D"], True),
    ("Because", "B", ["A", "B", "C", "D"], False), ("7", "7", [], True), ('"T-shirt"', "T-shirt", [], True),
])
def test_answer_matching(prediction, answer, choices, ok):
    assert is_correct(prediction, answer, choices) is ok
