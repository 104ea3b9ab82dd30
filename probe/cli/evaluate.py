"""``probe eval``: score a model on lmms-eval tasks, or by the KL proxy against its dense model."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe.cli.common import (
    RunInterrupted,
    add_command,
    add_model_args,
    batch_size_arg,
    positive_int,
    refuse_offload,
)
from probe.errors import ProbeError


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``probe eval`` to the subcommands."""
    p = add_command(sub, "eval",
                         "score a model through lmms-eval (in process), or by the proxy metric against the dense "
                         "model (--metric kl)",
                         "  probe eval --tasks offline --limit 40 --out runs/dense.csv\n"
                         "  probe eval runs/wanda-text --tasks offline --limit 40 --dense runs/dense.csv "
                         "--log-samples\n"
                         "  probe eval runs/wanda-text --metric kl --out runs/wanda-text-kl.csv\n")
    add_model_args(p)
    p.add_argument("--metric", default="tasks", choices=("tasks", "kl"),
                   help="tasks: the task metrics through lmms-eval; kl: per-token KL divergence from the dense "
                        "model's next-token distribution and the reference answers' negative log-likelihood, on "
                        "held-out image-text and text-only conversations, with standard errors")
    p.add_argument("--dense-model", default=None, metavar="MODEL",
                   help="--metric kl: the dense model compared with (None: the model the checkpoint was pruned "
                        "from, as its manifest names it)")
    p.add_argument("--proxy-samples", type=positive_int, default=32,
                   help="--metric kl: held-out conversations per group (image-text, text-only)")
    p.add_argument("--calib", default=None,
                   help="--metric kl: the source of the held-out image-text conversations, as probe prune's "
                        "--calib (None: the checkpoint's calibration source, else bundled); the samples its "
                        "calibration drew are left out")
    p.add_argument("--tasks", default="offline",
                   help="comma-separated lmms-eval task names and presets: offline (our tasks from shipped data), "
                        "offline-hard (emoji, clip-art and OpenCV digits, by option log-likelihood; make hard-data), "
                        "paper9 (the paper's nine benchmarks), table1 (MMBench-EN, ScienceQA-IMG, VizWiz)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="score only the first N items of each task (None: every item)")
    p.add_argument("--dense", type=Path, default=None,
                   help="a dense run's CSV (written by --out): adds the retention against it")
    p.add_argument("--out", type=Path, default=None, help="write the scores as CSV (task, metric, score, n)")
    p.add_argument("--log-samples", action="store_true",
                   help="also write what the model answered for every item: OUT.samples.jsonl beside --out "
                        "(or runs/eval/samples.jsonl)")
    p.add_argument("--loglikelihood", default="sum", choices=("sum", "mean"),
                   help="multiple-choice scoring: the summed negative log-likelihood of an option, or its mean "
                        "per token (as lmms-eval's llava_hf returns it); accuracies differ between the two")
    p.add_argument("--seed", type=int, default=0, help="seed of lmms-eval's random generators")
    p.add_argument("--token-pruning", default=None, metavar="METHOD",
                   help="drop visual tokens at inference: fastv (after layer K-1, the R least attended; "
                        "'fastv(k=2, ratio=0.5)'), random (the control; 'random(k=2, ratio=0.5, seed=0)'), vitcop "
                        "(its decoder stages; presets vitcop-1/3, vitcop-2/9, vitcop-1/9) or none (None: the "
                        "checkpoint's own, if it was pruned with one)")
    p.add_argument("--batch-size", type=batch_size_arg, default=1, metavar="N|auto",
                   help="requests scored at once: generation pads prompts on the left, options run padded on the "
                        "right; greedy answers and log-likelihoods equal batch 1's. auto: the largest that fits "
                        "on the GPU (from 64, halved on out-of-memory), 8 on the CPU. Token pruning runs at 1")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from probe.core.progress import quiet_libraries

    try:
        with quiet_libraries(args.no_progress):
            return _eval(args)
    except KeyboardInterrupt:
        raise RunInterrupted("interrupted: no scores were written") from None


def _eval_proxy(args: argparse.Namespace) -> int:
    """``probe eval --metric kl``: the proxy metric of ``args.model`` against its dense model."""
    from probe.core.manifest import check_output_file, write_text_atomic
    from probe.data.calibration import CalibrationSpec
    from probe.data.heldout import heldout_image_samples, heldout_text_samples
    from probe.evaluation.divergence import dense_answers, proxy_items, proxy_scores, summarize
    from probe.models.devices import check_device
    from probe.models.loading import load_model, parse_dtype

    for flag, given in (("--dense", args.dense), ("--token-pruning", args.token_pruning),
                        ("--log-samples", args.log_samples or None), ("--limit", args.limit)):
        if given is not None:
            raise ProbeError(f"{flag} is a setting of task scoring; --metric kl takes none")
    if args.out is not None:
        check_output_file(args.out)
    check_device(args.device)
    record = _checkpoint_record(args.model)
    dense_ref = args.dense_model or record.get("model")
    if not dense_ref:
        raise ProbeError(f"{args.model} names no model it was pruned from; give the dense model with --dense-model")
    calibration = record.get("calibration") or {}
    if args.calib is not None:
        spec = CalibrationSpec.parse(args.calib)
    elif calibration.get("source") in ("json", "hf"):
        spec = CalibrationSpec(**{k: calibration[k] for k in ("source", "path", "image_root", "subset", "split")
                                  if k in calibration})
    else:
        spec = CalibrationSpec()
    image_samples = heldout_image_samples(spec, args.proxy_samples, args.seed, calibration.get("sample_ids", []))
    text_samples = heldout_text_samples(args.proxy_samples, args.seed)  # every data check before a model loads
    dtype = parse_dtype(args.dtype)
    dense = load_model(dense_ref, dtype=dtype, device=args.device, max_pixels=args.max_pixels)
    items = proxy_items(dense.adapter, dense.processor, image_samples, text_samples)
    reference = dense_answers(dense.model, items, show_progress=not args.no_progress)
    del dense
    loaded = load_model(args.model, dtype=dtype, device=args.device, max_pixels=args.max_pixels)
    per_sample = proxy_scores(loaded.model, items, reference, show_progress=not args.no_progress)
    summary = summarize(per_sample)
    print(f"{args.model} against {dense_ref} (nats per answer token; stderr over samples):")
    print(summary.to_string(index=False))
    if args.out is not None:
        write_text_atomic(args.out, summary.to_csv(index=False))
        write_text_atomic(args.out.with_suffix(".samples.csv"), per_sample.to_csv(index=False))
        print(f"wrote {args.out} and, per sample, {args.out.with_suffix('.samples.csv')}")
    return 0


def _checkpoint_record(model: str) -> dict:
    """The pruning record of a checkpoint folder (empty for a model that is not one)."""
    from probe.core.record import read_json

    path = Path(model) / "manifest.json"
    if not path.is_file():
        return {}
    data = read_json(path, "a pruning record")
    return data if isinstance(data, dict) else {}


def _eval(args: argparse.Namespace) -> int:
    from analysis.results import ResultsError, load_scores
    from analysis.tables import retention_against
    from probe.core.manifest import check_output_file, write_text_atomic
    from probe.evaluation.data_parallel import data_parallel_device, data_parallel_rank
    from probe.evaluation.harness import evaluate, primary_rows, resolve_tasks
    from probe.models.devices import check_device
    from probe.models.loading import load_model, model_config, parse_dtype
    from probe.token_pruning.base import make_pruner
    from probe.token_pruning.runtime import check_token_method

    refuse_offload(args, "eval")
    if args.metric == "kl":
        return _eval_proxy(args)
    for flag, given in (("--dense-model", args.dense_model), ("--calib", args.calib)):
        if given is not None:
            raise ProbeError(f"{flag} is a setting of --metric kl")
    if args.out is not None:
        check_output_file(args.out)
    if args.device != "auto":  # auto: the weights spread over the GPUs (device_map="auto")
        check_device(args.device)
    tasks = resolve_tasks(args.tasks)  # every task checked before the model loads
    pruner = make_pruner(args.token_pruning)
    found = model_config(args.model) if pruner is not None else None
    if found is not None:  # the model's own config, read without its weights
        check_token_method(pruner, found.model_type, found.get_text_config().num_hidden_layers)
    dense = None
    if args.dense is not None:
        dense_table = load_scores(args.dense)
        dense = primary_rows(dense_table)
        missing = [t for t in tasks if t not in set(dense.task)]
        if missing:
            held = ", ".join(sorted(set(dense_table.task.astype(str)))) or "no task"
            raise ResultsError(f"{args.dense} has no dense score for {', '.join(missing)} (it holds: {held})")
    samples_out = None
    if args.log_samples:
        samples_out = args.out.with_suffix(".samples.jsonl") if args.out else Path("runs/eval/samples.jsonl")
        check_output_file(samples_out)
    rank, _ = data_parallel_rank()
    device = data_parallel_device(args.device)
    loaded = load_model(args.model, dtype=parse_dtype(args.dtype), device=device, max_pixels=args.max_pixels)
    table = evaluate(loaded, tasks, args.limit, show_progress=not args.no_progress, seed=args.seed,
                     loglikelihood=args.loglikelihood, samples_out=samples_out if rank == 0 else None,
                     token_pruning=args.token_pruning, batch_size=args.batch_size)
    if rank > 0:  # under torchrun, rank 0 gathers the scores and writes them
        return 0
    print(table.to_string(index=False))
    if args.out:
        write_text_atomic(args.out, table.to_csv(index=False))
    if samples_out is not None:
        print(f"answers per item: {samples_out}")
    if dense is not None:
        scored = primary_rows(table)
        kept = retention_against(scored, dense)
        value = f"{kept:.2f}%" if kept == kept else "undefined (a dense score is 0)"
        print(f"retention against {args.dense} over {', '.join(scored.task)}: {value}")
        if kept == kept:
            print(_retention_interval(scored, dense))
    return 0


def _retention_interval(scored, dense) -> str:  # noqa: ANN001
    """The approximate 95% interval of a retention from per-task standard errors (the delta method)."""
    from analysis.tables import task_stderr
    from probe.evaluation.uncertainty import delta_retention

    base = dense.set_index("task").loc[list(scored.task)]
    interval = delta_retention(scored.score, task_stderr(scored), base.score, task_stderr(base.reset_index()))
    if interval.low != interval.low:
        return "  (no interval: the scores carry no standard errors)"
    return (f"  approximate 95% interval [{interval.low:.2f}%, {interval.high:.2f}%] (delta method from the "
            "tasks' standard errors, the two runs taken as independent: wider than a paired bootstrap)")
