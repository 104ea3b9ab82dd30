"""The performance tables of the benchmarks page and the README, written from stored benchmark output:
``results/bench/scale-cpu.json`` (``bench/bench_scale.py``) and ``results/bench/eval-batching-cpu.json``
(``bench/bench_eval.py``).

    python -m analysis.performance          # rewrite the blocks between the pages' markers
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCALE_JSON = ROOT / "results" / "bench" / "scale-cpu.json"
PAGE = ROOT / "docs" / "benchmarks.md"
MARKERS = ("<!-- scale:start -->", "<!-- scale:end -->")
EVAL_JSON = ROOT / "results" / "bench" / "eval-batching-cpu.json"
EVAL_MARKERS = ("<!-- eval-batching:start -->", "<!-- eval-batching:end -->")
EVAL_PAGES = (ROOT / "README.md", PAGE)
LABELS = {"wanda/dense": "Wanda / dense forward", "sparsegpt/wanda": "SparseGPT / Wanda", "atv/wanda": "ATV / Wanda",
          "tamp/wanda": "TAMP / Wanda"}
PAPER_RATIOS = {"sparsegpt/wanda": 9.04, "atv/wanda": 1.35, "tamp/wanda": 19.25}
METHOD_NAMES = {"dense": "dense forward", "wanda": "Wanda", "sparsegpt": "SparseGPT", "atv": "ATV", "tamp": "TAMP",
                "owl": "OWL (Wanda)", "mot": "MoT pathway (Wanda)"}


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def scale_markdown(report: dict[str, Any]) -> str:
    """Three tables: the ratio goals at each sample count, the memory model against measured peaks, and
    the full run extrapolated beside the paper's Table 4."""
    counts = [str(n) for n in report["nsamples"]]
    machine = report["machine"]
    lines = [f"Measured by `bench/bench_scale.py`: LLaVA-NeXT-8B's decoder widths, {report['blocks']} blocks, "
             f"{report['dtype']}, {machine.get('cpu')} ({machine.get('torch_threads')} threads), "
             f"samples of the paper's shape ({' and '.join(counts)} samples).", "",
             "| ratio | " + " | ".join(f"{n} samples" for n in counts) + " | goal | paper (A100) |",
             "|---|" + "---|" * len(counts) + "---|---|"]
    for key, label in LABELS.items():
        cells = [f"{report['ratios'][n][key]:.2f}" if key in report["ratios"].get(n, {}) else "" for n in counts]
        paper = f"{PAPER_RATIOS[key]}" if key in PAPER_RATIOS else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | ≤ {report['goals'][key]} | {paper} |")
    lines += ["", "| method | samples | seconds | peak (GiB) | predicted (GiB) | error |", "|---|---|---|---|---|---|"]
    runs = {(r["method"], r["nsamples"]): r for r in report["runs"]}
    for (method, n), run in runs.items():
        predicted = run.get("predicted_peak_bytes")
        error = f"{predicted / run['peak_bytes'] - 1:+.1%}" if predicted else ""
        lines.append(f"| {METHOD_NAMES.get(method, method)} | {n} | {run['seconds']:.1f} | {_gib(run['peak_bytes'])} | "
                     f"{_gib(predicted) if predicted else ''} | {error} |")
    assumptions = report["assumptions"]
    lines += ["", f"Full run extrapolated (32 blocks, 128 samples): this machine from the per-block fit; a "
              f"{assumptions['cpu_cores']}-core CPU scaled by cores; an H100 from the operations counted on one block "
              f"at {assumptions['gpu_bf16_tflops']:g} TFLOP/s bfloat16, {assumptions['gpu_fp32_tflops']:g} TFLOP/s "
              f"float32 and {assumptions['gpu_op_us']:g} µs per operation (assumed rates, not measurements); peaks "
              "from the memory model (float32 on the CPU, bfloat16 on the GPU).", "",
              f"| method | this machine (h) | {assumptions['cpu_cores']}-core CPU (min) | CPU peak (GB) | H100 (s) | "
              "H100 peak (GB) | paper, A100 (s) |", "|---|---|---|---|---|---|---|"]
    for method, entry in report["extrapolated_full_run"].items():
        cells = [f"{entry['cpu_here_seconds'] / 3600:.1f}", f"{entry['cpu_cores_seconds'] / 60:.0f}",
                 f"{entry['cpu_peak_bytes'] / 1e9:.1f}" if "cpu_peak_bytes" in entry else "",
                 f"{entry['h100_seconds']:.0f}" if "h100_seconds" in entry else "",
                 f"{entry['h100_peak_bytes'] / 1e9:.1f}" if "h100_peak_bytes" in entry else "",
                 f"{entry['paper_a100_seconds']}" if "paper_a100_seconds" in entry else ""]
        lines.append(f"| {METHOD_NAMES.get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def eval_batching_markdown(report: dict[str, Any]) -> str:
    """Items per second at each batch size against batch 1, per model and task, and whether every run's
    scores equal batch 1's."""
    sizes = list(dict.fromkeys(str(r["batch_size"]) for r in report["runs"]))
    machine = report["machine"]
    lines = [f"Measured by `bench/bench_eval.py` in one run: {report['limit']} items per task, {report['dtype']}, "
             f"{machine.get('cpu')} ({machine.get('torch_threads')} threads), the median of {report['repeats']} "
             "rounds over the batch sizes. Items per second at batch 1, then each batch size's items per second "
             "over batch 1's. Multiple-choice options already run as one batch per item at batch 1.", "",
             "| model | task | batch 1 (items/s) | " + " | ".join(f"batch {s}" for s in sizes[1:])
             + " | scores equal to batch 1 |", "|---|---|---|" + "---|" * len(sizes)]
    pairs = list(dict.fromkeys((r["model"], r["task"]) for r in report["runs"]))
    for model, task in pairs:
        runs = {str(r["batch_size"]): r for r in report["runs"] if (r["model"], r["task"]) == (model, task)}
        cells = [f"{runs[s]['ratio_to_batch_1']:.2f}x" if s in runs else "" for s in sizes[1:]]
        equal = "yes" if all(r["equal_to_batch_1"] for r in runs.values()) else "no"
        lines.append(f"| {model} | {task} | {runs['1']['items_per_second']:.2f} | " + " | ".join(cells)
                     + f" | {equal} |")
    return "\n".join(lines)


def page_block(text: str, markers: tuple[str, str] = MARKERS) -> str:
    """The part of ``text`` between ``markers``."""
    return text.split(markers[0], 1)[1].split(markers[1], 1)[0].strip("\n")


def _replace_block(page: Path, markers: tuple[str, str], block: str) -> None:
    text = page.read_text()
    head, rest = text.split(markers[0], 1)
    tail = rest.split(markers[1], 1)[1]
    page.write_text(f"{head}{markers[0]}\n{block}\n{markers[1]}{tail}")


def write_page(page: Path = PAGE, source: Path = SCALE_JSON) -> None:
    """Rewrite the page's block between the scale markers from ``source``."""
    _replace_block(page, MARKERS, scale_markdown(json.loads(source.read_text())))


def write_eval_batching(pages: tuple[Path, ...] = EVAL_PAGES, source: Path = EVAL_JSON) -> None:
    """Rewrite the batched-scoring block of each page from ``source``."""
    block = eval_batching_markdown(json.loads(source.read_text()))
    for page in pages:
        _replace_block(page, EVAL_MARKERS, block)


if __name__ == "__main__":
    write_page()
    write_eval_batching()
