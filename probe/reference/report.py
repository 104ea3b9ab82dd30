"""Dense scores of the reference model on every offline task's test split, and SmolLM2's own score on
the text task (the reference model's language side must match it).

    python -m probe.reference.report [--out results/reference/dense_scores.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from probe.evaluation.offline import evaluate_task, offline_tasks
from probe.loading import load_model
from probe.manifest import package_versions, write_json_atomic, write_text_atomic
from probe.reference.build import GGUF_FILE, projector_digest, smollm2_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/reference/dense_scores.csv"))
    args = parser.parse_args()
    loaded = load_model("reference")
    rows = []
    for task in offline_tasks():
        score = evaluate_task(loaded.model, loaded.adapter, loaded.processor, task)
        rows.append({"model": "reference", **vars(score)})
    if "quote_completion" in offline_tasks():
        smollm = AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE, dtype=torch.float32).eval()
        score = evaluate_task(smollm, loaded.adapter, loaded.processor, "quote_completion")
        rows.append({"model": "SmolLM2-135M-Instruct (GGUF, alone)", **vars(score)})
    table = pd.DataFrame(rows)
    write_text_atomic(args.out, table.to_csv(index=False))
    write_json_atomic(args.out.with_suffix(".json"), {"projector_sha256": projector_digest(),
                                                      "versions": package_versions()})
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
