"""Batched scoring equals batch one: greedy answers and log-likelihoods on every family's tiny model and
on the reference model, with images of different sizes and text-only requests in one run; the MoT probe
batched; token pruning served at batch one; ``auto``'s search; two processes (gloo) equal one."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
from conftest import FAMILIES, random_image
from lmms_eval.api.instance import Instance

from probe.evaluation.batching import AUTO, CPU_AUTO, BatchRunner, BatchSizeError, grouped_order, parse_batch_size
from probe.evaluation.harness import evaluate_with_items
from probe.evaluation.wrapper import ProbeLVLM
from probe.experiments.grid import GridConfig, GridConfigError
from probe.models.loading import load_model

QUESTIONS = ["what is shown?", "describe the picture", "what color is the car in the image on the left",
             "how many", "is this a cat", "which one is red"]
OPTIONS = ["a red dog", " cat", "the blue bird sings on the tree"]


def _docs() -> list[dict]:
    """Six items whose images all differ in size (any-resolution tiles, Qwen's dynamic patch counts)."""
    return [{"image": random_image(i, 30 + 9 * i, 60 - 5 * i)} for i in range(len(QUESTIONS))]


def _doc_to_visual(doc: dict) -> list:
    return [doc["image"]]


def _instance(kind: str, args: tuple, doc_id: int, idx: int = 0) -> Instance:
    return Instance(kind, args, idx=idx, metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


def _generation_requests() -> list[Instance]:
    """Image and text-only requests, interleaved, with two answer lengths and stop strings."""
    out = []
    for i, question in enumerate(QUESTIONS):
        settings = {"max_new_tokens": 4 + 2 * (i % 2), "until": ["\n\n", "sky"]}
        out.append(_instance("generate_until", (question, settings, _doc_to_visual, i, "t", "test"), i))
        if i < 3:
            out.append(_instance("generate_until", (question, {"max_new_tokens": 5}, None, i, "t", "test"), i))
    return out


def _loglikelihood_requests() -> list[Instance]:
    """Image and text-only requests interleaved: items with three options that share their context, and
    requests with a context of their own (one continuation each: the ones batched across requests)."""
    out = []
    for i, question in enumerate(QUESTIONS):
        if i < 3:
            out += [_instance("loglikelihood", (question, o, _doc_to_visual, i, "t", "test"), i, k)
                    for k, o in enumerate(OPTIONS)]
            out += [_instance("loglikelihood", (question, " " + o.strip(), None, i, "t", "test"), i, k)
                    for k, o in enumerate(OPTIONS)]
        out.append(_instance("loglikelihood", (question + " then", OPTIONS[i % 3], _doc_to_visual, i, "t", "test"), i))
        out.append(_instance("loglikelihood", (question + " then", " " + OPTIONS[i % 3].strip(), None, i, "t", "test"),
                             i))
    return out


def _serve(loaded, batch_size: int | str) -> tuple[list[str], list[tuple[float, bool]], list[int]]:
    """(answers, (loss, greedy) per option, the batch sizes of the model's forwards) at one batch size."""
    wrapper = ProbeLVLM(loaded=loaded, show_progress=False, batch_size=batch_size)
    wrapper.task_dict = {"t": {"test": _docs()}}
    rows: list[int] = []

    def record(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            rows.append(ids.shape[0])

    handle = loaded.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        answers = wrapper.generate_until(_generation_requests())
        scores = [r.text for r in wrapper.loglikelihood(_loglikelihood_requests())]
    finally:
        handle.remove()
    return answers, scores, rows


def _assert_equal_to_batch_one(loaded, batch_size: int | str = 3) -> None:
    answers_1, scores_1, _ = _serve(loaded, 1)
    answers_n, scores_n, rows = _serve(loaded, batch_size)
    assert max(rows) > 1  # the batched run did put several requests in one forward
    assert answers_n == answers_1 and any(answers_1)
    for (loss_1, greedy_1), (loss_n, greedy_n) in zip(scores_1, scores_n, strict=True):
        assert loss_n == pytest.approx(loss_1, abs=1e-4)
        assert greedy_n == greedy_1


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_answers_and_loglikelihoods_equal_batch_one(family):
    _assert_equal_to_batch_one(load_model(f"tiny:{family}"))


def test_batched_scoring_equals_batch_one_on_the_reference_model():
    _assert_equal_to_batch_one(load_model("reference"), batch_size=4)


def test_the_mot_probe_scores_batched_as_at_batch_one():
    from probe.pruning.mot import MoTProbe

    loaded = load_model("tiny:llava")
    probe = MoTProbe(loaded.model, loaded.adapter, private="visual")
    with torch.no_grad():  # the visual pathway's copies differ from the text pathway's
        for module in loaded.model.modules():
            if type(module).__name__ == "RoutedLinear":
                module.visual.weight.mul_(0.5)
    _assert_equal_to_batch_one(loaded)
    assert probe.router.visual is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_text_options_after_an_image_request_equal_a_token_by_token_loop(family):
    """At batch one the options continue from their context's cache; a text item scored after an image item
    must not inherit the image's position offsets (Qwen-VL keeps them on the model between forwards)."""
    loaded = load_model(f"tiny:{family}")
    wrapper = ProbeLVLM(loaded=loaded, show_progress=False)
    wrapper.options_loglikelihood("what is shown?", ["a red dog", "cat"], [random_image(1, 40, 56)])
    context, options = "what color is the", [" red dog", " cat is"]
    scored = wrapper.options_loglikelihood(context, options)
    tokenizer = loaded.processor.tokenizer
    start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    for option, (logprob, _) in zip(options, scored):
        ids = tokenizer(context + option, add_special_tokens=False)["input_ids"]
        expected = 0.0
        for t in range(start, len(ids)):
            with torch.no_grad():
                logits = loaded.model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].float()
            expected += torch.log_softmax(logits, -1)[ids[t]].item()
        assert logprob == pytest.approx(expected, abs=1e-4)


def test_token_pruning_is_served_at_batch_one_and_says_so(capsys):
    loaded = load_model("tiny:llava")
    wrapper = ProbeLVLM(loaded=loaded, show_progress=False, batch_size=4, token_pruning="fastv(k=1, ratio=0.5)")
    assert not wrapper.batched
    assert "serves one request at a time" in capsys.readouterr().err


def test_evaluation_through_lmms_eval_is_the_same_at_batch_four(tmp_path):
    loaded = load_model("tiny:llava")
    runs = {}
    for size in (1, 4):
        samples = tmp_path / f"samples-{size}.jsonl"
        table, items = evaluate_with_items(loaded, ["digits", "quote_completion"], limit=9, show_progress=False,
                                           batch_size=size, samples_out=samples)
        answers = {(r["task"], r["doc_id"]): r["answer"] for r in map(json.loads, samples.open())}
        runs[size] = (table, items.sort_values(["task", "metric", "doc_id"]).reset_index(drop=True), answers)
    pd.testing.assert_frame_equal(runs[1][0], runs[4][0])
    pd.testing.assert_frame_equal(runs[1][1], runs[4][1])
    assert runs[1][2].keys() == runs[4][2].keys()
    for key, answer in runs[1][2].items():
        if key[0] == "digits":  # generated text: the same
            assert runs[4][2][key] == answer
        else:  # each option's (loss, greedy)
            batched = runs[4][2][key]
            assert [g for _, g in batched] == [g for _, g in answer]
            assert [loss for loss, _ in batched] == pytest.approx([loss for loss, _ in answer], abs=1e-4)


def test_batch_sizes_are_positive_integers_or_auto():
    assert parse_batch_size("auto") == AUTO and parse_batch_size("16") == 16 and parse_batch_size(2) == 2
    for bad in ("0", "-3", "1.5", "many", None, 0):
        with pytest.raises(BatchSizeError, match="positive integer or auto"):
            parse_batch_size(bad)
    with pytest.raises(GridConfigError, match="positive integer or auto"):
        GridConfig.create(batch_size="lots")
    assert GridConfig.create(batch_size="auto").batch_size == AUTO


def test_requests_are_grouped_by_kind_and_sorted_longest_first():
    keys = ["a", "b", "a", "a", "b"]
    lengths = [3, 9, 7, 3, 1]
    expected = []  # a plain loop: each key's indices in order of first appearance, stable by length
    for key in dict.fromkeys(keys):
        members = [i for i in range(len(keys)) if keys[i] == key]
        expected.append(sorted(members, key=lambda i: -lengths[i]))
    assert grouped_order(keys, lengths) == expected == [[2, 0, 3], [1, 4]]


def test_auto_halves_until_the_longest_batch_fits_and_keeps_that_size():
    tried = []

    def step(batch):
        tried.append(len(batch))
        if len(batch) > 12:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [i * 10 for i in batch]

    runner = BatchRunner("auto", torch.device("cuda"))
    group = list(range(100))
    assert runner.run(group, step) == [i * 10 for i in group]
    assert tried[:4] == [64, 32, 16, 8] and runner.size == 8
    assert set(tried[4:]) == {8, 4}  # the rest in batches of 8 (the last holds 100 - 12 * 8 = 4)
    assert BatchRunner("auto", torch.device("cpu")).size == CPU_AUTO

    def broken(batch):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):  # only memory errors make it halve
        BatchRunner("auto", torch.device("cuda")).run(group, broken)


def test_cli_eval_takes_a_batch_size(tmp_path, capsys):
    from probe.cli import main

    out = tmp_path / "scores.csv"
    assert main(["eval", "tiny:llava", "--tasks", "digits", "--limit", "3", "--batch-size", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert set(pd.read_csv(out).task) == {"digits"}
    with pytest.raises(SystemExit):
        main(["eval", "tiny:llava", "--batch-size", "0"])
    assert "positive integer or auto" in capsys.readouterr().err


DATA_PARALLEL = textwrap.dedent("""
    import json, os, sys
    import torch.multiprocessing as mp

    def work(rank, world, port, out):
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
        from pathlib import Path
        from probe.evaluation.harness import evaluate_with_items
        from probe.models.loading import load_model
        samples = Path(out) / "samples.jsonl"
        table, items = evaluate_with_items(load_model("tiny:llava"), ["digits", "quote_completion"], limit=7,
                                           show_progress=False, batch_size=2,
                                           samples_out=samples if rank == 0 else None)
        if rank == 0:
            items.to_csv(Path(out) / "items.csv", index=False)
            table.to_csv(Path(out) / "table.csv", index=False)
        elif len(items) or len(table):
            raise SystemExit("a rank other than 0 returned scores")

    if __name__ == "__main__":
        mp.spawn(work, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_gather_the_scores_of_one(tmp_path):
    """Data-parallel as torchrun launches it (gloo on the CPU): the ranks split the requests and rank 0's
    gathered items and answers equal a one-process run's."""
    script = tmp_path / "data_parallel.py"
    script.write_text(DATA_PARALLEL)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run([sys.executable, str(script), str(_free_port()), str(tmp_path)], capture_output=True,
                            text=True, timeout=600, env={**env, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    one_samples = tmp_path / "one.jsonl"
    table, items = evaluate_with_items(load_model("tiny:llava"), ["digits", "quote_completion"], limit=7,
                                       show_progress=False, samples_out=one_samples)
    gathered = pd.read_csv(tmp_path / "items.csv")
    keys = ["task", "metric", "doc_id"]
    pd.testing.assert_frame_equal(gathered.sort_values(keys).reset_index(drop=True),
                                  items.sort_values(keys).reset_index(drop=True), check_dtype=False)
    assert len(gathered) == 14

    def answers(path):  # the generated answers (option losses are compared through the items)
        return sorted((r["task"], r["doc_id"], r["answer"]) for r in map(json.loads, path.open())
                      if r["task"] == "digits")

    assert answers(tmp_path / "samples.jsonl") == answers(one_samples)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "table.csv"), table, check_dtype=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_checkpoints_hold_what_vllm_reads_for_their_family(family, tmp_path, capsys):
    """The vLLM route: a weight-pruned checkpoint names the family's stock architecture and holds exactly the
    tensors transformers writes for the unpruned model (the names vLLM maps), with no compressed-weights config;
    `probe prune` says whether lmms-eval's vllm model serves it as is."""
    from probe.cli import main
    from probe.evaluation.vllm_route import VLLM_ARCHITECTURES, checkpoint_tensor_names, vllm_problems

    out = tmp_path / "pruned"
    assert main(["prune", f"tiny:{family}", "--method", "magnitude", "--sparsity", "0.5", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    stock = load_model(f"tiny:{family}")
    stock.model.save_pretrained(tmp_path / "stock")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [type(stock.model).__name__]
    assert checkpoint_tensor_names(out) == checkpoint_tensor_names(tmp_path / "stock")
    if config["architectures"][0] in VLLM_ARCHITECTURES:
        assert vllm_problems(out) == [] and "vllm model serves it as is" in printed
    else:
        assert "not one vLLM serves natively" in vllm_problems(out)[0] and "score it with the probe model" in printed
    config["probe_token_pruning"] = "fastv(k=2, ratio=0.5)"
    config["quantization_config"] = {"quant_method": "compressed-tensors"}
    (out / "config.json").write_text(json.dumps(config))
    problems = " ".join(vllm_problems(out))
    assert "token pruning (fastv(k=2, ratio=0.5)) is applied only by the probe model" in problems
    assert "quantization_config" in problems


def test_a_model_spread_by_device_map_auto_scores_as_on_one_device(tmp_path, monkeypatch):
    """``--device auto`` loads a folder through transformers' device_map="auto" (here, without a GPU, all on
    the CPU) and scores what the model on one device scores."""
    from transformers import AutoModelForImageTextToText

    from probe.models.compat import save_processor

    tiny = load_model("tiny:llava")
    tiny.model.save_pretrained(tmp_path / "model")
    save_processor(tiny.processor, tmp_path / "model")
    placements = []
    original = AutoModelForImageTextToText.from_pretrained

    def spy(*args, **kwargs):
        placements.append(kwargs.get("device_map"))
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", spy)
    spread = load_model(str(tmp_path / "model"), device="auto")
    assert placements == ["auto"]
    _, items_auto = evaluate_with_items(spread, ["digits", "quote_completion"], limit=4, show_progress=False)
    _, items_one = evaluate_with_items(load_model(str(tmp_path / "model")), ["digits", "quote_completion"], limit=4,
                                       show_progress=False)
    pd.testing.assert_frame_equal(items_auto, items_one)
