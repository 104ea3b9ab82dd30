"""Wall time of the Table 1 grid on the offline reference model, default and quick settings.

Runs `probe grid` (no config: the reference model on the offline tasks) into a temporary folder and
prints the time of each setting against its goal: the default grid <= 20 minutes, `--quick` <= 3
minutes, on a 2-core machine.

    python bench/bench_grid.py [--only quick|default]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from probe.experiments.grid import QUICK, GridConfig, cells, run_grid

GOALS_MINUTES = {"quick": 3.0, "default": 20.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(GOALS_MINUTES), default=None)
    args = parser.parse_args()
    settings = [args.only] if args.only else ["quick", "default"]
    for name in settings:
        with tempfile.TemporaryDirectory() as tmp:
            overrides = QUICK if name == "quick" else {}
            config = GridConfig(out=str(Path(tmp) / "grid"), **overrides)
            start = time.perf_counter()
            results = run_grid(config, show_progress=False)
            minutes = (time.perf_counter() - start) / 60
        print(f"{name}: {len(cells(config))} cells, {len(results)} result rows, {minutes:.1f} min "
              f"(goal <= {GOALS_MINUTES[name]:g} min, ratio {minutes / GOALS_MINUTES[name]:.2f})")


if __name__ == "__main__":
    main()
