"""The paper's Findings A and B, restated from a Table 1 grid (the MoT probe) by exact paired tests adjusted
over the findings' comparisons, on the image tasks and on the text-only tasks separately.

    python -m analysis.pathway_findings results/grid/table1-large     # prints; probe table writes it too

- Finding A: the text pathway pruned with statistics from text tokens keeps more than with statistics from
  visual tokens (``text − visual pool``), and more than with mixed ones (``text − mixed pool``).
- Finding B: pruning the visual pathway costs less than pruning the text pathway (``visual − text
  pathway``), with each pool.

Each comparison is a difference in average retention (points) over the image tasks, and over the text-only
tasks, with a paired bootstrap 95% interval (cells of several calibration draws: draws, then items) and the
exact paired p-value, Holm-adjusted over every comparison in the table. A text-only task has no visual
token, so pruning the visual pathway cannot change it: Finding B on the text tasks measures the text
pathway's cost alone, which is why the two task groups are kept apart.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.results import load_grid, load_items
from analysis.tables import table1_runs
from probe.evaluation.significance import adjust
from probe.evaluation.task_files import TEXT_TASKS
from probe.evaluation.uncertainty import BOOTS, Interval, paired_difference

LEVEL = 0.05
ADJUSTMENT_NAMES = {"holm": "Holm's method (family-wise error)", "bh": "Benjamini-Hochberg (false discovery rate)",
                    "none": "nothing (unadjusted)"}
GROUPS = ("image tasks", "text tasks")


@dataclass(frozen=True)
class Comparison:
    """One finding's comparison on one task group."""

    finding: str  # "A" or "B"
    setting: str  # the sparsity label, e.g. "50%"
    label: str  # e.g. "text pathway: text − visual pool"
    group: str  # "image tasks" or "text tasks"
    tasks: tuple[str, ...]
    draws: int  # calibration draws behind each of the two cells
    difference: Interval
    p_adjusted: float

    @property
    def verdict(self) -> str:
        """What the adjusted test says about the finding's direction (positive is the paper's)."""
        if np.isnan(self.p_adjusted):
            return "untested"
        if self.p_adjusted >= LEVEL:
            return "inside the noise"
        return "holds" if self.difference.estimate > 0 else "reversed"


def _subset(runs: dict | list[dict], tasks: tuple[str, ...]) -> dict | list[dict]:
    if isinstance(runs, list):
        return [{t: run[t] for t in tasks} for run in runs]
    return {t: runs[t] for t in tasks}


def _pairs(scored: dict) -> list[tuple[str, str, str, tuple, tuple]]:
    """(finding, setting, label, run key, baseline key) of every comparison the grid's cells allow."""
    pairs = []
    for setting in dict.fromkeys(key[0] for key in scored):
        for other in ("visual", "mixed"):
            pairs.append(("A", setting, f"text pathway: text − {other} pool", (setting, "text", "text"),
                          (setting, "text", other)))
        for pool in dict.fromkeys(key[2] for key in scored if key[0] == setting):
            pairs.append(("B", setting, f"visual − text pathway: {pool} pool", (setting, "visual", pool),
                          (setting, "text", pool)))
    return [p for p in pairs if scored.get(p[3]) is not None and scored.get(p[4]) is not None]


def pathway_findings(results: pd.DataFrame, items: pd.DataFrame, boots: int = BOOTS, seed: int = 0,
                     method: str = "holm") -> list[Comparison]:
    """Every Finding A and B comparison the grid holds, on each task group it scored, adjusted together."""
    tasks, dense, scored = table1_runs(results, items)
    groups = {"image tasks": tuple(t for t in tasks if t not in TEXT_TASKS),
              "text tasks": tuple(t for t in tasks if t in TEXT_TASKS)}
    raw = []
    for finding, setting, label, run_key, base_key in _pairs(scored):
        run, base = scored[run_key], scored[base_key]
        draws = len(run) if isinstance(run, list) else 1
        for group, members in groups.items():
            if not members:
                continue
            interval = paired_difference(_subset(run, members), _subset(base, members), _subset(dense, members),
                                         boots, seed)
            raw.append((finding, setting, label, group, members, draws, interval))
    adjusted = adjust(np.array([r[-1].p for r in raw], dtype=float), method) if raw else []
    return [Comparison(*r, p_adjusted=float(p)) for r, p in zip(raw, adjusted)]


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


VERDICT_WORDS = {"holds": "the finding holds", "reversed": "the opposite of the finding",
                 "inside the noise": "inside the noise", "untested": "untested"}


def sentence(c: Comparison) -> str:
    """One sentence: the difference, its interval, the adjusted p, and what that says."""
    d = c.difference
    numbers = f"{d.estimate:+.1f} points [{d.low:+.1f}, {d.high:+.1f}], adjusted {_p(c.p_adjusted)}"
    tasks = ", ".join(c.tasks)
    if c.finding == "B" and c.group == "text tasks":
        return (f"{c.label}, text tasks ({tasks}): the visual pathway's pruning cannot change a text-only task, so "
                f"this is the text pathway's cost alone: {numbers}: {VERDICT_WORDS[c.verdict]}.")
    return f"{c.label}, {c.group} ({tasks}): {numbers}: {VERDICT_WORDS[c.verdict]}."


def findings_markdown(comparisons: list[Comparison], method: str = "holm", boots: int = BOOTS, seed: int = 0) -> str:
    """A table of the comparisons and one line per comparison, with the family stated under it."""
    if not comparisons:
        return ""
    lines = ["| finding | setting | comparison | tasks | draws | difference (pp) [95% CI] | p (adjusted) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        d = c.difference
        lines.append(f"| {c.finding} | {c.setting} | {c.label} | {c.group} | {c.draws} | "
                     f"{d.estimate:+.2f} [{d.low:+.2f}, {d.high:+.2f}] | {_p(c.p_adjusted)} | {c.verdict} |")
    lines += ["", f"Family: {len(comparisons)} comparisons, p-values adjusted by {ADJUSTMENT_NAMES[method]} over "
              "all of them; a finding holds or is reversed where "
              f"its adjusted p < {LEVEL}, else the difference is inside the noise. Differences are in average "
              "retention over the group's tasks (points); intervals: paired percentile bootstrap, 95%, "
              f"{boots:,} resamples, seed {seed} (cells of several calibration draws resample the draws, then "
              "the items); tests: exact paired (weighted sign flip of the items' retention differences).", ""]
    lines += [f"- {sentence(c)}" for c in comparisons]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", type=Path, help="a table1 grid folder")
    parser.add_argument("--adjust", default="holm", choices=("holm", "bh"))
    args = parser.parse_args(argv)
    results, items = load_grid(args.grid), load_items(args.grid)
    sys.stdout.write(findings_markdown(pathway_findings(results, items, method=args.adjust), args.adjust))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
