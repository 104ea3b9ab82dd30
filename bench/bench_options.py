"""Multiple-choice scoring, side by side in one run on one model: every option as its own full forward
(context + option) against the shared context run once and the options continued from its cache as one
batch (what the ``probe`` model class does for the options of one item). Prints seconds per item for
both, the ratio, and the largest difference between the two scores (float noise only).

    python bench/bench_options.py [MODEL] [--task opencv_digits] [--items 20] [--dtype float32]
"""

from __future__ import annotations

import argparse
import time

from probe.data.offline import TASK_BUILDERS
from probe.evaluation.wrapper import ProbeLVLM
from probe.models.loading import load_model, parse_dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="reference")
    parser.add_argument("--task", default="opencv_digits", help="a multiple-choice offline task")
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    wrapper = ProbeLVLM(loaded=load_model(args.model, dtype=parse_dtype(args.dtype)), show_progress=False)
    items = TASK_BUILDERS[args.task]("test")[: args.items]
    requests = [(item.question, item.choices, [item.image()]) for item in items]
    wrapper.options_loglikelihood(*requests[0])  # warm-up

    started = time.perf_counter()
    separate = [[wrapper.continuation_loglikelihood(q, c, images)[0] for c in choices]
                for q, choices, images in requests]
    separate_seconds = (time.perf_counter() - started) / len(requests)
    started = time.perf_counter()
    shared = [[score for score, _ in wrapper.options_loglikelihood(q, choices, images)]
              for q, choices, images in requests]
    shared_seconds = (time.perf_counter() - started) / len(requests)
    difference = max(abs(a - b) for row_a, row_b in zip(separate, shared) for a, b in zip(row_a, row_b))
    options = sum(len(c) for _, c, _ in requests) / len(requests)
    print(f"{args.model} ({args.dtype}), {args.task}: {len(requests)} items, {options:.1f} options each")
    print(f"  one forward per option:           {separate_seconds:.3f} s per item")
    print(f"  shared context, options batched:  {shared_seconds:.3f} s per item")
    print(f"  speed-up: {separate_seconds / shared_seconds:.2f}x; largest score difference {difference:.2e}")


if __name__ == "__main__":
    main()
