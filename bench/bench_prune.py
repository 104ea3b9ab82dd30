"""Pruning cost relative to a dense forward, measured side by side in one run on one model.

Prints Wanda time / one dense forward over the calibration set (goal <= 2.3),
SparseGPT time / Wanda time (goal <= 6; the paper measured 9.04 on LLaVA-NeXT 8B) and
ATV time / Wanda time (goal <= 1.10; the paper measured 1.35) and
TAMP time / Wanda time (goal <= 4; the paper measured 19.25).

    python bench/bench_prune.py [MODEL] [--nsamples 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from probe.calibration.calibrate import capture_items
from probe.data.calibration import CalibrationSpec, prepare
from probe.models.loading import load_model, parse_dtype
from probe.pruning.engine import PruneConfig, prune


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="reference")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    loaded = load_model(args.model, dtype=parse_dtype(args.dtype), device=args.device)
    spec = CalibrationSpec(nsamples=args.nsamples)
    items = prepare(spec, loaded.adapter, loaded.processor, loaded.model.config)

    def dense_forward() -> None:
        with torch.no_grad():
            for item in items:
                loaded.model(**{k: v.to(args.device) for k, v in item.inputs.items()}, use_cache=False)

    def run(method: str) -> float:
        """Seconds to capture the calibration set and prune a fresh copy of the model."""
        model = copy.deepcopy(loaded.model)
        copy_loaded = type(loaded)(model, loaded.processor, loaded.adapter, loaded.ref)

        def go() -> None:
            samples = capture_items(copy_loaded, items, store_device=args.device, show_progress=False)
            prune(model, loaded.adapter, samples, PruneConfig(method=method, sparsity=0.5), show_progress=False)

        return timed(go)

    dense_forward()  # warm-up
    dense = min(timed(dense_forward) for _ in range(2))
    wanda = min(run("wanda") for _ in range(2))
    sparsegpt = run("sparsegpt")
    atv = min(run("atv") for _ in range(2))
    tamp = run("tamp")
    print(f"model {args.model}, {args.nsamples} samples, device {args.device}")
    print(f"dense forward over calibration set: {dense:.3f} s")
    print(f"wanda (capture + prune):            {wanda:.3f} s")
    print(f"sparsegpt (capture + prune):        {sparsegpt:.3f} s")
    print(f"atv (capture + prune):              {atv:.3f} s")
    print(f"tamp (capture + prune):             {tamp:.3f} s")
    print("(the same prepared calibration inputs feed every run; data loading is not timed)")
    print(f"wanda / dense forward   = {wanda / dense:.2f}  (goal <= 2.3)")
    print(f"sparsegpt / wanda       = {sparsegpt / wanda:.2f}  (goal <= 6)")
    print(f"atv / wanda             = {atv / wanda:.2f}  (goal <= 1.10)")
    print(f"tamp / wanda            = {tamp / wanda:.2f}  (goal <= 4)")


if __name__ == "__main__":
    main()
