"""The names users choose from (methods, pools, ATV settings, figures), kept in one module that imports
nothing heavy, so the CLI offers them as choices without loading torch, and the modules that act on
them check against the same tuples."""

METHODS: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt", "atv", "tamp")
MODALITY_POOLS: tuple[str, ...] = ("text", "visual", "mixed")
POOLS: tuple[str, ...] = (*MODALITY_POOLS, "atv", "tamp")
K_RULES: tuple[str, ...] = ("paper", "released")
SIGNALS: tuple[str, ...] = ("drift", "random", "abs", "dbs")
BUDGETS: tuple[str, ...] = ("adaptive", "fixed")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
GRIDS: tuple[str, ...] = ("table1", "table2")
EXECUTORS: tuple[str, ...] = ("local", "slurm", "ray")
FIGURES: tuple[str, ...] = ("iou", "alpha", "text-ratio", "drift", "tsne")
