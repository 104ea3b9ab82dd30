"""Calibration sources and their errors, all raised before any model work."""

import json

import numpy as np
import pytest
import torch
from conftest import random_image

from probe.data import offline
from probe.data.calibration import (
    CalibrationError,
    CalibrationSpec,
    draw,
    load_samples,
    prepare,
    to_messages,
    validate,
)
from probe.models import get_adapter
from probe.models.tiny import tiny_lvlm


def write_set(tmp_path, records, images=("a.png", "b.png", "c.png")):
    (tmp_path / "img").mkdir()
    for i, name in enumerate(images):
        random_image(i, 20, 30).save(tmp_path / "img" / name)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


def record(i, image, source="sharegpt4v", question="<image>\nWhat is shown?"):
    return {"id": f"r{i}", "image": image, "data_source": source,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": "a cat"}]}


def test_llava_next_data_layout_with_subset_and_seeded_draw(tmp_path):
    recs = [record(0, "a.png"), record(1, "b.png", source="coco"), record(2, "c.png")]
    path = write_set(tmp_path, recs)
    spec = CalibrationSpec(source="json", path=str(path), image_root=str(tmp_path / "img"), subset="sharegpt4v",
                           nsamples=2, seed=3)
    samples = load_samples(spec)
    assert [s.sample_id for s in samples] == ["r0", "r2"]
    assert [s.sample_id for s in draw(samples, 2, 3)] == [s.sample_id for s in draw(samples, 2, 3)]
    tiny = tiny_lvlm("llava_next")
    items = prepare(spec, get_adapter(tiny.model), tiny.processor, tiny.model.config)
    assert sorted(i.sample_id for i in items) == ["r0", "r2"]
    assert all(i.meta["n_visual"] > 0 for i in items)


def test_jsonl_and_message_conversion(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(record(i, "x.png", question="Look: <image> what?")) for i in range(2)))
    samples = load_samples(CalibrationSpec(source="json", path=str(path)))
    assert len(samples) == 2
    messages = to_messages(samples[0])
    assert messages[0] == {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image"},
                                                       {"type": "text", "text": "what?"}]}
    assert messages[1]["role"] == "assistant"


def test_hf_datasets_source(tmp_path):
    import datasets
    ds = datasets.Dataset.from_dict({
        "id": ["h0", "h1"], "image": [random_image(0, 16, 16), random_image(1, 16, 16)],
        "conversations": [record(0, "")["conversations"]] * 2,
    })
    ds.save_to_disk(str(tmp_path / "ds"))
    samples = load_samples(CalibrationSpec(source="hf", path=str(tmp_path / "ds")))
    assert [s.sample_id for s in samples] == ["h0", "h1"]
    assert validate(samples)[0].size == (16, 16)


@pytest.mark.parametrize("recs,images,message", [
    ([record(0, "missing.png")], ("a.png",), "r0"),
    ([record(0, "bad.png")], ("a.png",), "cannot be read"),
    ([record(0, "a.png", question="What is shown?")], ("a.png",), "exactly one '<image>'"),
])
def test_bad_samples_are_named(tmp_path, recs, images, message):
    path = write_set(tmp_path, recs, images)
    (tmp_path / "img" / "bad.png").write_text("not an image")
    spec = CalibrationSpec(source="json", path=str(path), image_root=str(tmp_path / "img"), nsamples=1)
    with pytest.raises(CalibrationError, match=message):
        validate(load_samples(spec))


def test_too_few_samples_and_missing_files(tmp_path):
    path = write_set(tmp_path, [record(0, "a.png")])
    with pytest.raises(CalibrationError, match="only 1"):
        draw(load_samples(CalibrationSpec(source="json", path=str(path))), 5, 0)
    with pytest.raises(CalibrationError, match="not found"):
        load_samples(CalibrationSpec(source="json", path=str(tmp_path / "nope.json")))
    with pytest.raises(CalibrationError, match="image folder"):
        load_samples(CalibrationSpec(source="json", path=str(path), image_root=str(tmp_path / "nodir")))


def test_sample_without_visual_tokens_after_processing_is_named(tmp_path):
    path = write_set(tmp_path, [record(0, "a.png")])
    tiny = tiny_lvlm("llava")

    class DropsImages(type(get_adapter("llava"))):
        def build_inputs(self, processor, messages, images, add_generation_prompt=False):
            return {"input_ids": torch.tensor([[2, 8, 9]])}

    spec = CalibrationSpec(source="json", path=str(path), image_root=str(tmp_path / "img"), nsamples=1)
    with pytest.raises(CalibrationError, match="r0.*no visual tokens"):
        prepare(spec, DropsImages(), tiny.processor, tiny.model.config)


def test_bundled_set_is_real_and_labelled():
    from sklearn.datasets import load_digits

    samples = load_samples(CalibrationSpec())
    assert len(samples) > 1000
    labels = load_digits().target
    for sample in (s for s in samples if s.sample_id.startswith("digits/")):
        index = int(sample.sample_id.split("/")[1])
        assert f"handwritten digit {labels[index]} " in sample.conversations[1]["value"]
    fashion = [s for s in samples if s.sample_id.startswith("fashion_mnist/")]
    if offline.fashion_mnist_available():
        _, fashion_labels = offline.fashion_arrays("train")
        assert len(fashion) == len(samples) // 2
        for sample in fashion[:50]:
            label = offline.FASHION_CLASSES[int(fashion_labels[int(sample.sample_id.split("/")[2])])]
            assert f"photograph of a {label.lower()}:" in sample.conversations[1]["value"]


def test_bundled_calibration_never_holds_an_evaluation_item():
    """Calibration and evaluation items are disjoint: no digit of the digits test split, no Fashion-MNIST
    image from its test file, no scikit-image photograph (all are skimage_photos test items)."""
    samples = load_samples(CalibrationSpec())
    test_digits = {int(item.item_id.split("/")[2]) for item in offline.digits("test")}
    used_digits = {int(s.sample_id.split("/")[1]) for s in samples if s.sample_id.startswith("digits/")}
    assert len(test_digits) == 400 and used_digits and not used_digits & test_digits
    assert all(s.sample_id.startswith(("digits/", "fashion_mnist/train/")) for s in samples)
    # by content too: no calibration image equals a test image of digits or skimage_photos
    test_images = {np.asarray(item.image()).tobytes() for item in offline.digits("test") + offline.skimage_photos()}
    digits = [s for s in samples if s.sample_id.startswith("digits/")]
    clashes = [s.sample_id for s in digits if np.asarray(s.load_image().convert("RGB")).tobytes() in test_images]
    assert clashes == []
