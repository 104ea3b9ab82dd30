"""What token pruning and weight pruning buy at inference, measured side by side in one run on one model:
prefill latency, per-token decode latency, KV-cache size, peak memory (CUDA only) and FLOPs counted by
``torch.utils.flop_counter`` (:mod:`probe.evaluation.flops`) for the language side (decoder and LM head; also as
sparse kernels would run it) and the vision tower separately, for the
dense model, a token-pruned one, a weight-pruned one and the joint one (weights calibrated on the kept
tokens). Ratios are against dense. Unstructured weight sparsity saves no time here: dense kernels multiply
the zeros; the sparse-kernel column shows what skipping them would save.

    python bench/bench_tokens.py [MODEL] [--device cpu] [--token-pruning "fastv(k=2, ratio=0.5)"]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from probe.calibration.calibrate import capture_calibration
from probe.data.calibration import CalibrationSpec
from probe.data.offline import digits_split_indices
from probe.evaluation.flops import count_flops, image_request
from probe.evaluation.wrapper import ProbeLVLM
from probe.models.compat import returned_cache
from probe.models.loading import LoadedModel, load_model, parse_dtype
from probe.pruning.engine import PruneConfig, prune
from probe.token_pruning.base import make_pruner
from probe.token_pruning.schedule import with_token_schedule


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _kv_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
               if isinstance(t, torch.Tensor))


@torch.no_grad()
def measure(loaded: LoadedModel, inputs: dict, token_pruning: str | None, new_tokens: int, repeats: int) -> dict:
    wrapper = ProbeLVLM(loaded=loaded, show_progress=False, token_pruning=token_pruning or "none")
    model, device = loaded.model, next(loaded.model.parameters()).device

    def served(fn):
        def run():
            with wrapper._serving():
                request = wrapper._prepared(inputs)
                with wrapper._request(request["input_ids"]):
                    return fn(request)
        return run

    prefill = _median_seconds(served(lambda x: model(**x, use_cache=True)), device, repeats)
    generate = _median_seconds(served(lambda x: model.generate(**x, max_new_tokens=new_tokens, do_sample=False,
                                                               min_new_tokens=new_tokens)), device, repeats)
    cache = served(lambda x: returned_cache(model(**x, use_cache=True)))()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        served(lambda x: model.generate(**x, max_new_tokens=new_tokens, do_sample=False))()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else float("nan")
    runtime = wrapper.token_runtime
    flops = count_flops(model, loaded.adapter, inputs, runtime)
    return {"prefill s": prefill, "decode s/token": (generate - prefill) / max(new_tokens - 1, 1),
            "KV cache MiB": _kv_bytes(cache) / 2**20, "peak MiB": peak / 2**20,
            "language GFLOPs": flops["gflops"], "sparse-kernel GFLOPs": flops["gflops_sparse"],
            "vision GFLOPs": flops["vision_gflops"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="reference")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--token-pruning", default="fastv(k=2, ratio=0.5)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--nsamples", type=int, default=8, help="calibration samples of the weight pruning")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    dense = load_model(args.model, dtype=parse_dtype(args.dtype), device=args.device)
    pruner = make_pruner(args.token_pruning)
    from sklearn.datasets import load_digits

    pixels = load_digits().images[digits_split_indices("test")[0]]
    from PIL import Image

    picture = Image.fromarray((pixels / 16 * 255).astype("uint8")).convert("RGB").resize((64, 64))
    inputs = image_request(dense.model, dense.adapter, dense.processor, picture, "Which digit is this?")
    samples = capture_calibration(dense, CalibrationSpec(nsamples=args.nsamples), store_device=args.device,
                                  show_progress=False)
    weights = copy.deepcopy(dense.model)
    prune(weights, dense.adapter, samples, PruneConfig(method="wanda", sparsity=args.sparsity), show_progress=False)
    joint = copy.deepcopy(dense.model)
    kept = with_token_schedule(dense.model, dense.adapter, samples, pruner)
    prune(joint, dense.adapter, kept, PruneConfig(tokens="kept", sparsity=args.sparsity), show_progress=False)

    def loaded(model):
        return LoadedModel(model, dense.processor, dense.adapter, dense.ref)

    rows = {
        "dense": measure(dense, inputs, None, args.new_tokens, args.repeats),
        "tokens": measure(dense, inputs, args.token_pruning, args.new_tokens, args.repeats),
        "weights": measure(loaded(weights), inputs, None, args.new_tokens, args.repeats),
        "joint": measure(loaded(joint), inputs, args.token_pruning, args.new_tokens, args.repeats),
    }
    print(f"model {args.model}, device {args.device} ({'CUDA events' if args.device != 'cpu' else 'CPU wall time'}), "
          f"{int(inputs['input_ids'].shape[1])} prompt tokens, {args.new_tokens} new tokens, median of "
          f"{args.repeats}")
    print(f"tokens: {pruner.spec()}; weights: wanda {args.sparsity:g} (mixed tokens); joint: wanda {args.sparsity:g} "
          "calibrated on the kept tokens, served with the token method")
    columns = list(rows["dense"])
    print(f"{'':8}" + "".join(f"{c:>22}" for c in columns))
    for name, row in rows.items():
        print(f"{name:8}" + "".join(f"{row[c]:22.4f}" for c in columns))
    print("ratios to dense:")
    for name, row in list(rows.items())[1:]:
        ratios = [row[c] / rows["dense"][c] if rows["dense"][c] else float("nan") for c in columns]
        print(f"{name:8}" + "".join(f"{r:22.2f}" for r in ratios))


if __name__ == "__main__":
    main()
