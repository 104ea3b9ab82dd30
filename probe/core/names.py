"""The names users choose from (methods, axes' entries, ATV settings, figures), kept in one module that
imports nothing heavy, so the CLI offers them as choices without loading torch, and the modules that act
on them check against the same tuples. The axes' names are derived from :mod:`probe.core.registry`."""

from probe.core.registry import ALLOCATIONS, PRESETS, SCORERS, TOKEN_SELECTORS

METHODS: tuple[str, ...] = tuple(PRESETS)
TOKENS: tuple[str, ...] = tuple(TOKEN_SELECTORS)
SCORER_NAMES: tuple[str, ...] = tuple(SCORERS)
ALLOCATION_NAMES: tuple[str, ...] = tuple(ALLOCATIONS)
MODALITY_POOLS: tuple[str, ...] = ("text", "visual", "mixed")  # the MoT probe's calibration pools
K_RULES: tuple[str, ...] = ("paper", "released")
SIGNALS: tuple[str, ...] = ("drift", "random", "abs", "dbs")
BUDGETS: tuple[str, ...] = ("adaptive", "fixed")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
GRIDS: tuple[str, ...] = ("table1", "table2")
EXECUTORS: tuple[str, ...] = ("local", "slurm", "ray")
FIGURES: tuple[str, ...] = ("iou", "alpha", "text-ratio", "drift", "tsne", "flops")
REFERENCE_MODELS: tuple[str, ...] = ("reference", "reference-large")  # the offline reference LVLMs
