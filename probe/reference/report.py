"""Dense scores of a reference model on offline tasks' test splits (through lmms-eval), with standard
errors and the time taken, and, for the small reference, SmolLM2's own score on the text task (the
reference model's language side must match it).

    python -m probe.reference.report [--out results/reference/dense_scores.csv]
    python -m probe.reference.report --model reference-large --tasks offline-hard,quote_completion \\
        --dtype bfloat16 --out results/reference-large/dense_scores.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from probe.core.manifest import package_versions, write_json_atomic, write_text_atomic
from probe.core.names import REFERENCE_MODELS
from probe.evaluation.harness import evaluate, primary_rows, resolve_tasks
from probe.models.loading import LoadedModel, load_model, parse_dtype
from probe.reference import reference_spec
from probe.reference.build import GGUF_FILE, projector_digest, smollm2_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference", choices=REFERENCE_MODELS)
    parser.add_argument("--tasks", default="offline")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--limit", type=int, default=None, help="items per task (default: whole test splits)")
    parser.add_argument("--out", type=Path, default=Path("results/reference/dense_scores.csv"))
    args = parser.parse_args()
    spec = reference_spec(args.model)
    tasks = resolve_tasks(args.tasks)
    started = time.perf_counter()
    loaded = load_model(args.model, dtype=parse_dtype(args.dtype))
    load_seconds = time.perf_counter() - started
    tables = []
    for task in tasks:  # one task at a time, so each row carries its own evaluation time
        started = time.perf_counter()
        scores = primary_rows(evaluate(loaded, [task], limit=args.limit))
        tables.append(scores.assign(model=args.model, seconds=round(time.perf_counter() - started, 1)))
    if args.model == "reference" and "quote_completion" in tasks:
        smollm = AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE, dtype=torch.float32).eval()
        alone = LoadedModel(smollm, loaded.processor, loaded.adapter, "smollm2")
        scores = primary_rows(evaluate(alone, ["quote_completion"]))
        tables.append(scores.assign(model="SmolLM2-135M-Instruct (GGUF, alone)"))
    table = pd.concat(tables, ignore_index=True)
    table = table[["model", "task", "metric", "score", "stderr", "n", "seconds"]]
    write_text_atomic(args.out, table.to_csv(index=False))
    write_json_atomic(args.out.with_suffix(".json"), {
        "model": args.model, "dtype": args.dtype, "projector_sha256": projector_digest(spec),
        "load_seconds": round(load_seconds, 1), "torch_threads": torch.get_num_threads(),
        "versions": package_versions()})
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
