"""A plain causal language model through the same engine: loaded from a folder, calibrated on the text of
the calibration samples, pruned with Wanda masks equal to a plain computation from its own inputs, checked
by `probe check`, and measured by perplexity equal to a plain loop over the windows."""

import copy
import json
import math
import statistics

import pytest
import torch
import transformers as tf

from probe.calibration.calibrate import capture_calibration
from probe.data.calibration import CalibrationSpec, prepare, select
from probe.evaluation.perplexity import PerplexityError, perplexity, text_windows
from probe.models.generic import GenericAdapter
from probe.models.loading import load_model
from probe.models.tiny import WORDS, text_config, word_tokenizer
from probe.pruning.engine import PruneConfig, prune

HELD_OUT = " ".join(WORDS[(7 * i) % len(WORDS)] for i in range(400))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    tf.LlamaForCausalLM(text_config(tf.LlamaConfig, 128)).save_pretrained(path)
    word_tokenizer({}, 128).save_pretrained(path)
    return path


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for row in range(scores.shape[0]):
        mask[row, scores[row].argsort()[:int(scores.shape[1] * sparsity)]] = True
    return mask


def test_a_causal_language_model_is_pruned_with_wanda_on_its_text(folder):
    loaded = load_model(str(folder))
    model, adapter = loaded.model, loaded.adapter
    assert isinstance(adapter, GenericAdapter) and adapter.text_only
    spec = CalibrationSpec(nsamples=3)
    items = prepare(select(spec), adapter, loaded.processor, model.config)
    samples = capture_calibration(loaded, spec, show_progress=False)
    assert all(not s.visual_mask.any() for s in samples)

    seen = {"q": [], "down": []}  # block 0's inputs on the dense model, from plain hooks
    layer = model.model.layers[0]
    hooks = [layer.self_attn.q_proj.register_forward_pre_hook(lambda m, a: seen["q"].append(a[0][0])),
             layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: seen["down"].append(a[0][0]))]
    with torch.no_grad():
        for item in items:
            model(input_ids=item.inputs["input_ids"])
    for hook in hooks:
        hook.remove()

    pruned = copy.deepcopy(model)
    prune(pruned, adapter, samples, PruneConfig(method="wanda"), show_progress=False)
    for key, dense, after in (("q", layer.self_attn.q_proj, pruned.model.layers[0].self_attn.q_proj),
                              ("down", layer.mlp.down_proj, pruned.model.layers[0].mlp.down_proj)):
        rows = torch.cat(seen[key])
        expected = row_mask(dense.weight.abs() * rows.pow(2).sum(0).sqrt(), 0.5)
        assert torch.equal(after.weight == 0, expected), key


def test_perplexity_equals_a_plain_loop_over_windows(folder):
    loaded = load_model(str(folder))
    result = perplexity(loaded.model, loaded.processor, HELD_OUT, seq_len=32, show_progress=False)
    ids = loaded.processor(HELD_OUT, add_special_tokens=False)["input_ids"]
    means = []
    with torch.no_grad():
        for start in range(0, len(ids) - 31, 32):
            window = torch.tensor([ids[start:start + 32]])
            logp = torch.log_softmax(loaded.model(input_ids=window).logits[0].double(), dim=-1)
            means.append(-sum(float(logp[t, window[0, t + 1]]) for t in range(31)) / 31)
    assert result.windows == len(means) == len(ids) // 32 and result.tokens == len(means) * 31
    assert result.mean_nll == pytest.approx(statistics.fmean(means), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(statistics.fmean(means)), rel=1e-5)
    se = statistics.stdev(means) / math.sqrt(len(means))
    assert result.standard_error == pytest.approx(se, rel=1e-4)
    assert result.low == pytest.approx(math.exp(statistics.fmean(means) - 1.96 * se), rel=1e-4)
    with pytest.raises(PerplexityError, match="fewer than one window"):
        text_windows(torch.arange(10), 32)


def test_probe_check_prune_and_ppl_on_a_causal_language_model(folder, tmp_path, capsys):
    from probe.cli import main

    assert main(["check", str(folder), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "a text-only language model: every token is text" in out and out.strip().endswith("supported")

    text = tmp_path / "held_out.txt"
    text.write_text(HELD_OUT)
    pruned = tmp_path / "llama-wanda"
    assert main(["prune", str(folder), "--method", "wanda", "--nsamples", "2", "--out", str(pruned),
                 "--no-progress"]) == 0
    result = tmp_path / "ppl.json"
    capsys.readouterr()
    assert main(["ppl", str(pruned), "--text", str(text), "--seq-len", "32", "--out", str(result),
                 "--no-progress"]) == 0
    assert "perplexity" in capsys.readouterr().out
    record = json.loads(result.read_text())
    assert record["windows"] == 400 // 32 and record["low"] < record["perplexity"] < record["high"]

    assert main(["ppl", str(folder), "--text", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["ppl", str(folder), "--text", str(text), "--max-pixels", "1000"]) == 2
    assert "probe ppl reads text only" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("the cat")
    assert main(["ppl", str(folder), "--text", str(short), "--seq-len", "32", "--no-progress"]) == 2
    assert "fewer than one window of 32" in capsys.readouterr().err


def test_families_list_decoder_only_language_models_but_not_encoders(capsys):
    from probe.cli import main
    from probe.models import UnknownModelFamilyError, check_family

    assert main(["families"]) == 0
    listed = capsys.readouterr().out.split("plain causal language models", 1)[1].split()
    assert {"llama", "mistral", "qwen2"} <= set(listed) and "bert" not in listed
    with pytest.raises(UnknownModelFamilyError, match="unknown model family 'bert'"):
        check_family("bert")  # an encoder with a causal head is a masked language model first


def test_probe_check_config_builds_a_small_causal_language_model(tmp_path, capsys):
    from probe.cli import main

    tf.MistralConfig().save_pretrained(tmp_path / "mistral")  # a full-size config, as a hub model's holds it
    assert main(["check", "--config", str(tmp_path / "mistral"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4 blocks of MistralDecoderLayer" in out and out.strip().endswith("mistral: supported")
