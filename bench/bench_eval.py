"""Items per second of task scoring at several batch sizes, side by side in one run, with the scores checked.

For each model and task, scores the same items at each batch size (1 first: the reference), through the
same lmms-eval path as ``probe eval --batch-size``, in ``--repeats`` rounds that each run every size once,
and reports the median items per second over the rounds and its ratio to batch 1's.
Every run's per-item scores must equal batch 1's, its generated answers too, and its option
log-likelihoods within 1e-4; a run that differs is reported and makes the script exit non-zero.

    python bench/bench_eval.py [--models reference,tiny:llava] [--tasks digits,quote_completion]
                               [--sizes 1,4,16,auto] [--limit 32] [--device cpu] [--out FILE]
    python bench/bench_eval.py --dry-run    # tiny model, 4 items, batch 1 and 2: checks the script runs

``digits`` is a generation task (an image, a generated answer), ``quote_completion`` a multiple-choice one
(option log-likelihoods). On a GPU the goal is at least 5x batch 1's items per second at batch 16 on the
generation task.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from probe.core.manifest import write_text_atomic
from probe.evaluation.batching import parse_batch_size
from probe.evaluation.harness import evaluate_with_items, resolve_tasks
from probe.models.devices import check_device, machine_description
from probe.models.loading import load_model, parse_dtype


def answers(path: Path) -> dict:
    """(task, doc_id) -> what the model answered, from a samples log."""
    return {(r["task"], r["doc_id"]): r["answer"] for r in map(json.loads, path.open())}


def same_scores(reference: tuple, run: tuple) -> list[str]:
    """Where ``run`` (items, answers) differs from the batch-1 ``reference``: empty when it does not."""
    ref_items, ref_answers = reference
    items, got = run
    keys = ["task", "metric", "doc_id"]
    left = ref_items.sort_values(keys).reset_index(drop=True)
    right = items.sort_values(keys).reset_index(drop=True)
    problems = []
    if not left[keys].equals(right[keys]) or not (left.value == right.value).all():
        problems.append("per-item scores differ")
    for key, answer in ref_answers.items():
        other = got.get(key)
        if isinstance(answer, list) and answer and isinstance(answer[0], list):  # options: (loss, greedy)
            if other is None or len(other) != len(answer) or any(
                    abs(a[0] - b[0]) > 1e-4 or a[1] != b[1] for a, b in zip(answer, other)):
                problems.append(f"option log-likelihoods of {key} differ")
        elif other != answer:
            problems.append(f"answer of {key} differs")
    return problems


def measure(loaded, task: str, size: int | str, limit: int, workdir: Path) -> dict:
    """One scoring run: its time, items per second, and what it scored."""
    samples = workdir / f"{task}-{size}.jsonl"
    started = time.perf_counter()
    table, items = evaluate_with_items(loaded, [task], limit, show_progress=False, batch_size=size,
                                       samples_out=samples)
    seconds = time.perf_counter() - started
    n = int(table.n.iloc[0])
    return {"seconds": seconds, "items": n, "items_per_second": n / seconds, "scores": (items, answers(samples))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="reference,tiny:llava", help="comma-separated models")
    parser.add_argument("--tasks", default="digits,quote_completion",
                        help="comma-separated tasks: a generation task and a multiple-choice task")
    parser.add_argument("--sizes", default="1,4,16,auto", help="batch sizes (1 is added first when missing)")
    parser.add_argument("--limit", type=int, default=32, help="items per task")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the batch sizes (the median is kept)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", type=Path, default=None, help="write the measurements as JSON")
    parser.add_argument("--dry-run", action="store_true", help="tiny model, 4 items, batch 1 and 2")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.models, args.sizes, args.limit, args.repeats = "tiny:llava", "1,2", 4, 1
    sizes = [parse_batch_size(s) for s in args.sizes.split(",")]
    sizes = [1] + [s for s in sizes if s != 1]
    tasks = resolve_tasks(args.tasks)
    check_device(args.device)
    rows, failed = [], False
    print(f"{'model':<12} {'task':<18} {'batch':>6} {'items/s':>9} {'vs 1':>6}  scores")
    with tempfile.TemporaryDirectory() as tmp:
        for model_ref in args.models.split(","):
            loaded = load_model(model_ref, dtype=parse_dtype(args.dtype), device=args.device)
            for task in tasks:
                evaluate_with_items(loaded, [task], 2, show_progress=False)  # warm-up: task files, kernels
                rounds = [[measure(loaded, task, size, args.limit, Path(tmp)) for size in sizes]
                          for _ in range(args.repeats)]
                reference = rounds[0][0]["scores"]
                speed = {size: statistics.median(r[k]["items_per_second"] for r in rounds)
                         for k, size in enumerate(sizes)}
                for k, size in enumerate(sizes):
                    problems = sorted({p for r in rounds for p in same_scores(reference, r[k]["scores"])})
                    failed |= bool(problems)
                    ratio = speed[size] / speed[1]
                    verdict = "equal to batch 1" if not problems else "; ".join(problems[:3])
                    print(f"{model_ref:<12} {task:<18} {size!s:>6} {speed[size]:>9.2f} {ratio:>5.2f}x  {verdict}")
                    rows.append({"model": model_ref, "task": task, "batch_size": size, "items": rounds[0][k]["items"],
                                 "seconds": [r[k]["seconds"] for r in rounds], "items_per_second": speed[size],
                                 "ratio_to_batch_1": ratio, "equal_to_batch_1": not problems})
            del loaded
    if args.out is not None:
        report = {"machine": machine_description(torch.device(args.device)), "dtype": args.dtype,
                  "torch": torch.__version__, "limit": args.limit, "repeats": args.repeats, "runs": rows}
        write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
