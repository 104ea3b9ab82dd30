"""The ``probe`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

from probe.errors import ProbeError
from probe.names import (
    ALLOCATION_NAMES,
    BUDGETS,
    DTYPES,
    EXECUTORS,
    FIGURES,
    GRIDS,
    K_RULES,
    METHODS,
    SCORER_NAMES,
    SIGNALS,
    TOKENS,
)

DEFAULT_MODEL = "reference"


class RunInterrupted(ProbeError):
    """Ctrl-C during a run; the message says what was kept and how to go on."""


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default and keeps the examples' line breaks."""


EXAMPLES = """examples:
  probe prune --method wanda --tokens text --sparsity 0.5 --out runs/wanda-text-50
  probe prune llava-hf/llama3-llava-next-8b-hf --device cuda --dtype bfloat16 --method atv --out pruned/atv-50
  probe eval runs/wanda-text-50 --tasks offline --limit 40 --dense runs/dense.csv
  probe grid --quick
  probe plot drift runs/atv-50
"""


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help="hub id, local folder, reference or reference-large (offline reference LVLMs), tiny:FAMILY")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weights' dtype")
    p.add_argument("--device", default="cpu", help="where the model lives, e.g. cpu, cuda or cuda:1")
    p.add_argument("--offload", nargs="?", const="on", default="off", choices=("on", "off", "auto"),
                   help="on: keep the model on CPU and move one block at a time to --run-device; auto (probe prune): "
                        "the first plan the memory model predicts to fit (offload, bfloat16 activations, disk spill)")
    p.add_argument("--run-device", default=None, help="where blocks run in offload mode (None: cuda)")
    p.add_argument("--max-pixels", type=positive_int, default=None,
                   help="image resolution cap of Qwen-VL families; use the same value when evaluating")


