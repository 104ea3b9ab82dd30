"""Prefill speed of 2:4-pruned weights as semi-structured sparse tensors on a GPU, beside dense ones.

Part 1: LLaVA-NeXT-8B's linear shapes (q/o 4096x4096, k/v 1024x4096, gate/up 14336x4096, down 4096x14336)
with a 2:4 mask chosen by magnitude, on a prefill of ``--tokens`` tokens: the median time of the dense product
and of ``torch.sparse.to_sparse_semi_structured``'s, their ratio, and the largest difference of the outputs.
Part 2: a tiny model pruned 2:4 by the toolkit (Wanda): every prunable linear holds a valid 2:4 pattern, and
on a GPU its logits with semi-structured linears equal the dense ones within half-precision tolerance.

Semi-structured kernels need CUDA (compute capability 8.0 or newer); on the CPU (``--dry-run``) part 1 times
the dense products at a fiftieth of the widths and part 2 checks the pattern only.

    python bench/bench_semi_structured.py [--device cuda] [--dtype float16] [--out results/bench/semi-structured.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from probe.models.devices import machine_description
from probe.pruning.sparsity.masks import nm_mask

SHAPES = {"q_proj/o_proj": (4096, 4096), "k_proj/v_proj": (1024, 4096), "gate_proj/up_proj": (14336, 4096),
          "down_proj": (4096, 14336)}  # (out, in)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after two warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` with the two smallest magnitudes of every four inputs set to zero."""
    return weight.masked_fill(nm_mask(weight.abs().float(), 2, 4).to(weight.device), 0)


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether every group of four consecutive inputs of every row holds at most two nonzeros."""
    groups = (weight != 0).reshape(weight.shape[0], -1, 4)
    return bool((groups.sum(dim=-1) <= 2).all())


def semi_structured_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def linear_shapes(device: torch.device, dtype: torch.dtype, tokens: int, scale: int, repeats: int) -> list[dict]:
    rows = []
    sparse_ok = semi_structured_available(device)
    for name, (d_out, d_in) in SHAPES.items():
        d_out, d_in = d_out // scale, d_in // scale
        weight = two_four(torch.randn(d_out, d_in, device=device, dtype=dtype) * 0.02)
        if not is_two_four(weight):
            raise SystemExit(f"{name}: the 2:4 mask left more than two of four inputs")
        x = torch.randn(tokens, d_in, device=device, dtype=dtype)
        dense = timed(partial(F.linear, x, weight), device, repeats)
        row = {"linear": name, "shape": [d_out, d_in], "tokens": tokens, "dense_seconds": dense}
        if sparse_ok:
            sparse_weight = torch.sparse.to_sparse_semi_structured(weight)
            sparse = timed(partial(F.linear, x, sparse_weight), device, repeats)
            difference = float((F.linear(x, sparse_weight) - F.linear(x, weight)).abs().max())
            row.update({"sparse_seconds": sparse, "speedup": dense / sparse, "max_abs_difference": difference})
        rows.append(row)
    return rows


@torch.no_grad()
def tiny_checkpoint(device: torch.device, dtype: torch.dtype) -> dict:
    """Prune a tiny model 2:4 with Wanda; check the pattern; on a GPU compare semi-structured logits."""
    from probe.calibration.calibrate import capture_calibration
    from probe.data.calibration import CalibrationSpec
    from probe.models.loading import load_model
    from probe.pruning.engine import PruneConfig, prune

    loaded = load_model("tiny:llava_next")
    samples = capture_calibration(loaded, CalibrationSpec(nsamples=4), show_progress=False)
    prune(loaded.model, loaded.adapter, samples, PruneConfig(method="wanda", sparsity=0.5, pattern="2:4"),
          show_progress=False)
    linears = [lin for layer in loaded.adapter.decoder_layers(loaded.model)
               for lin in loaded.adapter.prunable_linears(layer).values()]
    result = {"model": "tiny:llava_next", "linears": len(linears), "all_two_four": all(is_two_four(lin.weight)
                                                                                        for lin in linears)}
    if not semi_structured_available(device):
        result["semi_structured"] = "needs a CUDA device of compute capability 8.0 or newer"
        return result
    model = loaded.model.to(device, dtype)
    input_ids = loaded.processor.tokenizer("A text-only prompt for the 2:4 check", return_tensors="pt").input_ids
    inputs = {"input_ids": input_ids.to(device)}
    dense_logits = model(**inputs).logits.float()
    converted = 0
    for lin in linears:
        d_out, d_in = lin.weight.shape
        if d_out % 32 == 0 and d_in % 64 == 0:  # the kernels' shape requirement
            lin.weight = torch.nn.Parameter(torch.sparse.to_sparse_semi_structured(lin.weight.data),
                                            requires_grad=False)
            converted += 1
    sparse_logits = model(**inputs).logits.float()
    result.update({"converted_linears": converted,
                   "max_abs_logit_difference": float((sparse_logits - dense_logits).abs().max())})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    parser.add_argument("--tokens", type=int, default=3000, help="prefill length (the paper's samples: about 3,000)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dry-run", action="store_true", help="a fiftieth of the widths, float32 on the CPU")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cpu" if args.dry_run else args.device)
    dtype = torch.float32 if device.type == "cpu" else getattr(torch, args.dtype)
    scale, tokens, repeats = (64, 64, 2) if args.dry_run else (1, args.tokens, args.repeats)
    report = {"device": str(device), "dtype": str(dtype).removeprefix("torch."),
              "machine": machine_description(device), "torch": torch.__version__,
              "linears": linear_shapes(device, dtype, tokens, scale, repeats),
              "tiny_checkpoint": tiny_checkpoint(device, dtype)}
    for row in report["linears"]:
        extra = (f", sparse {row['sparse_seconds'] * 1e3:.2f} ms, speed-up {row['speedup']:.2f}"
                 if "speedup" in row else "")
        print(f"{row['linear']:18s} {row['shape']}: dense {row['dense_seconds'] * 1e3:.2f} ms{extra}")
    print(f"tiny 2:4 checkpoint: {report['tiny_checkpoint']}")
    if not report["tiny_checkpoint"]["all_two_four"]:
        raise SystemExit("a linear of the 2:4-pruned checkpoint breaks the 2:4 pattern")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
