"""Evaluation through lmms-eval: task files hold the shipped data, the metric pipeline is right, the
wrapper's log-likelihoods are right, hub tasks fail fast offline, and pruned checkpoints load in
lmms-eval's stock wrapper."""

import socket
import time

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAMILIES
from lmms_eval.api.instance import GenerationResult, Instance

from probe.data import offline
from probe.evaluation import harness
from probe.evaluation.harness import HubUnavailableError, UnknownTaskError, evaluate, resolve_tasks, tidy_results
from probe.evaluation.task_files import built_tasks, ensure_task_files
from probe.evaluation.wrapper import ProbeLVLM, UnsupportedRequestError
from probe.models.loading import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny:llava")


def test_task_files_hold_the_shipped_items(tasks_dir):
    folder = ensure_task_files()
    assert folder == tasks_dir and set(built_tasks()) >= {"digits", "skimage_photos"}
    rows = datasets.load_dataset("parquet", data_files=str(folder / "digits" / "test.parquet"))["train"]
    items = offline.digits("test")
    assert len(rows) == len(items) == 400
    for row, item in zip(rows.select(range(10)), items):
        assert row["id"] == item.item_id and row["answer"] == item.answer
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(item.image()))


def _direct_loglikelihood(model, ids: list[int], start: int, **extra) -> float:
    """Token by token: one forward per continuation token over the tokens before it."""
    total = 0.0
    for t in range(start, len(ids)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids[:t]]), **extra).logits[0, -1].float()
        total += torch.log_softmax(logits, -1)[ids[t]].item()
    return total


def test_loglikelihood_equals_a_token_by_token_computation(tiny, rng_image):
    wrapper = ProbeLVLM(loaded=tiny, show_progress=False)
    tok = tiny.processor.tokenizer
    for context, continuation in (("what color is the", " red dog"), ("the cat", " sat on the mat")):
        score, _ = wrapper.continuation_loglikelihood(context, continuation)
        request = Instance("loglikelihood", (context, continuation, None, 0, "t", "test"), idx=0,
                           metadata={"task": "t", "doc_id": 0, "repeats": 1})
        assert wrapper.loglikelihood([request])[0].text[0] == pytest.approx(-score)  # a loss, as lmms-eval ranks
        prefix = tok(context, add_special_tokens=False)["input_ids"]
        ids = tok(context + continuation, add_special_tokens=False)["input_ids"]
        assert ids[: len(prefix)] == prefix
        assert score == pytest.approx(_direct_loglikelihood(tiny.model, ids, len(prefix)), abs=1e-4)

    image = rng_image(0, 40, 48)
    score, _ = wrapper.continuation_loglikelihood("what is shown?", "a red dog", [image])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is shown?"}]}]
    prompt = tiny.adapter.render_prompt(tiny.processor, messages, add_generation_prompt=True)
    full = tiny.processor(text=[prompt + "a red dog"], images=[image], return_tensors="pt")
    start = tiny.processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"].shape[1]
    ids = full["input_ids"][0].tolist()
    direct = _direct_loglikelihood(tiny.model, ids, start, pixel_values=full["pixel_values"])
    assert score == pytest.approx(direct, abs=1e-4)


def test_text_options_share_their_context_and_equal_the_plain_loop(tiny):
    wrapper = ProbeLVLM(loaded=tiny, show_progress=False)
    tok = tiny.processor.tokenizer
    context, endings = "what color is the", [" red dog", " cat", " blue bird on the mat"]
    requests = [Instance("loglikelihood", (context, e, None, 0, "t", "test"), idx=i,
                         metadata={"task": "t", "doc_id": 0, "repeats": 1}) for i, e in enumerate(endings)]
    results = wrapper.loglikelihood(requests)
    prefix = tok(context, add_special_tokens=False)["input_ids"]
    for ending, result in zip(endings, results):
        ids = tok(context + ending, add_special_tokens=False)["input_ids"]
        assert -result.text[0] == pytest.approx(_direct_loglikelihood(tiny.model, ids, len(prefix)), abs=1e-4)


