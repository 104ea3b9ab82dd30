"""``probe table``: a grid folder's tables from its finished cells."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe.cli.common import add_command, positive_int
from probe.core.names import (
    GRIDS,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``probe table`` to the subcommands."""
    p = add_command(sub, "table",
                         "the tables of a grid folder from the cells finished so far (what `probe grid` writes "
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
    from probe.core.record import read_json

    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise ResultsError(f"no grid manifest at {manifest} (probe grid writes it when it starts)")
    config = read_json(manifest, "a grid manifest")
    config = config.get("config", {}) if isinstance(config, dict) else {}
    if not isinstance(config, dict) or config.get("grid") not in GRIDS:
        raise ResultsError(f"{manifest} names no grid ({', '.join(GRIDS)}) in its config")
    return config
