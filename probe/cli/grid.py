"""``probe grid``: run or resume an experiment grid, or say what it would do."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe.cli.common import RunInterrupted, add_command, batch_size_arg, positive_int
from probe.core.names import (
    EXECUTORS,
    GRIDS,
)
from probe.errors import ProbeError


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``probe grid`` to the subcommands."""
    p = add_command(sub, "grid", "an experiment grid: the MoT sensitivity grid (Table 1, the default) or the method "
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
    settings.add_argument("--batch-size", type=batch_size_arg, default=None, metavar="N|auto",
                          help="requests each cell scores at once (as probe eval --batch-size; None: the config's, "
                               "else 1)")
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


def cmd_grid(args: argparse.Namespace) -> int:
    from analysis.tables import write_grid_table
    from probe.core.interrupts import interruptible
    from probe.core.progress import quiet_libraries
    from probe.experiments.grid import QUICK, GridConfig, run_grid

    out = args.out
    if args.quick and out is None:  # a quick run never lands in (or is refused by) a full run's folder
        out = Path("runs") / "grid" / f"{args.config.stem if args.config else args.grid or 'table1'}-quick"
    overrides = {"out": str(out) if out else None, "grid": args.grid, **(QUICK if args.quick else {})}
    given = {"model": args.model, "tasks": args.tasks, "limit": args.limit, "nsamples": args.nsamples,
             "calib_seeds": args.calib_seeds, "metrics": args.metrics, "batch_size": args.batch_size}
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
    from probe.experiments.grid import cells, check_grid, finished_cells, select_cells
    from probe.experiments.grid.status import banner

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
    from probe.experiments.grid import finished_cells

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
    from probe.experiments.executors import RayExecutor, Resources, SlurmExecutor

    resources = dataclasses.replace(Resources.from_mapping(config.cluster), **given)
    for option in args.slurm_option:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ProbeError(f"--slurm-option {option!r} is not KEY=VALUE")
        resources.slurm_options[key.lstrip("-")] = value
    if args.executor == "slurm":
        return SlurmExecutor(resources, Path(config.out) / "logs" / "slurm")
    return RayExecutor(resources, address=args.ray_address)
