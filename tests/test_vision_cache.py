"""The vision feature cache: same outputs, vision tower run once per distinct image."""

import copy

import pytest
import torch
from conftest import random_image, user_turn

from probe.models import get_adapter
from probe.models.tiny import tiny_lvlm
from probe.models.vision_cache import VisionFeatureCache


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl", "gemma3", "idefics3"])
def test_cached_features_give_identical_logits_and_skip_the_tower(family):
    tiny = tiny_lvlm(family)
    adapter = get_adapter(tiny.model)
    images = [random_image(0, 40, 48), random_image(1, 40, 48)]
    inputs = [adapter.build_inputs(tiny.processor, user_turn("what color"), [img]) for img in images]
    with torch.no_grad():
        reference = [tiny.model(**x).logits for x in inputs]

    inner = tiny.model.model
    tower = next(getattr(inner, n) for n in ("vision_tower", "vision_model", "visual") if hasattr(inner, n))
    calls = []
    tower.register_forward_hook(lambda m, i, o: calls.append(1))
    cache = VisionFeatureCache()
    pruned = copy.deepcopy(tiny.model)  # another model sharing the vision side
    for model in (tiny.model, pruned, tiny.model):
        with cache.attached(model), torch.no_grad():
            for x, ref in zip(inputs, reference):
                if model is tiny.model:
                    assert torch.equal(model(**x).logits, ref)
                else:
                    model(**x)
    assert len(calls) == 2 and cache.misses == 2 and cache.hits == 4 and len(cache) == 2
    assert "get_image_features" not in tiny.model.model.__dict__


def test_evaluation_and_capture_share_a_cache():
    from probe.calibration.calibrate import capture_calibration
    from probe.data.calibration import CalibrationSpec
    from probe.evaluation.harness import evaluate
    from probe.models.loading import LoadedModel, load_model

    loaded = load_model("tiny:llava")
    cache = VisionFeatureCache()
    plain = evaluate(loaded, ["digits"], limit=4, show_progress=False)
    first = evaluate(loaded, ["digits"], limit=4, show_progress=False, vision_cache=cache)
    twin = LoadedModel(copy.deepcopy(loaded.model), loaded.processor, loaded.adapter, loaded.ref)
    second = evaluate(twin, ["digits"], limit=4, show_progress=False, vision_cache=cache)
    assert plain.equals(first) and plain.equals(second) and cache.misses == 4 and cache.hits >= 4
    spec = CalibrationSpec(nsamples=3)
    uncached = capture_calibration(loaded, spec, show_progress=False)
    cached = capture_calibration(loaded, spec, show_progress=False, vision_cache=cache)
    assert all(torch.equal(a.hidden, b.hidden) for a, b in zip(uncached, cached)) and len(cache) == 7


def test_cache_hands_out_copies_and_never_alters_its_store():
    """Moving a hit to the model's device must not move or alter the stored entry."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    calls = []

    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

        def get_image_features(self, pixel_values):
            calls.append(1)
            return BaseModelOutputWithPooling(last_hidden_state=pixel_values * 2, pooler_output=pixel_values.sum())

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()

    model, pixels = Outer(), torch.arange(4.0)
    cache = VisionFeatureCache(store_device="cpu")
    with cache.attached(model):
        first = model.model.get_image_features(pixels)
        first["last_hidden_state"] = torch.full((4,), -1.0)  # a caller changing its result
        second = model.model.get_image_features(pixels)
    assert len(calls) == 1 and cache.hits == 1
    assert torch.equal(second.last_hidden_state, torch.arange(4.0) * 2)
    stored = next(iter(cache._store.values()))
    assert stored is not second and torch.equal(stored.last_hidden_state, torch.arange(4.0) * 2)
