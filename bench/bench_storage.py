"""Masks with bfloat16 activation storage against float32 storage, on one model (default: the reference LVLM).

Prunes the same model twice with the same calibration samples, Wanda at 50%, once keeping the hidden states
between blocks as computed (float32) and once in bfloat16 (``ActivationStorage``). Per matrix: the entries
whose mask differs, the largest relative difference of the column norms, and whether every differing entry
is a near-tie: its float32 score within twice that difference of its row's pruning boundary (a score moves
by at most that much, so only such entries can change sides).

    python bench/bench_storage.py [MODEL] [--nsamples 32] [--out results/bench/storage-bf16.json]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from probe.calibration.activation_store import ActivationStorage
from probe.calibration.calibrate import capture_calibration
from probe.core.record import linear_key
from probe.data.calibration import CalibrationSpec
from probe.models.devices import machine_description
from probe.models.loading import load_model
from probe.pruning.engine import PruneConfig, prune
from probe.pruning.scorers.wanda import WandaScorer


def wanda_run(loaded, samples, storage: ActivationStorage | None, sparsity: float) -> list[dict]:
    """Per pruned matrix, in order: its key, its float32 weight before pruning, its column norms, its mask."""
    seen = []
    original = WandaScorer.prune

    def record(self, weight, stats, target, pattern):
        seen.append((weight.detach().float().clone(), stats.column_norms().clone()))
        return original(self, weight, stats, target, pattern)

    model = copy.deepcopy(loaded.model)
    WandaScorer.prune = record
    try:
        prune(model, loaded.adapter, samples, PruneConfig(method="wanda", sparsity=sparsity), show_progress=False,
              storage=storage)
    finally:
        WandaScorer.prune = original
    keys = [linear_key(b, name) for b, layer in enumerate(loaded.adapter.decoder_layers(model))
            for name in loaded.adapter.prunable_linears(layer)]
    masks = [lin.weight == 0 for layer in loaded.adapter.decoder_layers(model)
             for lin in loaded.adapter.prunable_linears(layer).values()]
    return [{"key": k, "weight": w, "norms": n, "mask": m} for k, (w, n), m in zip(keys, seen, masks)]


def boundary_gaps(weight: torch.Tensor, norms: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Every entry's relative distance from its row's pruning boundary (the midpoint of the k-th and
    (k+1)-th smallest float32 Wanda scores)."""
    scores = weight.abs() * norms.unsqueeze(0)
    k = int(scores.shape[1] * sparsity)
    ordered = scores.sort(dim=1).values
    boundary = ((ordered[:, k - 1] + ordered[:, k]) / 2).unsqueeze(1).clamp(min=1e-30)
    return (scores - boundary).abs() / boundary


def near_tie_outliers(weight: torch.Tensor, norms: torch.Tensor, differs: torch.Tensor, sparsity: float,
                      tolerance: float) -> int:
    """Differing entries farther than ``tolerance`` (relative) from their row's boundary."""
    return int((differs & (boundary_gaps(weight, norms, sparsity) > tolerance)).sum())


def compare(model: str, nsamples: int, sparsity: float = 0.5) -> dict:
    loaded = load_model(model)
    samples = capture_calibration(loaded, CalibrationSpec(nsamples=nsamples), show_progress=False)
    plain = wanda_run(loaded, samples, None, sparsity)
    half = wanda_run(loaded, samples, ActivationStorage(torch.bfloat16), sparsity)
    rows = []
    for a, b in zip(plain, half):
        stray = float(((b["norms"] - a["norms"]).abs() / a["norms"].clamp(min=1e-12)).max())
        differs = a["mask"] != b["mask"]
        gaps = boundary_gaps(a["weight"], a["norms"], sparsity)
        rows.append({"matrix": a["key"], "weights": a["mask"].numel(), "differing": int(differs.sum()),
                     "norm_stray": stray,
                     "not_near_ties": near_tie_outliers(a["weight"], a["norms"], differs, sparsity, 2 * stray + 1e-6),
                     "median_gap_differing": float(gaps[differs].median()) if differs.any() else None,
                     "median_gap_all": float(gaps.median())})
    first = [r for r in rows if r["matrix"].startswith("layers.0.")]
    return {"model": model, "nsamples": nsamples, "sparsity": sparsity, "machine": machine_description(),
            "torch": torch.__version__, "weights": sum(r["weights"] for r in rows),
            "differing": sum(r["differing"] for r in rows), "not_near_ties": sum(r["not_near_ties"] for r in rows),
            "first_block": {"weights": sum(r["weights"] for r in first),
                            "differing": sum(r["differing"] for r in first),
                            "not_near_ties": sum(r["not_near_ties"] for r in first),
                            "largest_norm_stray": max(r["norm_stray"] for r in first)},
            "largest_norm_stray": max(r["norm_stray"] for r in rows), "matrices": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="reference")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = compare(args.model, args.nsamples)
    first = report["first_block"]
    differing = [r for r in report["matrices"] if r["differing"]]
    closer = sum(r["median_gap_differing"] < r["median_gap_all"] for r in differing)
    print(f"{args.model}, {args.nsamples} samples, Wanda 50%, float32 against bfloat16 activation storage:\n"
          f"  first block (the rounding of its input alone): {first['differing']} of {first['weights']} mask entries "
          f"differ, {first['not_near_ties']} of them farther from their row's boundary than twice the largest "
          f"column-norm difference ({first['largest_norm_stray']:.2%})\n"
          f"  all blocks (each block's differences change the next block's input): {report['differing']} of "
          f"{report['weights']} ({report['differing'] / report['weights']:.2%}), {report['not_near_ties']} not "
          f"within twice their matrix's largest column-norm difference; in {closer} of {len(differing)} matrices "
          "the differing entries' median distance to the boundary is below all entries' median")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
