"""The finding ``make demo`` shows: in the MoT probe, pruning the text pathway costs the model more than
pruning the visual one (the paper's Table 1 asymmetry), with intervals and an exact paired test.

    python -m analysis.finding runs/demo/grid

It reads a table1 grid folder with one pool and both pathways at one sparsity, and prints a table in
percent (per task scores, average retention with a paired bootstrap interval) and one sentence that says
what the numbers show and how sure they are.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.results import load_grid, load_items
from analysis.tables import cell_items, dense_item_order
from probe.errors import ProbeError
from probe.evaluation.uncertainty import BOOTS, Interval, bootstrap_retention, paired_difference

PATHWAYS = ("text", "visual")
LEVEL = 0.05  # the test's level (one comparison: no adjustment)


class FindingError(ProbeError):
    """A grid folder that does not hold the demo's cells (dense, and both pathways at one sparsity)."""


@dataclass(frozen=True)
class PathwayFinding:
    """Both pathways of one pool and sparsity against the dense model, scores in percent."""

    sparsity: float
    pool: str
    tasks: list[str]
    items: dict[str, int]  # per task, the number of items
    scores: dict[str, dict[str, float]]  # "dense" and each pathway -> task -> score (%)
    retention: dict[str, Interval]  # pathway -> average retention (%) with its interval
    difference: Interval  # visual-pathway retention minus text-pathway retention (points), with its p-value


def pathway_finding(results: pd.DataFrame, items: pd.DataFrame, boots: int = BOOTS, seed: int = 0
                    ) -> PathwayFinding:
    """The finding from a grid's results and per-item scores."""
    pruned = results[results.pathway.isin(PATHWAYS)]
    dense = results[results.pathway == "dense"]
    settings = pruned[["pool", "sparsity"]].drop_duplicates()
    if dense.empty or len(settings) != 1 or set(pruned.pathway) != set(PATHWAYS):
        raise FindingError("the grid must hold the dense cell and both pathways at one pool and sparsity; "
                           f"it holds {sorted(set(results.cell))}")
    pool, sparsity = settings.iloc[0]
    tasks, order = dense_item_order(results, items)
    cells = {"dense": dense.cell.iloc[0], **{p: pruned[pruned.pathway == p].cell.iloc[0] for p in PATHWAYS}}
    runs = {name: cell_items(items, cell, tasks, order) for name, cell in cells.items()}
    missing = [cells[name] for name, run in runs.items() if run is None]
    if missing:
        raise FindingError(f"cells {missing} were not scored on the dense cell's items (items/)")
    scores = {name: {t: 100 * float(np.mean(run[t])) for t in tasks} for name, run in runs.items()}
    retention = {p: bootstrap_retention(runs[p], runs["dense"], boots=boots, seed=seed) for p in PATHWAYS}
    difference = paired_difference(runs["visual"], runs["text"], runs["dense"], boots=boots, seed=seed)
    return PathwayFinding(float(sparsity), str(pool), tasks, {t: len(order[t]) for t in tasks}, scores,
                          retention, difference)


def finding_table(finding: PathwayFinding) -> str:
    """The scores in percent, one row per model, and each pathway's average retention with its interval."""
    header = ["model", *finding.tasks, "avg retention [95% CI]"]
    rows = [["dense", *(f"{finding.scores['dense'][t]:.1f}" for t in finding.tasks), "100"]]
    for pathway in PATHWAYS:
        r = finding.retention[pathway]
        rows.append([f"{pathway} pathway pruned", *(f"{finding.scores[pathway][t]:.1f}" for t in finding.tasks),
                     f"{r.estimate:.1f} [{r.low:.1f}, {r.high:.1f}]"])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def finding_sentence(finding: PathwayFinding) -> str:
    """One sentence: which pathway is the more sensitive, by how much, and whether that is beyond the noise."""
    text, visual, d = finding.retention["text"], finding.retention["visual"], finding.difference
    kept = (f"With {finding.sparsity:.0%} of its weights pruned, the text pathway keeps {text.estimate:.0f}% of the "
            f"dense scores and the visual pathway {visual.estimate:.0f}%")
    low, high = min(finding.items.values()), max(finding.items.values())
    noise = f"{low} items per task" if low == high else f"{low} to {high} items per task"
    test = f"95% CI [{d.low:+.0f}, {d.high:+.0f}], exact paired p = {d.p:.2g}"
    if d.p < LEVEL and d.low > 0:
        return (f"{kept}: pruning the text pathway costs {d.estimate:.0f} points more ({test}), beyond the noise "
                f"of {noise}; this is the paper's finding that the text pathway is the sensitive one.")
    if d.p < LEVEL and d.high < 0:
        return (f"{kept}: here pruning the visual pathway costs {-d.estimate:.0f} points more ({test}), beyond "
                f"the noise of {noise}, the opposite of the paper's finding.")
    return (f"{kept}: the gap of {d.estimate:+.0f} points ({test}) is inside the noise of {noise}, so this run "
            "cannot tell which pathway is the more sensitive.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.finding", description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="a table1 grid folder: dense and both pathways at one setting")
    parser.add_argument("--resamples", type=int, default=BOOTS, help="bootstrap resamples and sign patterns")
    args = parser.parse_args(argv)
    try:
        items = load_items(args.grid)
        if items is None:
            raise FindingError(f"{args.grid} holds no per-item scores (items/)")
        finding = pathway_finding(load_grid(args.grid), items, boots=args.resamples)
    except ProbeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"MoT probe on {args.grid}: each pathway pruned to {finding.sparsity:.0%} with Wanda statistics "
          f"from the {finding.pool} pool; task scores in %")
    print(finding_table(finding))
    print(finding_sentence(finding))
    return 0


if __name__ == "__main__":
    sys.exit(main())