def _add_calib_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", default="bundled",
                   help="bundled, hf:NAME (a datasets dataset), or a LLaVA-style .json/.jsonl file")
    p.add_argument("--image-root", default=None, help="folder the calibration images are relative to")
    p.add_argument("--calib-subset", default=None,
                   help="keep records whose data_source/image path contains this, e.g. sharegpt4v")
    p.add_argument("--calib-split", default="train", help="split of an hf: dataset")
    p.add_argument("--nsamples", type=positive_int, default=128, help="calibration samples to draw")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("probe-lvlm")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe", description="Weight pruning and sensitivity probes for LVLMs.",
                                     epilog=EXAMPLES, formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, examples: str = "") -> argparse.ArgumentParser:  # noqa: A002
        epilog = "examples:\n" + examples if examples else None
        return sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=HelpFormatter)

    p = command("prune", "prune a model and write a Hugging Face checkpoint with a manifest",
                "  probe prune --method wanda --tokens text --out runs/wanda-text\n"
                "  probe prune MODEL --method sparsegpt --pattern 2:4 --out runs/sgpt-2of4\n"
                "  probe prune MODEL --method atv --alpha 1.5 --k-rule released --out runs/atv\n"
                "  probe prune MODEL --tokens atv --scorer sparsegpt --allocation owl --out runs/atv-sgpt-owl\n")
    _add_model_args(p)
    _add_calib_args(p)
    p.add_argument("--method", default=None, choices=METHODS,
                   help="a named method, i.e. a choice on the axes below: magnitude, wanda, sparsegpt, ria; atv "
                        "(ATV-Pruning: --tokens atv --scorer wanda); tamp (TAMP's token selection, uniform "
                        "sparsity); tamp-full (with TAMP's layer-wise allocation); owl (--scorer wanda --allocation "
                        "owl). None: wanda unless an axis is given")
    p.add_argument("--tokens", "--pool", dest="tokens", default=None, choices=TOKENS,
                   help="token selector: which calibration tokens feed the statistics (None: the method's, else mixed)")
    p.add_argument("--scorer", default=None, choices=SCORER_NAMES,
                   help="which weights go and what the kept ones become (None: the method's, else wanda)")
    p.add_argument("--allocation", default=None, choices=ALLOCATION_NAMES,
                   help="sparsity per block or linear: uniform, owl (outlier-weighted, Yin et al. 2024) or tamp "
                        "(TAMP's per-linear allocation) (None: the method's, else uniform)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="fraction of weights removed, in [0, 1); None: implied by an N:M pattern, else 0.5")
    p.add_argument("--pattern", default="unstructured", help="unstructured, or N:M keeping N of every M (2:4, 4:8)")
    p.add_argument("--true-sequential", action="store_true",
                   help="each group of linears sharing an input takes its statistics after the earlier groups of "
                        "its block are pruned (SparseGPT's --true-sequential; any scorer that uses statistics)")
    atv = p.add_argument_group("token selector atv")
    atv.add_argument("--alpha", type=float, default=None, help="visual budget scale (0 = text pool) (None: 1)")
    atv.add_argument("--k-rule", default=None, choices=K_RULES,
                     help="budget: paper (floor(alpha*s_bar*n_text)) or released (round(min(1,alpha*s_bar)*n_text)) "
                          "(None: paper)")
    atv.add_argument("--signal", default=None, choices=SIGNALS,
                     help="selection signal: drift (the method), random, abs (attention from text queries) or dbs "
                          "(diversity); ablations of the paper's Table 3 (None: drift)")
    atv.add_argument("--budget", default=None, choices=BUDGETS,
                     help="adaptive (per block, from drift) or fixed (the same count in every block) (None: adaptive)")
    atv.add_argument("--budget-from", type=Path, default=None,
                     help="with --budget fixed: an adaptive ATV run (folder) whose total of kept visual tokens to keep")
    atv.add_argument("--text-ratio", type=float, default=None,
                     help="fraction of text tokens kept, ranked by drift (ablation) (None: 1, all)")
    p.add_argument("--kept-weighted", action="store_true",
                   help="--tokens kept: count each token by the token method's saliency (FastV: its attention)")
    scorer = p.add_argument_group("scorers")
    scorer.add_argument("--use-variant", action="store_true",
                        help="wanda: per-row cumulative-score thresholds (the upstream code's use_variant)")
    scorer.add_argument("--blocksize", type=positive_int, default=None, help="sparsegpt: lazy-update block (None: 128)")
    scorer.add_argument("--percdamp", type=float, default=None, help="sparsegpt: Hessian dampening (None: 0.01)")
    scorer.add_argument("--ria-power", type=float, default=None,
                        help="ria: exponent of the activation norm (None: 0.5)")
    scorer.add_argument("--ria-per-row", action="store_true",
                        help="ria: prune each output row alone (default: one threshold per matrix)")
    allocation = p.add_argument_group("allocations")
    allocation.add_argument("--owl-m", type=float, default=None,
                            help="owl: a score is an outlier above M times the block mean (None: 5)")
    allocation.add_argument("--owl-lambda", type=float, default=None,
                            help="owl: block sparsities span 2*lambda around the target, their mean (None: 0.08)")
    allocation.add_argument("--max-extra", type=float, default=None,
                            help="tamp allocation: no linear pruned beyond target + this (None: 0.1)")
    p.add_argument("--token-pruning", default=None, metavar="METHOD",
                   help="the visual token pruning the model will be served with (e.g. 'fastv(k=2, ratio=0.5)'): "
                        "written into the checkpoint so that evaluation applies it; --tokens kept calibrates on the "
                        "tokens it keeps")
    p.add_argument("--comp-style", type=positive_int, default=None, metavar="STAGES",
                   help="reach --sparsity and the ratio of --token-pruning in STAGES steps of each, taking at every "
                        "stage the step (weights or tokens) whose KL to the dense logits is lower (a training-free, "
                        "unofficial reading of CoMP's strategy; see the README)")
    p.add_argument("--comp-epsilon", type=float, default=None,
                   help="comp-style: probability of a random step (None: 0.1)")
    memory = p.add_argument_group("memory")
    memory.add_argument("--activation-dtype", default="model", choices=("model", "float32", "bfloat16", "float16"),
                        help="dtype of the hidden states kept between blocks (statistics still accumulate in float32)")
    memory.add_argument("--spill-activations", action="store_true",
                        help="keep those hidden states in a memory-mapped file beside --out instead of in RAM")
    memory.add_argument("--no-memory-check", action="store_true",
                        help="run even where the memory model predicts the run does not fit")
    p.add_argument("--out", required=True, type=Path, help="output folder (written atomically)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_prune)

    p = command("eval", "score a model through lmms-eval (in process), or by the proxy metric against the dense "
                        "model (--metric kl)",
                "  probe eval --tasks offline --limit 40 --out runs/dense.csv\n"
                "  probe eval runs/wanda-text --tasks offline --limit 40 --dense runs/dense.csv --log-samples\n"
                "  probe eval runs/wanda-text --metric kl --out runs/wanda-text-kl.csv\n")
    _add_model_args(p)
    p.add_argument("--metric", default="tasks", choices=("tasks", "kl"),
                   help="tasks: the task metrics through lmms-eval; kl: per-token KL divergence from the dense "
                        "model's next-token distribution and the reference answers' negative log-likelihood, on "
                        "held-out image-text and text-only conversations, with standard errors")
    p.add_argument("--dense-model", default=None, metavar="MODEL",
                   help="--metric kl: the dense model compared with (None: the model the checkpoint was pruned "
                        "from, as its manifest names it)")
    p.add_argument("--proxy-samples", type=positive_int, default=32,
                   help="--metric kl: held-out conversations per group (image-text, text-only)")
    p.add_argument("--calib", default=None,
                   help="--metric kl: the source of the held-out image-text conversations, as probe prune's "
                        "--calib (None: the checkpoint's calibration source, else bundled); the samples its "
                        "calibration drew are left out")
    p.add_argument("--tasks", default="offline",
                   help="comma-separated lmms-eval task names and presets: offline (our tasks from shipped data), "
                        "offline-hard (emoji, clip-art and OpenCV digits, by option log-likelihood; make hard-data), "
                        "paper9 (the paper's nine benchmarks), table1 (MMBench-EN, ScienceQA-IMG, VizWiz)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="score only the first N items of each task (None: every item)")
    p.add_argument("--dense", type=Path, default=None,
                   help="a dense run's CSV (written by --out): adds the retention against it")
    p.add_argument("--out", type=Path, default=None, help="write the scores as CSV (task, metric, score, n)")
    p.add_argument("--log-samples", action="store_true",
                   help="also write what the model answered for every item: OUT.samples.jsonl beside --out "
                        "(or runs/eval/samples.jsonl)")
    p.add_argument("--loglikelihood", default="sum", choices=("sum", "mean"),
                   help="multiple-choice scoring: the summed negative log-likelihood of an option, or its mean "
                        "per token (as lmms-eval's llava_hf returns it); accuracies differ between the two")
    p.add_argument("--seed", type=int, default=0, help="seed of lmms-eval's random generators")
    p.add_argument("--token-pruning", default=None, metavar="METHOD",
                   help="drop visual tokens at inference: fastv (after layer K-1, the R least attended; "
                        "'fastv(k=2, ratio=0.5)'), random (the control; 'random(k=2, ratio=0.5, seed=0)'), vitcop "
                        "(its decoder stages; presets vitcop-1/3, vitcop-2/9, vitcop-1/9) or none (None: the "
                        "checkpoint's own, if it was pruned with one)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_eval)

    p = command("grid", "an experiment grid: the MoT sensitivity grid (Table 1, the default) or the method "
                        "comparison (Table 2, grid: table2 in the config); every cell evaluated",
                "  probe grid --quick\n"
                "  probe grid configs/table2_offline.yaml --out runs/table2\n")
    p.add_argument("config", nargs="?", type=Path, default=None,
                   help="grid YAML (None: the reference model on the offline tasks)")
    p.add_argument("--quick", action="store_true",
                   help="8 calibration samples, 5 items per task, sparsity 0.5 only: a run of minutes, written to "
                        "runs/grid/<name>-quick unless --out says otherwise")
    p.add_argument("--grid", default=None, choices=GRIDS, help="which grid (overrides the config)")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (overrides the config; None: the config's, or runs/grid/<grid>)")
    p.add_argument("--log-samples", action="store_true",
                   help="also write what the model answered for every item, per cell, to OUT/samples/")
    p.add_argument("--cells", type=_cell_list, default=None, metavar="CELL[,CELL...]",
                   help="run only these cells now, in this order (ids as in results.csv, e.g. dense,wanda/50%%); "
                        "a later run without --cells does the rest")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything the grid needs (model, tasks, calibration, output folder) and print what "
                        "it would run, writing nothing")
    p.add_argument("--list-cells", action="store_true",
                   help="print the grid's cells, each done or to do, and stop (reads only the config and the output "
                        "folder)")
    settings = p.add_argument_group("settings (override the config's)")
    settings.add_argument("--model", default=None, help="the model (hub id, folder, reference, tiny:FAMILY)")
    settings.add_argument("--tasks", default=None, help="comma-separated tasks or presets")
    settings.add_argument("--limit", type=positive_int, default=None, help="items per task and cell")
    settings.add_argument("--nsamples", type=positive_int, default=None, help="calibration samples per draw")
    settings.add_argument("--sparsity", type=_setting_list, default=None, metavar="S[,S...]",
                          help="the sparsities of a table1 grid (0.5,0.6) or the settings of a table2 grid "
                               "(0.5,2:4)")
    settings.add_argument("--calib-seeds", type=_seed_list, default=None, metavar="SEED[,SEED...]",
                          help="calibration draws: every cell that uses calibration pruned once per seed")
    settings.add_argument("--metrics", type=_name_list, default=None, metavar="METRIC[,METRIC...]",
                          help="tasks (the task metrics) and/or kl (the proxy metric)")
    cluster = p.add_argument_group("cells as cluster jobs (--executor slurm or ray; the config's cluster: mapping "
                                   "sets the same resources, these flags override it)")
    cluster.add_argument("--executor", default="local", choices=EXECUTORS,
                         help="local: cells one after another in this process; slurm: one SLURM job per cell "
                              "(submitit); ray: one Ray task per cell")
    cluster.add_argument("--gpus-per-cell", type=int, default=None, help="GPUs of each cell's job (None: 0)")
    cluster.add_argument("--cpus-per-cell", type=positive_int, default=None, help="CPUs of each cell's job (None: 1)")
    cluster.add_argument("--mem", type=positive_int, default=None, help="memory of each SLURM job in GB")
    cluster.add_argument("--time", type=positive_int, default=None, help="time limit of each SLURM job in minutes "
                                                                           "(None: 120)")
    cluster.add_argument("--partition", default=None, help="SLURM partition")
    cluster.add_argument("--max-parallel", type=int, default=None, help="cells in flight at once (None or 0: all)")
    cluster.add_argument("--retries", type=int, default=None, help="tries after a cell's first failure (None: 1)")
    cluster.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                         help="any other sbatch option, e.g. --slurm-option account=myproj --slurm-option qos=high")
    cluster.add_argument("--ray-address", default=None,
                         help="address of a running Ray cluster (None: the one this process is attached to, or a "
                              "new local one)")
    p.set_defaults(func=cmd_grid)

    p = command("plot", "the paper's figures from stored results (PNG and PDF)",
                "  probe plot iou results/grid/table1\n"
                "  probe plot alpha results/grid/ablations\n"
                "  probe plot drift results/grid/table2/cells/atv_50.json\n")
    p.add_argument("figure", choices=FIGURES,
                   help="iou (Fig. 1b, from a table1 grid), alpha (Fig. 4) and text-ratio (Fig. 5) (from a table2 grid "
                        "of atv(alpha=...) / atv(text_ratio=...) cells), drift (Fig. A6, from an ATV run or grid cell "
                        "record), tsne (Fig. 1a, computed from a model), flops (retention vs FLOPs of a grid with "
                        "token_methods)")
    p.add_argument("source", nargs="?", default=None,
                   help="grid folder, ATV run folder or cell record (.json); for tsne a model (None: reference)")
    p.add_argument("--out", type=Path, default=None, help="output file stem (None: beside the source)")
    p.add_argument("--block", type=int, default=8, help="tsne: the block whose input activations are shown")
    p.add_argument("--nsamples", type=positive_int, default=8, help="tsne: calibration samples (bundled set)")
    p.set_defaults(func=cmd_plot)

    p = command("table", "the tables of a grid folder from the cells finished so far (what `probe grid` writes "
                         "when it ends)",
                "  probe table results/grid/table1-large\n"
                "  probe table results/grid/table2-large-calib1 --against results/grid/table2-large\n"
                "  probe table results/grid/table2-large --average-with results/grid/table2-large-calib1\n")
    p.add_argument("grid", type=Path, help="grid folder (holding manifest.json and results.csv)")
    p.add_argument("--against", type=Path, default=None, metavar="FIRST_GRID",
                   help="also compare GRID, a rerun of the cells of FIRST_GRID (on another machine or calibration "
                        "draw, with its dense cell), against it: per cell the items answered differently and the "
                        "paired differences, written to GRID/<name>_vs_<first name>.md|csv|tex")
    p.add_argument("--average-with", type=Path, action="append", default=[], metavar="OTHER_GRID",
                   help="also write the tables of GRID and OTHER_GRID as calibration draws of the same cells "
                        "(OTHER_GRID a rerun on another calibration seed with GRID's dense cell; repeat for more "
                        "draws): each "
                        "cell finished in every draw is the mean over draws, with a two-level bootstrap (draws, "
                        "then items), written to GRID/<name>_mean_of_<k>_draws.md|csv|tex")
    p.add_argument("--adjust", choices=("holm", "bh", "none"), default="holm",
                   help="how the p-values of a table's comparisons are adjusted for their number: holm "
                        "(family-wise error), bh (Benjamini-Hochberg, false discovery rate) or none")
    p.add_argument("--resamples", type=positive_int, default=10_000,
                   help="bootstrap resamples of every interval (and random sign patterns of a test too large to "
                        "enumerate)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of random sign patterns")
    p.set_defaults(func=cmd_table)

    p = command("families", "list the model families with an adapter of their own, then the architectures the "
                            "generic adapter serves where their structure allows")
    p.set_defaults(func=cmd_families)

    p = command("check", "run the family contract on a model: one row per property, exit status 0 when the "
                         "toolkit can prune it (the first command to run on a new LVLM)",
                "  probe check tiny:llava\n"
                "  probe check llava-hf/llava-v1.6-mistral-7b-hf --device cuda --dtype bfloat16\n"
                "  probe check --config path/to/config.json   # a small random model of that config\n")
    _add_model_args(p)
    p.add_argument("--config", default=None, metavar="FILE|ID",
                   help="instead of MODEL: a config.json, a folder holding one, or a hub id; checks a small random "
                        "model of that exact config class (widths and depths shrunk) when the weights are not at hand")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_check)

    p = command("ppl", "perplexity on held-out text with its 95%% interval (the LLM-pruning papers' measure; "
                       "any causal language model, or an LVLM's language side)",
                "  probe ppl meta-llama/Llama-3.1-8B --text wikitext2_test.txt --seq-len 2048\n"
                "  probe ppl runs/llama-wanda-50 --text wikitext2_test.txt --seq-len 2048 --out ppl.json\n")
    _add_model_args(p)
    p.add_argument("--text", type=Path, required=True, help="a UTF-8 text file of held-out text")
    p.add_argument("--seq-len", type=positive_int, default=512, help="tokens per window (one forward each)")
    p.add_argument("--max-windows", type=positive_int, default=None, help="measure on at most this many windows")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_ppl)
    return parser


def cmd_ppl(args: argparse.Namespace) -> int:
    import json

    from probe.evaluation.perplexity import perplexity
    from probe.loading import load_model, parse_dtype
    from probe.manifest import check_output_file, write_text_atomic
    from probe.progress import quiet_libraries

    _refuse_offload(args, "ppl")
    if args.max_pixels is not None:
        raise ProbeError("--max-pixels caps image resolution; probe ppl reads text only")
    if not args.text.is_file():
        raise ProbeError(f"--text {args.text}: no such file")
    try:
        text = args.text.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProbeError(f"--text {args.text}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if args.out is not None:
        check_output_file(args.out)
    with quiet_libraries(args.no_progress):
        loaded = load_model(args.model, dtype=parse_dtype(args.dtype), device=args.device)
        tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
        result = perplexity(loaded.model, tokenizer, text, args.seq_len, args.max_windows,
                            show_progress=not args.no_progress)
    print(f"{args.model}: {result}")
    if args.out is not None:
        record = {"model": args.model, "text": str(args.text), **result.to_dict()}
        write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
    return 0


def _refuse_offload(args: argparse.Namespace, command: str) -> None:
    """Offloading is a setting of ``probe prune``; elsewhere the model runs whole on ``--device``."""
    if args.offload != "off" or args.run_device is not None:
        raise ProbeError(f"probe {command} runs the whole model on --device; --offload and --run-device are "
                         "settings of probe prune")


def cmd_families(args: argparse.Namespace) -> int:
    from probe.models import generic_families
    from probe.models.base import text_families

    print(family_table())
    print("\nfound by structure (generic adapter; `probe check MODEL` says whether one can be pruned):")
    print("\n".join(generic_families()))
    print("\nplain causal language models, every token text (generic adapter; for the LLM-pruning baselines):")
    print("\n".join(text_families()))
    return 0


def family_table(layers: int = 32) -> str:
    """The families with an adapter of their own and what each supports, derived from the adapters and the
    token methods' own checks (a model of ``layers`` decoder blocks): weight pruning and the MoT probe on
    every one; visual token pruning at inference by method; ``--max-pixels``; a tiny model for tests."""
    from probe.errors import ProbeError as Refused
    from probe.models.base import Adapter, get_adapter, supported_families, tiny_families
    from probe.token_pruning.base import make_pruner
    from probe.token_pruning.runtime import check_token_method

    methods = ("fastv", "random", "vitcop")
    rows = [["family", "weights + MoT", *methods, "max-pixels", "tiny model"]]
    tiny = set(tiny_families())
    for family in supported_families():
        supported = []
        for method in methods:
            supported.append("-")
            for spec, label in ((method, "yes"), (f"{method}(deep_positions=keep)", "deep_positions=keep")):
                try:
                    check_token_method(make_pruner(spec), family, layers)
                except Refused:
                    continue
                supported[-1] = label
                break
        native = type(get_adapter(family)).set_max_pixels is not Adapter.set_max_pixels
        rows.append([family, "yes", *supported, "yes" if native else "-", "yes" if family in tiny else "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def cmd_check(args: argparse.Namespace) -> int:
    from probe.check import format_rows, run_contract
    from probe.loading import load_model, parse_dtype
    from probe.progress import quiet_libraries

    _refuse_offload(args, "check")
    if args.config is not None and args.model != DEFAULT_MODEL:
        raise ProbeError("give MODEL or --config, not both")
    if args.config is not None and args.max_pixels is not None:
        raise ProbeError("--max-pixels applies to a loaded model's processor; --config builds its own inputs")
    with quiet_libraries(args.no_progress):
        if args.config is not None:
            from probe.devices import check_device

            check_device(args.device)
            dtype = parse_dtype(args.dtype)
            loaded = config_model(args.config)
            loaded.model.to(args.device, dtype)
        else:
            loaded = load_model(args.model, dtype=parse_dtype(args.dtype), device=args.device,
                                max_pixels=args.max_pixels)
        rows = run_contract(loaded)
    print(format_rows(rows))
    name = loaded.ref
    failed = [row.name for row in rows if row.holds is False]
    if failed:
        print(f"{name}: not supported ({', '.join(failed)} failed)")
        return 1
    print(f"{name}: supported")
    return 0


def config_model(source: str) -> Any:
    """A small random model of the config at ``source`` (a config.json, a folder, a hub id), shrunk."""
    from transformers import AutoConfig

    from probe.coverage import tiny_from_config
    from probe.models.shrink import TinyModelError, shrink_config

    path = Path(source)
    if path.suffix == ".json" and not path.is_file():
        raise ProbeError(f"--config {source}: no such file")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ProbeError(f"--config {source}: cannot read a config ({str(exc).splitlines()[0][:160]})") from None
    try:
        return tiny_from_config(shrink_config(config), f"config:{source}")
    except TinyModelError as exc:
        raise ProbeError(f"--config {source}: no small model can be built here: {exc}") from None


def cmd_prune(args: argparse.Namespace) -> int:
    from probe.progress import quiet_libraries

    try:
        with quiet_libraries(args.no_progress):
            return _prune(args)
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted: nothing was written to {args.out} (a checkpoint is written only "
                             "once complete); run the command again to start over") from None


# flag -> (axis, entry, setting): an entry's settings given on the command line
ENTRY_FLAGS: dict[str, tuple[str, str, str]] = {
    "alpha": ("tokens", "atv", "alpha"), "k_rule": ("tokens", "atv", "k_rule"), "signal": ("tokens", "atv", "signal"),
    "budget": ("tokens", "atv", "budget"), "text_ratio": ("tokens", "atv", "text_ratio"),
    "use_variant": ("scorer", "wanda", "use_variant"), "blocksize": ("scorer", "sparsegpt", "blocksize"),
    "percdamp": ("scorer", "sparsegpt", "percdamp"), "ria_power": ("scorer", "ria", "power"),
    "ria_per_row": ("scorer", "ria", "per_row"), "owl_m": ("allocation", "owl", "m"),
    "owl_lambda": ("allocation", "owl", "lam"), "max_extra": ("allocation", "tamp", "max_extra"),
    "kept_weighted": ("tokens", "kept", "weighted"),
}


def prune_config_from_args(args: argparse.Namespace):
    """The PruneConfig the flags describe; a flag of an entry the run does not use is an error."""
    from probe.engine import PruneConfig, PruneConfigError
    from probe.record import kept_visual_total
    from probe.registry import DEFAULTS, PRESETS
    from probe.sparsity.masks import parse_pattern

    pattern = parse_pattern(args.pattern)
    sparsity = args.sparsity if args.sparsity is not None else (pattern.sparsity if pattern.structured else 0.5)
    preset = PRESETS.get(args.method or "", {})
    axes = {axis: getattr(args, axis) or preset.get(axis) or DEFAULTS[axis] for axis in DEFAULTS}
    settings: dict[str, dict] = {axis: {} for axis in DEFAULTS}
    for flag, (axis, entry, name) in ENTRY_FLAGS.items():
        value = getattr(args, flag)
        if value is None or value is False:
            continue
        if axes[axis] != entry:
            raise PruneConfigError(f"--{flag.replace('_', '-')} is a setting of {axis} {entry!r}; this run uses "
                                   f"{axes[axis]!r}")
        settings[axis][name] = value
    if args.budget_from is not None:
        if axes["tokens"] != "atv":
            raise PruneConfigError("--budget-from is a setting of tokens 'atv'")
        if settings["tokens"].get("budget") != "fixed":
            raise PruneConfigError("--budget-from gives the total of a fixed budget; add --budget fixed")
        settings["tokens"]["fixed_total"] = kept_visual_total(args.budget_from)
    if axes["tokens"] == "atv":
        settings["tokens"].setdefault("seed", args.seed)
    return PruneConfig(method=args.method or "", tokens=args.tokens or "", scorer=args.scorer or "",
                       allocation=args.allocation or "", sparsity=sparsity, pattern=args.pattern,
                       true_sequential=args.true_sequential, tokens_settings=settings["tokens"],
                       scorer_settings=settings["scorer"], allocation_settings=settings["allocation"])


def _prune(args: argparse.Namespace) -> int:
    from probe.api import prune_checkpoint
    from probe.data.calibration import CalibrationSpec
    from probe.manifest import check_output_dir

    check_output_dir(args.out, marker="manifest.json")
    config = prune_config_from_args(args)
    comp_style = None
    if args.comp_style is not None:
        from probe.token_pruning.comp_style import CompStyleSettings

        epsilon = {} if args.comp_epsilon is None else {"epsilon": args.comp_epsilon}
        comp_style = CompStyleSettings(stages=args.comp_style, seed=args.seed, **epsilon)
    elif args.comp_epsilon is not None:
        raise ProbeError("--comp-epsilon is a setting of --comp-style; add --comp-style STAGES or leave it out")
    spec = CalibrationSpec.parse(args.calib, image_root=args.image_root, subset=args.calib_subset,
                                 split=args.calib_split, nsamples=args.nsamples, seed=args.seed)
    record = prune_checkpoint(args.model, args.out, config, spec, dtype=args.dtype, device=args.device,
                              offload=args.offload, run_device=args.run_device, max_pixels=args.max_pixels,
                              show_progress=not args.no_progress, token_pruning=args.token_pruning,
                              comp_style=comp_style, activation_dtype=args.activation_dtype,
                              spill_activations=args.spill_activations, memory_check=not args.no_memory_check)
    print(f"wrote {args.out} ({record.method}, {record.sparsity_summary()}, {record.timings['prune']:.1f} s)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from probe.progress import quiet_libraries

    try:
        with quiet_libraries(args.no_progress):
            return _eval(args)
    except KeyboardInterrupt:
        raise RunInterrupted("interrupted: no scores were written") from None


def _eval_proxy(args: argparse.Namespace) -> int:
    """``probe eval --metric kl``: the proxy metric of ``args.model`` against its dense model."""
    from probe.data.calibration import CalibrationSpec
    from probe.data.heldout import heldout_image_samples, heldout_text_samples
    from probe.devices import check_device
    from probe.evaluation.divergence import dense_answers, proxy_items, proxy_scores, summarize
    from probe.loading import load_model, parse_dtype
    from probe.manifest import check_output_file, write_text_atomic

    for flag, given in (("--dense", args.dense), ("--token-pruning", args.token_pruning),
                        ("--log-samples", args.log_samples or None), ("--limit", args.limit)):
        if given is not None:
            raise ProbeError(f"{flag} is a setting of task scoring; --metric kl takes none")
    if args.out is not None:
        check_output_file(args.out)
    check_device(args.device)
    record = _checkpoint_record(args.model)
    dense_ref = args.dense_model or record.get("model")
    if not dense_ref:
        raise ProbeError(f"{args.model} names no model it was pruned from; give the dense model with --dense-model")
    calibration = record.get("calibration") or {}
    if args.calib is not None:
        spec = CalibrationSpec.parse(args.calib)
    elif calibration.get("source") in ("json", "hf"):
        spec = CalibrationSpec(**{k: calibration[k] for k in ("source", "path", "image_root", "subset", "split")
                                  if k in calibration})
    else:
        spec = CalibrationSpec()
    image_samples = heldout_image_samples(spec, args.proxy_samples, args.seed, calibration.get("sample_ids", []))
    text_samples = heldout_text_samples(args.proxy_samples, args.seed)  # every data check before a model loads
    dtype = parse_dtype(args.dtype)
    dense = load_model(dense_ref, dtype=dtype, device=args.device, max_pixels=args.max_pixels)
    items = proxy_items(dense.adapter, dense.processor, image_samples, text_samples)
    reference = dense_answers(dense.model, items, show_progress=not args.no_progress)
    del dense
    loaded = load_model(args.model, dtype=dtype, device=args.device, max_pixels=args.max_pixels)
    per_sample = proxy_scores(loaded.model, items, reference, show_progress=not args.no_progress)
    summary = summarize(per_sample)
    print(f"{args.model} against {dense_ref} (nats per answer token; stderr over samples):")
    print(summary.to_string(index=False))
    if args.out is not None:
        write_text_atomic(args.out, summary.to_csv(index=False))
        write_text_atomic(args.out.with_suffix(".samples.csv"), per_sample.to_csv(index=False))
        print(f"wrote {args.out} and, per sample, {args.out.with_suffix('.samples.csv')}")
    return 0


def _checkpoint_record(model: str) -> dict:
    """The pruning record of a checkpoint folder (empty for a model that is not one)."""
    from probe.record import read_json

    path = Path(model) / "manifest.json"
    if not path.is_file():
        return {}
    data = read_json(path, "a pruning record")
    return data if isinstance(data, dict) else {}


def _eval(args: argparse.Namespace) -> int:
    from analysis.results import ResultsError, load_scores
    from analysis.tables import retention_against
    from probe.devices import check_device
    from probe.evaluation.harness import evaluate, primary_rows, resolve_tasks
    from probe.loading import load_model, model_config, parse_dtype
    from probe.manifest import check_output_file, write_text_atomic
    from probe.token_pruning.base import make_pruner
    from probe.token_pruning.runtime import check_token_method

    _refuse_offload(args, "eval")
    if args.metric == "kl":
        return _eval_proxy(args)
    for flag, given in (("--dense-model", args.dense_model), ("--calib", args.calib)):
        if given is not None:
            raise ProbeError(f"{flag} is a setting of --metric kl")
    if args.out is not None:
        check_output_file(args.out)
    check_device(args.device)
    tasks = resolve_tasks(args.tasks)  # every task checked before the model loads
    pruner = make_pruner(args.token_pruning)
    found = model_config(args.model) if pruner is not None else None
    if found is not None:  # the model's own config, read without its weights
        check_token_method(pruner, found.model_type, found.get_text_config().num_hidden_layers)
    dense = None
    if args.dense is not None:
        dense_table = load_scores(args.dense)
        dense = primary_rows(dense_table)
        missing = [t for t in tasks if t not in set(dense.task)]
        if missing:
            held = ", ".join(sorted(set(dense_table.task.astype(str)))) or "no task"
            raise ResultsError(f"{args.dense} has no dense score for {', '.join(missing)} (it holds: {held})")
    samples_out = None
    if args.log_samples:
        samples_out = args.out.with_suffix(".samples.jsonl") if args.out else Path("runs/eval/samples.jsonl")
        check_output_file(samples_out)
    loaded = load_model(args.model, dtype=parse_dtype(args.dtype), device=args.device, max_pixels=args.max_pixels)
    table = evaluate(loaded, tasks, args.limit, show_progress=not args.no_progress, seed=args.seed,
                     loglikelihood=args.loglikelihood, samples_out=samples_out, token_pruning=args.token_pruning)
    print(table.to_string(index=False))
    if args.out:
        write_text_atomic(args.out, table.to_csv(index=False))
    if samples_out is not None:
        print(f"answers per item: {samples_out}")
    if dense is not None:
        scored = primary_rows(table)
        kept = retention_against(scored, dense)
        value = f"{kept:.2f}%" if kept == kept else "undefined (a dense score is 0)"
        print(f"retention against {args.dense} over {', '.join(scored.task)}: {value}")
        if kept == kept:
            print(_retention_interval(scored, dense))
    return 0


def _retention_interval(scored, dense) -> str:  # noqa: ANN001
    """The approximate 95% interval of a retention from per-task standard errors (the delta method)."""
    from analysis.tables import task_stderr
    from probe.uncertainty import delta_retention

    base = dense.set_index("task").loc[list(scored.task)]
    interval = delta_retention(scored.score, task_stderr(scored), base.score, task_stderr(base.reset_index()))
    if interval.low != interval.low:
        return "  (no interval: the scores carry no standard errors)"
    return (f"  approximate 95% interval [{interval.low:.2f}%, {interval.high:.2f}%] (delta method from the "
            "tasks' standard errors, the two runs taken as independent: wider than a paired bootstrap)")


def cmd_grid(args: argparse.Namespace) -> int:
    from analysis.tables import write_grid_table
    from probe.grid import QUICK, GridConfig, run_grid
    from probe.interrupts import interruptible
    from probe.progress import quiet_libraries

    out = args.out
    if args.quick and out is None:  # a quick run never lands in (or is refused by) a full run's folder
        out = Path("runs") / "grid" / f"{args.config.stem if args.config else args.grid or 'table1'}-quick"
    overrides = {"out": str(out) if out else None, "grid": args.grid, **(QUICK if args.quick else {})}
    given = {"model": args.model, "tasks": args.tasks, "limit": args.limit, "nsamples": args.nsamples,
             "calib_seeds": args.calib_seeds, "metrics": args.metrics}
    overrides.update({name: value for name, value in given.items() if value is not None})
    if args.sparsity is not None:
        grid = args.grid or (_yaml_grid(args.config) if args.config else "table1")
        overrides["sparsities" if grid == "table1" else "settings"] = (
            [float(s) for s in args.sparsity] if grid == "table1" else args.sparsity)
    config = GridConfig.from_yaml(args.config, **overrides) if args.config else GridConfig.create(
        **{k: v for k, v in overrides.items() if v is not None})
    if args.list_cells or args.dry_run:
        return _describe_grid(config, args)
    executor = _executor(args, config)
    try:
        with interruptible(), quiet_libraries(args.no_progress):
            results = run_grid(config, show_progress=not args.no_progress, log_samples=args.log_samples,
                               executor=executor, only=args.cells)
    except KeyboardInterrupt:
        raise RunInterrupted(_grid_interrupted(Path(config.out))) from None
    print(write_grid_table(results, Path(config.out), config.grid, config.model, config.name or None))
    return 0


def _describe_grid(config, args: argparse.Namespace) -> int:  # noqa: ANN001
    """``--list-cells`` and ``--dry-run``: the grid's cells, done or to do, and (dry run) every check."""
    from probe.grid import cells, check_grid, finished_cells, select_cells
    from probe.grid_status import banner

    done = finished_cells(Path(config.out), config.metrics)
    planned = select_cells(cells(config), args.cells, done) if args.cells else cells(config)
    if args.dry_run:
        checked = check_grid(config, args.cells)
        print(banner(config.grid, config.model, config.out, [c.cell_id for c in planned], done,
                     [c.cell_id for c in checked.planned if c.cell_id not in done]))
        print(f"tasks: {', '.join(checked.tasks)}; calibration: {config.nsamples} samples from {config.calib} in "
              f"{len(config.draws())} draw(s); metrics: {', '.join(config.metrics)}")
    for cell in planned:
        print(f"{'done ' if cell.cell_id in done else 'to do'}  {cell.cell_id}")
    if args.dry_run:
        print("dry run: every check passed; nothing was written")
    return 0


def _yaml_grid(path: Path) -> str:
    """The grid a config file names (table1 when it names none or cannot be read; loading it reports why)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return "table1"
    return str(data.get("grid", "table1")) if isinstance(data, dict) else "table1"


def _setting_list(text: str) -> list[str]:
    """``--sparsity``: comma-separated sparsities or N:M patterns."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one sparsity, e.g. 0.5")
    for name in names:
        if ":" not in name:
            try:
                float(name)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name!r} is neither a sparsity nor an N:M pattern") from None
    return names


def _seed_list(text: str) -> list[int]:
    """``--calib-seeds``: comma-separated whole numbers."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None


def _name_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _grid_interrupted(out: Path) -> str:
    """What an interrupted grid kept, and how to go on."""
    from probe.grid import finished_cells

    try:
        kept = {name: len(finished_cells(out, [metric])) for name, metric in (("results.csv", "tasks"),
                                                                              ("proxy.csv", "kl"))}
    except (OSError, ValueError):  # a results file being rewritten when the interruption came
        kept = {}
    where = [f"{count} in {out / name}" for name, count in kept.items() if count]
    if where:
        finished = max(kept.values())
        return (f"interrupted: the {finished} finished cell(s) are kept ({'; '.join(where)}); run the same "
                "command again to resume")
    if any((out / "partial").glob("*/*.scores.csv")):
        return (f"interrupted before any cell finished; the tasks already scored are kept in {out / 'partial'}: run "
                "the same command again to resume")
    return "interrupted before any cell finished: no results were written; run the same command again to start"


def _cell_list(text: str) -> list[str]:
    """``--cells``: comma-separated cell ids."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one cell, e.g. wanda/50%")
    return names


def _executor(args: argparse.Namespace, config):  # noqa: ANN001, ANN202
    """The executor ``--executor`` names, its resources from the config's ``cluster:`` mapping and the flags."""
    import dataclasses

    flags = {"gpus_per_cell": args.gpus_per_cell, "cpus_per_cell": args.cpus_per_cell, "mem_gb": args.mem,
             "time_min": args.time, "partition": args.partition, "max_parallel": args.max_parallel,
             "retries": args.retries}
    given = {name: value for name, value in flags.items() if value is not None}
    if args.executor == "local":
        extra = [*given, *(["slurm_option"] if args.slurm_option else []),
                 *(["ray_address"] if args.ray_address is not None else [])]
        if extra:
            flag = {"mem_gb": "mem", "time_min": "time"}.get(extra[0], extra[0]).replace("_", "-")
            raise ProbeError(f"--{flag} is a setting of cluster jobs; add --executor slurm or ray")
        return None
    from probe.executors import RayExecutor, Resources, SlurmExecutor

    resources = dataclasses.replace(Resources.from_mapping(config.cluster), **given)
    for option in args.slurm_option:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ProbeError(f"--slurm-option {option!r} is not KEY=VALUE")
        resources.slurm_options[key.lstrip("-")] = value
    if args.executor == "slurm":
        return SlurmExecutor(resources, Path(config.out) / "logs" / "slurm")
    return RayExecutor(resources, address=args.ray_address)


def cmd_table(args: argparse.Namespace) -> int:
    from analysis.results import ResultsError, load_grid
    from analysis.tables import join_draws, rerun_differences, write_grid_table, write_table

    config = _grid_manifest_config(args.grid)
    first = _grid_manifest_config(args.against) if args.against is not None else None
    for other in args.average_with:
        if _grid_manifest_config(other)["grid"] != config["grid"]:
            raise ResultsError(f"{other} is not a {config['grid']} grid like {args.grid}; only reruns of the same "
                               "grid are joined as draws")
    statistics = {"boots": args.resamples, "seed": args.seed, "adjust": args.adjust}
    results = load_grid(args.grid)
    print(write_grid_table(results, args.grid, config["grid"], config.get("model"), config.get("name") or None,
                           **statistics))
    if first is not None:
        items, first_items = _grid_items(args.grid, "a rerun comparison"), _grid_items(args.against,
                                                                                       "a rerun comparison")
        frame = rerun_differences(load_grid(args.against), first_items, results, items, **statistics)
        if frame.empty:
            raise ResultsError(f"no cell is finished in both {args.grid} and {args.against}")
        name = f"{config.get('name') or config['grid']}_vs_{first.get('name') or first['grid']}"
        print(write_table(frame, args.grid, name))
    if args.average_with:
        from analysis.provenance import load_records

        draws = [(load_grid(folder), _grid_items(folder, "joining draws"), _calibration_seed(folder))
                 for folder in (args.grid, *args.average_with)]
        joined, joined_items = join_draws(draws)
        records = load_records(args.grid)  # the later grids' cells under their joined ids
        for folder, (_, _, seed) in zip(args.average_with, draws[1:]):
            records.update({f"{cell}@calib{seed}": record for cell, record in load_records(folder).items()
                            if cell != "dense"})
        name = f"{config.get('name') or config['grid']}_mean_of_{len(draws)}_draws"
        print(write_grid_table(joined, args.grid, config["grid"], config.get("model"), name, joined_items,
                               per_draw=False, records=records, **statistics))  # each draw's own table is its grid's
    return 0


def _calibration_seed(folder: Path) -> int:
    """The calibration seed of a grid of one draw (its ``calib_seed``, else its ``seed``)."""
    config = _grid_manifest_config(folder)
    seed = config.get("calib_seed")
    return int(config.get("seed", 0) if seed is None else seed)


def _grid_items(folder: Path, purpose: str):  # noqa: ANN202
    """A grid folder's per-item scores, which ``purpose`` needs."""
    from analysis.results import ResultsError, load_items

    items = load_items(folder)
    if items is None:
        raise ResultsError(f"{folder} keeps no per-item scores (items/), which {purpose} needs")
    return items


def _grid_manifest_config(folder: Path) -> dict:
    """The config stored in a grid folder's manifest, checked to name a grid."""
    from analysis.results import ResultsError
    from probe.record import read_json

    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise ResultsError(f"no grid manifest at {manifest} (probe grid writes it when it starts)")
    config = read_json(manifest, "a grid manifest")
    config = config.get("config", {}) if isinstance(config, dict) else {}
    if not isinstance(config, dict) or config.get("grid") not in GRIDS:
        raise ResultsError(f"{manifest} names no grid ({', '.join(GRIDS)}) in its config")
    return config


def cmd_plot(args: argparse.Namespace) -> int:
    import pandas as pd

    from analysis import figures
    from analysis.results import ResultsError, load_atv_blocks, load_grid, load_items
    name = args.figure.replace("-", "_")
    if args.figure == "tsne":
        return _plot_tsne(args)
    if args.source is None:
        raise ResultsError(f"probe plot {args.figure} needs a source (a grid folder or run)")
    source = Path(args.source)
    if source.suffix == ".json":  # a grid cell record: the figure goes to the grid's figures/
        grid = source.parent.parent if source.parent.name == "cells" else source.parent
        out = args.out or grid / "figures" / f"{name}_{source.stem}"
    else:
        grid = source
        out = args.out or source / "figures" / name
    _check_figure_out(out)
    model = _recorded_model(grid)
    if args.figure == "iou":
        path = source / "mask_iou.csv"
        if not path.is_file():
            raise ResultsError(f"no mask IoU at {path} (a table1 grid writes it)")
        iou = pd.read_csv(path)
        if iou.empty:
            raise ResultsError(f"{path} holds no IoU records (the grid needs text- and visual-pool cells)")
        figures.plot_mask_iou(iou, out, model=model)
    elif args.figure == "flops":
        figures.plot_retention_vs_flops(load_grid(source), out, model=model, items=load_items(source))
    elif args.figure in ("alpha", "text-ratio"):
        plot = figures.plot_alpha if args.figure == "alpha" else figures.plot_text_ratio
        plot(load_grid(source), out, model=model, items=load_items(source))
    else:
        figures.plot_drift(load_atv_blocks(source), out, title=_drift_title(source, model))
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.pdf')}")
    return 0


def _check_figure_out(out: Path) -> None:
    """Both files of a figure (``out`` with .png and .pdf) can be written, before any work."""
    from probe.manifest import check_output_file

    for suffix in (".png", ".pdf"):
        check_output_file(out.with_suffix(suffix))


def _recorded_model(folder: Path) -> str | None:
    """The model a grid or pruning run in ``folder`` used, from its manifest (None if it has none)."""
    from probe.record import read_json

    path = folder / "manifest.json"
    if not path.is_file():
        return None
    manifest = read_json(path, "a run or grid manifest")
    if not isinstance(manifest, dict):
        return None
    return manifest.get("model") or (manifest.get("config") or {}).get("model")


def _drift_title(source: Path, model: str | None) -> str:
    """``MODEL: ATV drift and budget per block, 50% unstructured`` from a run's or a cell's record."""
    from probe.record import read_json

    record = source if source.suffix == ".json" else source / "manifest.json"
    data = read_json(record, "a pruning record") if record.is_file() else {}
    prune = data.get("settings") or data.get("prune") or {}  # "prune": records before version 2
    setting = f", {prune['sparsity']:.0%} {prune.get('pattern', '')}".rstrip() if "sparsity" in prune else ""
    return f"{model + ': ' if model else ''}ATV drift and budget per block{setting}"


def _plot_tsne(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from analysis import figures
    from probe.calibrate import capture_calibration
    from probe.capture import hidden_at
    from probe.data.calibration import CalibrationSpec
    from probe.loading import load_model

    out = args.out or Path("runs") / "figures" / f"tsne_block{args.block}"
    _check_figure_out(out)
    loaded = load_model(args.source or DEFAULT_MODEL)
    samples = capture_calibration(loaded, CalibrationSpec(nsamples=args.nsamples), show_progress=False)
    hidden = [hidden_at(loaded.model, loaded.adapter, s, args.block).float() for s in samples]
    activations = torch.cat(hidden).cpu().numpy()
    visual = np.concatenate([s.visual_mask.cpu().numpy() for s in samples])
    model = args.source or DEFAULT_MODEL
    figures.plot_tsne(activations, visual, out, title=f"{model}: t-SNE of the inputs to block {args.block}")
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.pdf')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("probe").setLevel(logging.DEBUG if args.verbose else logging.INFO)

    stdout, sys.stdout = sys.stdout, CheckedStream(sys.stdout)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except StdoutError as exc:
        _silence(stdout)
        print(f"probe: error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 130
    except ProbeError as exc:
        print(f"probe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("probe: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout


class StdoutError(ProbeError):
    """Standard output cannot be written (a full device, a closed pipe)."""


class CheckedStream:
    """A text stream whose failed writes raise :class:`StdoutError` (one line from the CLI), not OSError."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise StdoutError(f"cannot write to standard output ({exc.strerror or exc})") from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise StdoutError(f"cannot write to standard output ({exc.strerror or exc})") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _silence(stream: TextIO) -> None:
    """Point ``stream`` at the null device, so that the interpreter's last flush of what it still holds
    cannot fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a file descriptor (a test's captured stream)
        pass


if __name__ == "__main__":
    sys.exit(main())
