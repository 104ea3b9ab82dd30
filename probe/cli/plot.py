"""``probe plot``: the paper's figures from stored results."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe.cli.common import DEFAULT_MODEL, add_command, positive_int
from probe.core.names import (
    FIGURES,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``probe plot`` to the subcommands."""
    p = add_command(sub, "plot", "the paper's figures from stored results (PNG and PDF)",
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
    from probe.core.manifest import check_output_file

    for suffix in (".png", ".pdf"):
        check_output_file(out.with_suffix(suffix))


def _recorded_model(folder: Path) -> str | None:
    """The model a grid or pruning run in ``folder`` used, from its manifest (None if it has none)."""
    from probe.core.record import read_json

    path = folder / "manifest.json"
    if not path.is_file():
        return None
    manifest = read_json(path, "a run or grid manifest")
    if not isinstance(manifest, dict):
        return None
    return manifest.get("model") or (manifest.get("config") or {}).get("model")


def _drift_title(source: Path, model: str | None) -> str:
    """``MODEL: ATV drift and budget per block, 50% unstructured`` from a run's or a cell's record."""
    from probe.core.record import read_json

    record = source if source.suffix == ".json" else source / "manifest.json"
    data = read_json(record, "a pruning record") if record.is_file() else {}
    prune = data.get("settings") or data.get("prune") or {}  # "prune": records before version 2
    setting = f", {prune['sparsity']:.0%} {prune.get('pattern', '')}".rstrip() if "sparsity" in prune else ""
    return f"{model + ': ' if model else ''}ATV drift and budget per block{setting}"


def _plot_tsne(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from analysis import figures
    from probe.calibration.calibrate import capture_calibration
    from probe.calibration.capture import hidden_at
    from probe.data.calibration import CalibrationSpec
    from probe.models.loading import load_model

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
