"""The paper's scale before the paper's GPU: pruning at LLaVA-NeXT-8B's widths, measured side by side.

Builds ``llava-hf/llama3-llava-next-8b-hf``'s decoder (Llama-3-8B widths, random weights: time and memory do
not depend on the values) with ``--blocks`` blocks, and calibration samples of the paper's shape (2,000-2,900
visual and 100-300 text tokens, :mod:`probe.calibration.synthetic`). For each method, in a fresh process, at each of
``--nsamples`` sample counts: pruning wall time, peak memory (resident set on the CPU, CUDA peak on a GPU)
against the memory model's prediction (:mod:`probe.pruning.memory`), and the bytes of the captured activations.
Then the ratio goals (ATV/Wanda <= 1.10, SparseGPT/Wanda <= 6, TAMP/Wanda <= 4, Wanda <= 2.3 dense
forwards), and the full run (32 blocks, 128 samples) extrapolated:

- time on this machine: per method ``blocks * (a + b * samples)``, fitted to the two sample counts;
- time on a 24-core CPU: this machine's time scaled by its core count (same speed per core assumed);
- time on an H100: the run's operations counted by dtype on one block (``--flops``), at stated sustained
  rates (``--gpu-bf16-tflops``, ``--gpu-fp32-tflops``) plus a launch cost per operation;
- peak memory of each: the memory model for that run (bfloat16 weights on the GPU, float32 on the CPU).

    python bench/bench_scale.py [--blocks 2] [--nsamples 2 4] [--out results/bench/scale-cpu.json]
    python bench/bench_scale.py --dry-run   # tiny widths, in one process: checks the script itself
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from probe.calibration.capture import activation_bytes, run_block
from probe.calibration.synthetic import (
    PAPER_BLOCKS,
    PAPER_SAMPLES,
    SampleShape,
    language_side,
    llama3_8b_text_config,
    llava_next_8b_config,
    meta_model,
    paper_sample_shapes,
    synthetic_samples,
)
from probe.models.devices import machine_description
from probe.pruning.engine import PruneConfig, prune
from probe.pruning.memory import (
    MethodNeeds,
    PeakMemory,
    StoragePlan,
    model_shape,
    predict,
    resident_bytes,
)
from probe.pruning.mot import prune_pathway, to_mot

METHODS = ("dense", "wanda", "sparsegpt", "atv", "tamp", "owl", "mot")
GOALS = {"wanda/dense": 2.3, "sparsegpt/wanda": 6.0, "atv/wanda": 1.10, "tamp/wanda": 4.0}
MEMORY_GOAL = 0.15  # the memory model's prediction within this fraction of the measured peak
PAPER_TABLE4 = {"wanda": 73.7, "sparsegpt": 666.0, "tamp": 1418.4, "atv": 99.6}  # seconds, one A100, 50%
MOT_CONFIG = {"method": "wanda", "tokens": "mixed"}  # the visual pathway pruned with mixed-token statistics


def method_config(method: str, sparsity: float = 0.5) -> PruneConfig:
    if method == "mot":
        return PruneConfig(**MOT_CONFIG, sparsity=sparsity)
    return PruneConfig(method=method, sparsity=sparsity)


def tiny_text_config(blocks: int):
    """Llama-3's structure at tiny widths, for ``--dry-run``."""
    config = llama3_8b_text_config(blocks)
    for key, value in {"hidden_size": 64, "intermediate_size": 224, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "vocab_size": 512}.items():
        setattr(config, key, value)
    return config


