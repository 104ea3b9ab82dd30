"""``probe prune``: prune a model and write a checkpoint with its manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe.cli.common import RunInterrupted, add_calib_args, add_command, add_model_args, positive_int
from probe.core.names import (
    ALLOCATION_NAMES,
    BUDGETS,
    K_RULES,
    METHODS,
    SCORER_NAMES,
    SIGNALS,
    TOKENS,
)
from probe.errors import ProbeError


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``probe prune`` to the subcommands."""
    p = add_command(sub, "prune", "prune a model and write a Hugging Face checkpoint with a manifest",
                         "  probe prune --method wanda --tokens text --out runs/wanda-text\n"
                         "  probe prune MODEL --method sparsegpt --pattern 2:4 --out runs/sgpt-2of4\n"
                         "  probe prune MODEL --method atv --alpha 1.5 --k-rule released --out runs/atv\n"
                         "  probe prune MODEL --tokens atv --scorer sparsegpt --allocation owl "
                         "--out runs/atv-sgpt-owl\n")
    add_model_args(p)
    add_calib_args(p)
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
                        "unofficial reading of CoMP's strategy; see docs/guide/token-pruning.md)")
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


def cmd_prune(args: argparse.Namespace) -> int:
    from probe.core.progress import quiet_libraries

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
    from probe.core.record import kept_visual_total
    from probe.core.registry import DEFAULTS, PRESETS
    from probe.pruning.engine import PruneConfig, PruneConfigError
    from probe.pruning.sparsity.masks import parse_pattern

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
    from probe.core.manifest import check_output_dir
    from probe.data.calibration import CalibrationSpec
    from probe.evaluation.vllm_route import vllm_problems

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
    problems = vllm_problems(args.out)
    print("lmms-eval's vllm model serves it as is" if not problems else
          f"lmms-eval's vllm model: {'; '.join(problems)} (score it with the probe model)")
    return 0
