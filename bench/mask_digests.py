"""Digests of the pruned weights of a fixed set of runs, to check that a change of the engine leaves
every deterministic run's masks and weights as they were.

    python bench/mask_digests.py --out before.json        # on the old code
    python bench/mask_digests.py --compare before.json    # on the new code: lists any run that differs
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from pathlib import Path

from probe.calibration.calibrate import capture_items
from probe.data.calibration import CalibrationSpec, prepare
from probe.models.loading import load_model
from probe.pruning.engine import PruneConfig, prune

RUNS: dict[str, dict] = {
    "magnitude-0.5": {"method": "magnitude"},
    "wanda-mixed-0.5": {"method": "wanda"},
    "wanda-text-0.5": {"method": "wanda", "tokens": "text"},
    "wanda-visual-2:4": {"method": "wanda", "tokens": "visual", "pattern": "2:4"},
    "sparsegpt-0.5": {"method": "sparsegpt"},
    "sparsegpt-4:8": {"method": "sparsegpt", "pattern": "4:8"},
    "atv-0.5": {"method": "atv"},
    "tamp-0.5": {"method": "tamp"},
    "sparsegpt-atv-0.5": {"method": "sparsegpt", "tokens": "atv"},
}


def digests(model_name: str, nsamples: int) -> dict[str, dict[str, str]]:
    loaded = load_model(model_name)
    items = prepare(CalibrationSpec(nsamples=nsamples), loaded.adapter, loaded.processor, loaded.model.config)
    samples = capture_items(loaded, items, show_progress=False)
    out = {}
    for name, settings in RUNS.items():
        model = copy.deepcopy(loaded.model)
        prune(model, loaded.adapter, samples, PruneConfig(**{"sparsity": 0.5, **settings}), show_progress=False)
        out[name] = {k: hashlib.sha256(v.detach().float().numpy().tobytes()).hexdigest()[:16]
                     for k, v in model.state_dict().items() if k.endswith("proj.weight")}
        print(name, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="reference")
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="write the digests here")
    parser.add_argument("--compare", type=Path, default=None, help="digests of an earlier run to compare with")
    args = parser.parse_args()
    now = digests(args.model, args.nsamples)
    if args.out:
        args.out.write_text(json.dumps(now, indent=1))
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = [run for run in before if run in now and before[run] != now[run]]
        for run in differ:
            changed = [k for k in before[run] if before[run][k] != now[run].get(k)]
            print(f"{run}: {len(changed)} of {len(before[run])} weights differ, e.g. {changed[:3]}")
        print(f"{len(before) - len(differ)} of {len(before)} runs identical")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
