"""``probe check``: the family contract on one model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from probe.cli.common import DEFAULT_MODEL, add_command, add_model_args, refuse_offload
from probe.errors import ProbeError


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``probe check`` to the subcommands."""
    p = add_command(sub, "check", "run the family contract on a model: one row per property, exit status 0 when the "
                         "toolkit can prune it (the first command to run on a new LVLM)",
                         "  probe check tiny:llava\n"
                         "  probe check llava-hf/llava-v1.6-mistral-7b-hf --device cuda --dtype bfloat16\n"
                         "  probe check --config path/to/config.json   # a small random model of that config\n")
    add_model_args(p)
    p.add_argument("--config", default=None, metavar="FILE|ID",
                   help="instead of MODEL: a config.json, a folder holding one, or a hub id; checks a small random "
                        "model of that exact config class (widths and depths shrunk) when the weights are not at hand")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from probe.contract.check import format_rows, run_contract
    from probe.core.progress import quiet_libraries
    from probe.models.loading import load_model, parse_dtype

    refuse_offload(args, "check")
    if args.config is not None and args.model != DEFAULT_MODEL:
        raise ProbeError("give MODEL or --config, not both")
    if args.config is not None and args.max_pixels is not None:
        raise ProbeError("--max-pixels applies to a loaded model's processor; --config builds its own inputs")
    with quiet_libraries(args.no_progress):
        if args.config is not None:
            from probe.models.devices import check_device

            check_device(args.device)
            dtype = parse_dtype(args.dtype)
            loaded = config_model(args.config)
            loaded.model.to(args.device, dtype)
        else:
            loaded = load_model(args.model, dtype=parse_dtype(args.dtype), device=args.device,
                                max_pixels=args.max_pixels)
        rows = run_contract(loaded)
    print(format_rows(rows))
    name = loaded.ref
    failed = [row.name for row in rows if row.holds is False]
    if failed:
        print(f"{name}: not supported ({', '.join(failed)} failed)")
        return 1
    print(f"{name}: supported")
    return 0


def config_model(source: str) -> Any:
    """A small random model of the config at ``source`` (a config.json, a folder, a hub id), shrunk."""
    from transformers import AutoConfig

    from probe.contract.coverage import tiny_from_config
    from probe.models.shrink import TinyModelError, shrink_config

    path = Path(source)
    if path.suffix == ".json" and not path.is_file():
        raise ProbeError(f"--config {source}: no such file")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ProbeError(f"--config {source}: cannot read a config ({str(exc).splitlines()[0][:160]})") from None
    try:
        return tiny_from_config(shrink_config(config), f"config:{source}")
    except TinyModelError as exc:
        raise ProbeError(f"--config {source}: no small model can be built here: {exc}") from None