def test_lmms_eval_run_matches_a_plain_scoring_loop(tiny):
    """End to end through lmms-eval; quote_completion's accuracy recomputed by hand from the task file."""
    if "quote_completion" not in built_tasks(ensure_task_files()):
        pytest.skip("Debian's fortunes-min is not installed")
    table = evaluate(tiny, ["quote_completion", "digits"], limit=6, show_progress=False)
    assert set(zip(table.task, table.metric)) == {("quote_completion", "acc"), ("digits", "exact_match")}
    assert (table.n == 6).all() and table.score.between(0, 1).all()

    wrapper = ProbeLVLM(loaded=tiny, show_progress=False)
    items = offline.quote_completion()[:6]
    correct = []
    for item in items:
        scores = [wrapper.continuation_loglikelihood(item.prefix, e)[0] for e in item.endings]
        correct.append(int(int(np.argmax(scores)) == item.answer))
    row = table.set_index("task").loc["quote_completion"]
    assert row["score"] == pytest.approx(sum(correct) / 6)
    # the standard error of the mean of the six 0/1 item scores
    assert row["stderr"] == pytest.approx(np.std(correct, ddof=1) / np.sqrt(6))


def test_a_wrapper_answering_gold_scores_one(tiny, monkeypatch):
    def gold_answers(self, requests):
        answers = []
        for r in requests:
            _, _, _, doc_id, task, split = r.args
            doc = self.task_dict[task][split][doc_id]
            answers.append(doc["answer"] + (". It is." if doc["choices"] else ".\nmore text"))
        return answers

    def gold_likelihoods(self, requests):
        out = []
        for r in requests:
            context, ending, _, doc_id, task, split = r.args
            doc = self.task_dict[task][split][doc_id]
            out.append(GenerationResult((0.0 if ending == doc["endings"][doc["answer"]] else 50.0, True)))
        return out

    monkeypatch.setattr(ProbeLVLM, "generate_until", gold_answers)
    monkeypatch.setattr(ProbeLVLM, "loglikelihood", gold_likelihoods)
    tasks = resolve_tasks("offline")
    table = evaluate(tiny, tasks, limit=15, show_progress=False)
    primary = harness.primary_scores(table)
    assert set(primary.index) == set(tasks) and (primary == 1.0).all()


def test_tidy_results_add_mme_total_and_drop_stderr():
    results = {"results": {"mme": {"alias": "mme", "mme_perception_score,none": 1200.5,
                                   "mme_cognition_score,none": 300.25, "mme_perception_score_stderr,none": "N/A"},
                           "digits": {"exact_match,none": 0.5, "exact_match_stderr_clt,none": 0.1}},
               "n-samples": {"mme": {"effective": 10}, "digits": {"effective": 4}}}
    table = tidy_results(results)
    assert len(table) == 4
    assert harness.primary_scores(table).to_dict() == {"mme": 1500.75, "digits": 0.5}


def test_presets_and_unknown_tasks(monkeypatch):
    monkeypatch.setattr(harness, "hub_reachable", lambda: True)
    assert resolve_tasks("table1,digits") == ["mmbench_en_dev", "scienceqa_img", "vizwiz_vqa_val", "digits"]
    assert len(resolve_tasks("paper9")) == 9
    with pytest.raises(UnknownTaskError, match="no task"):
        resolve_tasks(" , ")