def sample_shapes(n: int, dry_run: bool, seed: int) -> list[SampleShape]:
    shapes = paper_sample_shapes(n, seed)
    if dry_run:  # the paper's proportions at a fiftieth of the length
        return [SampleShape(s.n_visual // 50, max(s.n_text // 50, 3)) for s in shapes]
    return shapes


@torch.no_grad()
def dense_forward(model, adapter, samples, device) -> None:
    """Every sample through every block: what one forward over the calibration set costs on the LLM side."""
    for layer in adapter.decoder_layers(model):
        layer.to(device)
    for sample in samples:
        hidden = sample.hidden.to(device)
        for layer, call in zip(adapter.decoder_layers(model), sample.calls):
            hidden = run_block(layer, hidden, call)


def run_one(method: str, blocks: int, nsamples: int, dtype: str, device: str, dry_run: bool, seed: int) -> dict:
    """Build the model and samples, then time one method and measure its peak (this process's own)."""
    torch_dtype = getattr(torch, dtype)
    base = resident_bytes() if device == "cpu" else 0
    text = tiny_text_config(blocks) if dry_run else llama3_8b_text_config(blocks)
    model, adapter = language_side(text, torch_dtype, seed, device)
    shapes = sample_shapes(nsamples, dry_run, seed)
    samples = synthetic_samples(model, adapter, shapes, seed, store_device=device)
    held = activation_bytes(samples)
    config = method_config(method) if method != "dense" else None
    estimate = None
    if config is not None:
        needs = MethodNeeds.of(config, mot_pathway=method == "mot")
        estimate = predict(model_shape(model, adapter), [s.n_tokens for s in shapes], [s.n_visual for s in shapes],
                           needs, StoragePlan(torch_dtype, None, False, False, device))
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        if method == "dense":
            dense_forward(model, adapter, samples, device)
        elif method == "mot":
            probe = to_mot(model, adapter)
            prune_pathway(probe, samples, config, "visual", device=device, show_progress=False)
        else:
            prune(model, adapter, samples, config, device=device, show_progress=False)
        if device != "cpu":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    measured = peak.bytes - base if device == "cpu" else peak.bytes
    return {"method": method, "blocks": blocks, "nsamples": nsamples, "tokens": sum(s.n_tokens for s in shapes),
            "lengths": [s.n_tokens for s in shapes], "visual": [s.n_visual for s in shapes],
            "seconds": seconds, "peak_bytes": measured, "activation_bytes": held,
            "predicted_peak_bytes": estimate.device_peak if estimate else None,
            "predicted": estimate.as_dict() if estimate else None}


class OpCounter(TorchDispatchMode):
    """Counts, per dtype, the FLOPs of every matrix product and attention that runs (torch's own formulas;
    the CPU's fused attention by ``4 * heads * queries * keys * head_dim``) and the number of operations."""

    def __init__(self) -> None:
        super().__init__()
        self.flops: dict[str, float] = defaultdict(float)
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        packet = func._overloadpacket
        dtype = next((a.dtype for a in args if isinstance(a, torch.Tensor)), None)
        if packet in flop_registry:
            self.flops[str(dtype)] += flop_registry[packet](*args, **kwargs, out_val=out)
        elif "scaled_dot_product" in packet.__name__:
            q, k = args[0], args[1]
            self.flops[str(dtype)] += 4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
        return out


def count_ops(method: str, nsamples: int, dtype: str, dry_run: bool, seed: int) -> dict:
    """The FLOPs (by dtype) and operations of one method on one block over ``nsamples`` samples."""
    text = tiny_text_config(1) if dry_run else llama3_8b_text_config(1)
    model, adapter = language_side(text, getattr(torch, dtype), seed)
    samples = synthetic_samples(model, adapter, sample_shapes(nsamples, dry_run, seed), seed)
    counter = OpCounter()
    with counter:
        if method == "dense":
            dense_forward(model, adapter, samples, "cpu")
        elif method == "mot":
            prune_pathway(to_mot(model, adapter), samples, method_config(method), "visual", show_progress=False)
        else:
            prune(model, adapter, samples, method_config(method), show_progress=False)
    return {"method": method, "nsamples": nsamples, "flops": dict(counter.flops), "ops": counter.ops}


def worker(args: argparse.Namespace) -> dict:
    if args.flops:
        return count_ops(args.worker, args.nsamples[0], args.flops_dtype, args.dry_run, args.seed)
    return run_one(args.worker, args.blocks, args.nsamples[0], args.dtype, args.device, args.dry_run, args.seed)


def in_subprocess(argv: list[str]) -> dict:
    """Run this script as a worker in a fresh process (its own peak memory) and read its JSON line."""
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fit_time(runs: list[dict]) -> tuple[float, float]:
    """``(a, b)`` of ``seconds / blocks = a + b * samples`` through the two sample counts (b alone from one)."""
    points = sorted((r["nsamples"], r["seconds"] / r["blocks"]) for r in runs)
    if len(points) < 2:
        n, t = points[0]
        return 0.0, t / n
    (n1, t1), (n2, t2) = points[0], points[-1]
    b = (t2 - t1) / (n2 - n1)
    if b <= 0:  # noise larger than the per-sample cost: all of it per sample
        return 0.0, t2 / n2
    return max(t1 - b * n1, 0.0), b


def fit_counts(counts: list[dict]) -> dict[str, tuple[float, float]]:
    """Per dtype and for operations: ``(a, b)`` of ``count per block = a + b * samples``."""
    points = sorted(counts, key=lambda c: c["nsamples"])
    first, last = points[0], points[-1]
    keys = set(first["flops"]) | set(last["flops"])
    fitted = {}
    for key in [*keys, "ops"]:
        y1 = first["ops"] if key == "ops" else first["flops"].get(key, 0.0)
        y2 = last["ops"] if key == "ops" else last["flops"].get(key, 0.0)
        n1, n2 = first["nsamples"], last["nsamples"]
        b = (y2 - y1) / (n2 - n1) if n2 != n1 else y1 / n1
        fitted[key] = (max(y1 - b * n1, 0.0), b)
    return fitted


def predicted_run(run: dict, dtype: str, device: str, dry_run: bool) -> dict | None:
    """The memory model's prediction for one measured run (recomputed from its lengths, so that a revised
    model can be checked against stored measurements with ``--resummarise``)."""
    if run["method"] == "dense":
        return None
    text = tiny_text_config(run["blocks"]) if dry_run else llama3_8b_text_config(run["blocks"])
    model, adapter = language_side(text, getattr(torch, dtype), device="meta")
    needs = MethodNeeds.of(method_config(run["method"]), mot_pathway=run["method"] == "mot")
    if "lengths" not in run:  # the samples are drawn from a seed: the same lengths every time
        shapes = sample_shapes(run["nsamples"], dry_run, 0)
        run["lengths"], run["visual"] = [s.n_tokens for s in shapes], [s.n_visual for s in shapes]
    return predict(model_shape(model, adapter), run["lengths"], run["visual"], needs,
                   StoragePlan(getattr(torch, dtype), None, False, False, device)).as_dict()


def full_run_memory(method: str, dtype: torch.dtype, device: str) -> int:
    """The memory model's peak for the whole LLaVA-NeXT 8B, 32 blocks and 128 paper-shaped samples."""
    from probe.models import get_adapter

    model = meta_model(llava_next_8b_config(PAPER_BLOCKS))
    model = model.to(dtype)
    shapes = paper_sample_shapes(PAPER_SAMPLES, 0)
    needs = MethodNeeds.of(method_config(method), mot_pathway=method == "mot")
    return predict(model_shape(model, get_adapter(model)), [s.n_tokens for s in shapes], [s.n_visual for s in shapes],
                   needs, StoragePlan(dtype, None, False, False, device)).device_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=2, help="decoder blocks built (the paper's model has 32)")
    parser.add_argument("--nsamples", type=int, nargs="+", default=[2, 4], help="sample counts (two for the fits)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="model dtype (default: float32 on cpu, bfloat16 on cuda)")
    parser.add_argument("--flops-nsamples", type=int, nargs=2, default=[1, 2],
                        help="sample counts of the operation counts on one block")
    parser.add_argument("--no-flops", action="store_true", help="skip the operation counts (no H100 estimate)")
    parser.add_argument("--gpu-bf16-tflops", type=float, default=400.0,
                        help="assumed sustained bfloat16 matrix rate of an H100 (dense peak about 990)")
    parser.add_argument("--gpu-fp32-tflops", type=float, default=40.0,
                        help="assumed sustained float32 rate of an H100 without TF32 (peak about 67)")
    parser.add_argument("--gpu-op-us", type=float, default=10.0, help="assumed cost of one GPU operation, microseconds")
    parser.add_argument("--cpu-cores", type=int, default=24, help="cores of the CPU the full run is extrapolated to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--dry-run", action="store_true", help="tiny widths and lengths, in this process")
    parser.add_argument("--resummarise", type=Path, default=None, metavar="JSON",
                        help="recompute predictions, fits and extrapolations from the measurements of an earlier "
                             "--out file (nothing is run again)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--flops-dtype", default="bfloat16", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.resummarise is not None:
        earlier = json.loads(args.resummarise.read_text())
        for key in ("blocks", "nsamples", "dtype", "device"):
            setattr(args, key, earlier[key])
        args.dry_run = earlier["shape"].startswith("dry run")
        methods = list(dict.fromkeys(r["method"] for r in earlier["runs"]))
        measured_on = {key: earlier[key] for key in ("machine", "platform", "torch", "transformers")}
        report = summarise(args, methods, earlier["runs"], earlier["operation_counts"], measured_on)
        if "operation_counts_from" in earlier:
            report["operation_counts_from"] = earlier["operation_counts_from"]
        print_report(report)
        write_json(args.out or args.resummarise, report)
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")

    def call(method: str, n: int, flops: bool = False) -> dict:
        argv = ["--worker", method, "--nsamples", str(n), "--blocks", str(args.blocks), "--device", args.device,
                "--dtype", args.dtype, "--seed", str(args.seed)] + (["--flops"] if flops else []) + \
               (["--dry-run"] if args.dry_run else [])
        if args.dry_run:
            ns = parser.parse_args(argv)
            return worker(ns)
        return in_subprocess(argv)

    runs = []
    for n in args.nsamples:
        for method in methods:
            result = call(method, n)
            runs.append(result)
            predicted = result["predicted_peak_bytes"]
            peak = result["peak_bytes"] / 2**30
            line = f"{method:10s} {n:3d} samples: {result['seconds']:8.1f} s, peak {peak:6.2f} GiB"
            print(line + (f", predicted {predicted / 2**30:6.2f} GiB" if predicted else ""), flush=True)
    counts = {}
    if not args.no_flops:
        for method in methods:
            counts[method] = [call(method, n, flops=True) for n in args.flops_nsamples]
            print(f"{method:10s} operations counted", flush=True)
    report = summarise(args, methods, runs, counts)
    print_report(report)
    if args.out is not None:
        write_json(args.out, report)


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def this_machine(device: str) -> dict[str, Any]:
    """Where the measurements were taken (kept as they were by ``--resummarise``)."""
    import transformers

    return {"machine": machine_description(device), "platform": platform.platform(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def summarise(args: argparse.Namespace, methods: list[str], runs: list[dict], counts: dict,
              measured_on: dict[str, Any] | None = None) -> dict[str, Any]:
    measured_on = measured_on or this_machine(args.device)

    for run in runs:
        run["predicted"] = predicted_run(run, args.dtype, args.device, args.dry_run)
        run["predicted_peak_bytes"] = run["predicted"]["device_peak"] if run["predicted"] else None
    by = {(r["method"], r["nsamples"]): r for r in runs}
    ratios = {}
    for n in args.nsamples:
        seconds = {m: by[(m, n)]["seconds"] for m in methods if (m, n) in by}
        pairs = {"wanda/dense": ("wanda", "dense"), "sparsegpt/wanda": ("sparsegpt", "wanda"),
                 "atv/wanda": ("atv", "wanda"), "tamp/wanda": ("tamp", "wanda")}
        ratios[str(n)] = {k: seconds[a] / seconds[b] for k, (a, b) in pairs.items() if a in seconds and b in seconds}
    memory = [{"method": r["method"], "nsamples": r["nsamples"], "measured": r["peak_bytes"],
               "predicted": r["predicted_peak_bytes"],
               "error": r["predicted_peak_bytes"] / r["peak_bytes"] - 1 if r["peak_bytes"] > 0 else None}
              for r in runs if r["predicted_peak_bytes"]]
    gpu_dtype, cpu_dtype = torch.bfloat16, torch.float32
    extrapolated = {}
    for method in methods:
        a, b = fit_time([r for r in runs if r["method"] == method])
        here = PAPER_BLOCKS * (a + b * PAPER_SAMPLES)
        cores = measured_on["machine"].get("torch_threads") or torch.get_num_threads()
        entry: dict[str, Any] = {"cpu_here_seconds": here, "cpu_cores_seconds": here * cores / args.cpu_cores}
        if method != "dense":
            entry["cpu_peak_bytes"] = full_run_memory(method, cpu_dtype, "cpu")
            entry["h100_peak_bytes"] = full_run_memory(method, gpu_dtype, "cuda")
            entry["h100_fits_80gb"] = entry["h100_peak_bytes"] <= 80e9
        if method in counts:
            fitted = fit_counts(counts[method])
            total = {k: PAPER_BLOCKS * (fa + fb * PAPER_SAMPLES) for k, (fa, fb) in fitted.items()}
            rates = {"torch.bfloat16": args.gpu_bf16_tflops * 1e12, "torch.float32": args.gpu_fp32_tflops * 1e12}
            compute = sum(v / rates.get(k, rates["torch.float32"]) for k, v in total.items() if k != "ops")
            entry["flops"] = {k: v for k, v in total.items() if k != "ops"}
            entry["operations"] = total["ops"]
            entry["h100_seconds"] = compute + total["ops"] * args.gpu_op_us * 1e-6
        if method in PAPER_TABLE4:
            entry["paper_a100_seconds"] = PAPER_TABLE4[method]
        extrapolated[method] = entry
    return {
        "shape": "dry run: tiny widths" if args.dry_run else "llava-hf/llama3-llava-next-8b-hf decoder widths",
        "blocks": args.blocks, "nsamples": args.nsamples, "dtype": args.dtype, "device": args.device,
        **measured_on, "goals": GOALS, "memory_goal": MEMORY_GOAL, "ratios": ratios, "runs": runs,
        "memory_model": memory, "operation_counts": counts,
        "assumptions": {"gpu_bf16_tflops": args.gpu_bf16_tflops, "gpu_fp32_tflops": args.gpu_fp32_tflops,
                        "gpu_op_us": args.gpu_op_us, "cpu_cores": args.cpu_cores,
                        "cpu_scaling": "linear in cores from this machine's torch threads"},
        "extrapolated_full_run": extrapolated,
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{report['shape']}, {report['blocks']} blocks, {report['dtype']} on {report['device']}")
    for n, ratios in report["ratios"].items():
        text = ", ".join(f"{k} {v:.2f} (goal <= {report['goals'][k]})" for k, v in ratios.items())
        print(f"  {n} samples: {text}")
    print(f"memory model (predicted / measured peak - 1; goal within {report['memory_goal']:.0%}):")
    for row in report["memory_model"]:
        print(f"  {row['method']:10s} {row['nsamples']:3d} samples: {row['predicted'] / 2**30:6.2f} / "
              f"{row['measured'] / 2**30:6.2f} GiB" + (f" ({row['error']:+.1%})" if row["error"] is not None else ""))
    errors = [abs(row["error"]) for row in report["memory_model"] if row["error"] is not None]
    if errors:
        print(f"  largest error {max(errors):.1%}: {'within' if max(errors) <= report['memory_goal'] else 'outside'} "
              "the goal")
    print("full run, 32 blocks x 128 samples (extrapolated):")
    for method, e in report["extrapolated_full_run"].items():
        parts = [f"here {e['cpu_here_seconds'] / 3600:6.1f} h", f"{report['assumptions']['cpu_cores']}-core CPU "
                 f"{e['cpu_cores_seconds'] / 60:6.1f} min"]
        if "h100_seconds" in e:
            parts.append(f"H100 {e['h100_seconds']:7.1f} s")
        if "h100_peak_bytes" in e:
            parts.append(f"peak CPU {e['cpu_peak_bytes'] / 1e9:5.1f} GB, H100 {e['h100_peak_bytes'] / 1e9:5.1f} GB")
        if "paper_a100_seconds" in e:
            parts.append(f"paper A100 {e['paper_a100_seconds']} s")
        print(f"  {method:10s} " + ", ".join(parts))


if __name__ == "__main__":
    main()
