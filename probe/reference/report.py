"""Dense scores of the reference model on every offline task's test split (through lmms-eval), and
SmolLM2's own score on the text task (the reference model's language side must match it).

    python -m probe.reference.report [--out results/reference/dense_scores.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from probe.evaluation.harness import evaluate, primary_rows, resolve_tasks
from probe.loading import LoadedModel, load_model
from probe.manifest import package_versions, write_json_atomic, write_text_atomic
from probe.reference.build import GGUF_FILE, projector_digest, smollm2_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/reference/dense_scores.csv"))
    args = parser.parse_args()
    tasks = resolve_tasks("offline")
    loaded = load_model("reference")
    tables = [primary_rows(evaluate(loaded, tasks)).assign(model="reference")]
    if "quote_completion" in tasks:
        smollm = AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE, dtype=torch.float32).eval()
        alone = LoadedModel(smollm, loaded.processor, loaded.adapter, "smollm2")
        scores = primary_rows(evaluate(alone, ["quote_completion"]))
        tables.append(scores.assign(model="SmolLM2-135M-Instruct (GGUF, alone)"))
    table = pd.concat(tables, ignore_index=True)[["model", "task", "metric", "score", "n"]]
    write_text_atomic(args.out, table.to_csv(index=False))
    write_json_atomic(args.out.with_suffix(".json"), {"projector_sha256": projector_digest(),
                                                      "versions": package_versions()})
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