def test_hub_tasks_fail_fast_offline(monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror("no name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    started = time.perf_counter()
    with pytest.raises(HubUnavailableError, match="mmbench_en_dev.*Hugging Face hub"):
        resolve_tasks("table1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="gqa"):
        resolve_tasks("gqa,digits")
    assert time.perf_counter() - started < 5
    assert resolve_tasks("digits") == ["digits"]


def test_cli_eval_writes_scores_and_retention(tmp_path, capsys):
    from probe.cli import main

    out = tmp_path / "scores.csv"
    assert main(["eval", "tiny:llava", "--tasks", "digits,skimage_photos", "--limit", "3", "--out", str(out),
                 "--no-progress"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["task", "metric", "score", "stderr", "n"]
    assert set(table.task) == {"digits", "skimage_photos"}
    dense = tmp_path / "dense.csv"
    dense.write_text("task,metric,score,n\ndigits,exact_match,0.5,3\nskimage_photos,exact_match,0.25,3\n")
    capsys.readouterr()
    assert main(["eval", "tiny:llava", "--tasks", "digits,skimage_photos", "--limit", "3", "--dense", str(dense),
                 "--no-progress"]) == 0
    scores = table.set_index("task")["score"]
    expected = (scores["digits"] / 0.5 + scores["skimage_photos"] / 0.25) / 2 * 100
    printed = capsys.readouterr().out
    assert f"retention against {dense} over digits, skimage_photos: {expected:.2f}%" in printed
    assert "approximate 95% interval [" in printed  # the dense CSV has n: binomial standard errors
    assert main(["eval", "tiny:llava", "--tasks", "digits", "--dense", str(tmp_path / "none.csv")]) == 2


def test_pruned_checkpoint_runs_in_lmms_evals_stock_llava_wrapper(tmp_path):
    """The other route: `probe prune` writes a checkpoint that lmms-eval's own `llava_hf` loads and scores."""
    pytest.importorskip("decord", reason="lmms-eval's llava_hf imports decord; the set-up installs it if it can")
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models.simple.llava_hf import LlavaHf
    from lmms_eval.tasks import TaskManager

    from probe.cli import main

    out = tmp_path / "pruned"
    assert main(["prune", "tiny:llava", "--method", "wanda", "--sparsity", "0.5", "--nsamples", "2", "--out", str(out),
                 "--no-progress"]) == 0
    stock = LlavaHf(pretrained=str(out), device="cpu", device_map="cpu", dtype="float32")
    layers = stock.model.model.language_model.layers
    zeros = [(layer.mlp.up_proj.weight == 0).float().mean().item() for layer in layers]
    assert zeros == pytest.approx([0.5] * len(layers))
    manager = TaskManager("WARNING", include_path=str(ensure_task_files()), include_defaults=False)
    results = simple_evaluate(model=stock, tasks=["digits"], limit=2, task_manager=manager, log_samples=False,
                              bootstrap_iters=0)
    table = tidy_results(results)
    assert table.set_index("metric").loc["exact_match", "n"] == 2


def test_lmms_eval_finds_the_probe_model_by_name():
    """lmms-eval's own registry (what `lmms-eval --model probe` uses) resolves the entry point."""
    from lmms_eval.models import get_model

    cls = get_model("probe")
    assert cls is ProbeLVLM
    model = cls.create_from_arg_string("pretrained=tiny:llava,dtype=float32", {"batch_size": 1, "device": "cpu"})
    assert model.loaded.model.config.model_type == "llava"


def _import_qwen_vl_utils_with_image_path_only():
    """qwen-vl-utils imports torchvision at module level for its video readers only; its image path is
    PIL. Where torchvision is missing (no CPU build here) a stand-in covers that import and is removed
    again, so transformers never sees it."""
    import importlib
    import sys
    import types

    from probe.models.compat import torchvision_available

    if "qwen_vl_utils" in sys.modules or torchvision_available():
        importlib.import_module("qwen_vl_utils")
        return
    standin = types.ModuleType("torchvision")
    standin.__version__ = "0.0"
    standin.io = types.ModuleType("torchvision.io")
    standin.transforms = types.ModuleType("torchvision.transforms")
    standin.transforms.InterpolationMode = None
    modules = {"torchvision": standin, "torchvision.io": standin.io, "torchvision.transforms": standin.transforms}
    sys.modules.update(modules)
    try:
        importlib.import_module("qwen_vl_utils")
    finally:
        for name in modules:
            del sys.modules[name]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_pruned_qwen_checkpoint_runs_in_lmms_evals_stock_qwen_wrappers(family, tmp_path, monkeypatch):
    """`probe prune` checkpoints of the Qwen families load and score in lmms-eval's own `qwen2_vl` and
    `qwen2_5_vl` wrappers (their image path: qwen-vl-utils' data-URL decoding and resizing).

    Qwen's video processors need torchvision, so here the wrapper's processor comes from
    :func:`probe.models.compat.load_processor`, which leaves the video part out."""
    import importlib
    import types

    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from probe.cli import main
    from probe.models.compat import load_processor

    _import_qwen_vl_utils_with_image_path_only()
    module = importlib.import_module(f"lmms_eval.models.simple.{family}")
    if not module._has_qwen_vl:
        module = importlib.reload(module)
    wrapper_class = {"qwen2_vl": "Qwen2_VL", "qwen2_5_vl": "Qwen2_5_VL"}[family]
    monkeypatch.setattr(module, "AutoProcessor",
                        types.SimpleNamespace(from_pretrained=lambda ref, **pixels: load_processor(str(ref))))

    out = tmp_path / "pruned"
    assert main(["prune", f"tiny:{family}", "--method", "wanda", "--sparsity", "0.5", "--pattern", "2:4",
                 "--nsamples", "2", "--out", str(out), "--no-progress"]) == 0
    stock = getattr(module, wrapper_class)(pretrained=str(out), device="cpu", device_map="cpu",
                                           max_pixels=64 * 64, min_pixels=28 * 28)
    for layer in stock.model.model.language_model.layers:
        groups = (layer.mlp.gate_proj.weight == 0).reshape(-1, 4).sum(-1)
        assert (groups >= 2).all()
    manager = TaskManager("WARNING", include_path=str(ensure_task_files()), include_defaults=False)
    results = simple_evaluate(model=stock, tasks=["digits"], limit=2, task_manager=manager, log_samples=True,
                              bootstrap_iters=0, gen_kwargs="max_new_tokens=3")
    table = tidy_results(results)
    assert table.set_index("metric").loc["exact_match", "n"] == 2
    responses = [s["resps"] for s in results["samples"]["digits"]]
    assert len(responses) == 2 and all(isinstance(r[0][0], str) for r in responses)


def test_mean_token_loss_option_divides_by_the_continuation_length(tiny):
    """``loglikelihood="mean"`` is the mean per-token log-probability (lmms-eval's llava_hf convention)."""
    wrapper = ProbeLVLM(loaded=tiny, show_progress=False, loglikelihood="mean")
    tok = tiny.processor.tokenizer
    context, continuation = "the cat", " sat on the mat"
    prefix = tok(context, add_special_tokens=False)["input_ids"]
    ids = tok(context + continuation, add_special_tokens=False)["input_ids"]
    expected = _direct_loglikelihood(tiny.model, ids, len(prefix)) / (len(ids) - len(prefix))
    request = Instance("loglikelihood", (context, continuation, None, 0, "t", "test"), idx=0,
                       metadata={"task": "t", "doc_id": 0, "repeats": 1})
    assert wrapper.loglikelihood([request])[0].text[0] == pytest.approx(-expected, abs=1e-4)
    with pytest.raises(UnsupportedRequestError, match="loglikelihood"):
        ProbeLVLM(loaded=tiny, loglikelihood="median")


def test_logged_samples_hold_every_answer(tiny, tmp_path):
    if "quote_completion" not in built_tasks(ensure_task_files()):
        pytest.skip("Debian's fortunes-min is not installed")
    import json

    out = tmp_path / "samples.jsonl"
    table = evaluate(tiny, ["quote_completion", "digits"], limit=4, show_progress=False, samples_out=out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["task"], r["doc_id"]) for r in rows) == sorted((t, i) for t in ("digits", "quote_completion")
                                                                     for i in range(4))
    wrapper = ProbeLVLM(loaded=tiny, show_progress=False)
    items = offline.quote_completion()[:4]
    for row in (r for r in rows if r["task"] == "quote_completion"):
        item = items[row["doc_id"]]
        losses = [answer[0] for answer in row["answer"]]
        direct = [-wrapper.continuation_loglikelihood(item.prefix, e)[0] for e in item.endings]
        assert losses == pytest.approx(direct, abs=1e-4) and row["target"] == item.answer
    for task, metric in (("digits", "exact_match"), ("quote_completion", "acc")):
        mean = np.mean([r[metric] for r in rows if r["task"] == task])
        assert table.set_index("task").loc[task, "score"] == pytest.approx(mean)
    assert all(isinstance(r["answer"][0], str) for r in rows if r["task"] == "digits")


def test_lmms_evals_own_command_line_scores_the_probe_model(tmp_path):
    """`python -m lmms_eval --model probe ... --include_path TASKS` in a fresh process, to its final table."""
    import subprocess
    import sys

    folder = ensure_task_files()
    result = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "probe", "--model_args", "pretrained=tiny:llava",
         "--tasks", "digits", "--limit", "2", "--include_path", str(folder), "--output_path", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("|digits")]
    assert table and "exact_match" in table[0], result.stdout[-2000:]


@pytest.mark.parametrize(("family", "reduction"), [(f, "sum") for f in FAMILIES] + [("llava", "mean")])
def test_option_scoring_equals_a_token_by_token_loop(family, reduction, rng_image):
    """The options of one item (one context, one image) scored through lmms-eval's request list, the
    context run once and each option from its cache, equal a plain loop: one full forward per option
    token over everything before it (M-RoPE positions included on Qwen2-VL)."""
    loaded = load_model(f"tiny:{family}")
    wrapper = ProbeLVLM(loaded=loaded, show_progress=False, loglikelihood=reduction)
    image = rng_image(3, 40, 48)
    wrapper.task_dict = {"t": {"test": [{"image": image}]}}
    context, options = "what is shown?", ["a red dog", "cat", "the blue bird sings"]

    def doc_to_visual(doc):
        return [doc["image"]]

    requests = [Instance("loglikelihood", (context, option, doc_to_visual, 0, "t", "test"), idx=i,
                         metadata={"task": "t", "doc_id": 0, "repeats": 1}) for i, option in enumerate(options)]
    shared_runs = []
    options_loglikelihood = wrapper.options_loglikelihood
    wrapper.options_loglikelihood = lambda *a, **k: shared_runs.append(1) or options_loglikelihood(*a, **k)
    results = [r.text for r in wrapper.loglikelihood(requests)]
    assert shared_runs == [1]  # one item: its context ran once

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": context}]}]
    prompt = loaded.adapter.render_prompt(loaded.processor, messages, add_generation_prompt=True)
    start = loaded.processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"].shape[1]
    for option, (loss, greedy) in zip(options, results):
        full = dict(loaded.processor(text=[prompt + option], images=[image], return_tensors="pt"))
        ids = full["input_ids"][0].tolist()
        logprobs, argmax = [], []
        for t in range(start, len(ids)):
            # every per-token tensor (ids, mask, token types) cut to the first t tokens
            step = {k: v[:, :t] if v.shape[:2] == (1, len(ids)) else v for k, v in full.items()}
            with torch.no_grad():
                logits = loaded.model(**step).logits[0, -1].float()
            logprobs.append(torch.log_softmax(logits, -1)[ids[t]].item())
            argmax.append(int(logits.argmax()) == ids[t])
        expected = sum(logprobs) / (len(logprobs) if reduction == "mean" else 1)
        assert -loss == pytest.approx(expected, abs=1e-4)
        assert greedy == all(argmax)


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_models_take_float32_processor_outputs(family, rng_image):
    """Processors give float32 pixel values; a bfloat16 model (whose vision tower may not cast them
    itself, e.g. FastVLM's convolutions) is served them in its own dtype, in evaluation and capture."""
    from probe.calibration.capture import capture

    loaded = load_model(f"tiny:{family}", dtype=torch.bfloat16)
    wrapper = ProbeLVLM(loaded=loaded, show_progress=False)
    image = rng_image(5, 40, 48)
    score, _ = wrapper.continuation_loglikelihood("what is shown?", "a red dog", [image])
    assert np.isfinite(score)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is shown?"}]}]
    inputs = loaded.adapter.build_inputs(loaded.processor, messages, [image])
    sample = capture(loaded.model, loaded.adapter, inputs)
    assert sample.hidden.dtype == torch.bfloat16


def test_cli_eval_measures_the_proxy_metric_against_the_model_a_checkpoint_was_pruned_from(tmp_path, capsys):
    import json

    from probe.cli import main

    checkpoint = tmp_path / "ck"
    assert main(["prune", "tiny:llava_next", "--method", "wanda", "--sparsity", "0.5", "--nsamples", "3",
                 "--no-progress", "--out", str(checkpoint)]) == 0
    out = tmp_path / "kl.csv"
    capsys.readouterr()
    assert main(["eval", str(checkpoint), "--metric", "kl", "--proxy-samples", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert "against tiny:llava_next" in capsys.readouterr().out
    summary, per_sample = pd.read_csv(out), pd.read_csv(out.with_suffix(".samples.csv"))
    assert set(zip(summary.group, summary.metric)) == {("image", "kl"), ("image", "nll"), ("text", "kl"),
                                                        ("text", "nll")}
    drawn = set(json.loads((checkpoint / "manifest.json").read_text())["calibration"]["sample_ids"])
    assert len(per_sample) == 4 and not drawn & set(per_sample.sample_id)
    assert (per_sample.kl > 0).all()
    kl = summary.set_index(["group", "metric"]).loc[("image", "kl")]
    assert kl.value == pytest.approx(per_sample[per_sample.group == "image"].kl.mean())
    # the dense model against itself: no divergence at all
    assert main(["eval", "tiny:llava_next", "--metric", "kl", "--dense-model", "tiny:llava_next",
                 "--proxy-samples", "2", "--out", str(tmp_path / "self.csv"), "--no-progress"]) == 0
    assert (pd.read_csv(tmp_path / "self.samples.csv").kl == 0).all()
    assert main(["eval", "tiny:llava_next", "--metric", "kl", "--no-progress"]) == 2
    assert "give the dense model with --dense-model" in capsys.readouterr().err
    assert main(["eval", str(checkpoint), "--metric", "kl", "--limit", "3"]) == 2
    assert "--limit is a setting of task scoring" in capsys.readouterr().err
