"""What the subcommands share: the model and calibration flags, argument types, the interruption error."""

from __future__ import annotations

import argparse

from probe.core.names import (
    DTYPES,
)
from probe.errors import ProbeError

DEFAULT_MODEL = "reference"


class RunInterrupted(ProbeError):
    """Ctrl-C during a run; the message says what was kept and how to go on."""


def batch_size_arg(text: str) -> int | str:
    """An argparse type: a positive integer or ``auto``."""
    from probe.evaluation.batching import BatchSizeError, parse_batch_size

    try:
        return parse_batch_size(text)
    except BatchSizeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default and keeps the examples' line breaks."""

def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help="hub id, local folder, reference or reference-large (offline reference LVLMs), tiny:FAMILY")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weights' dtype")
    p.add_argument("--device", default="cpu", help="where the model lives, e.g. cpu, cuda or cuda:1")
    p.add_argument("--offload", nargs="?", const="on", default="off", choices=("on", "off", "auto"),
                   help="on: keep the model on CPU and move one block at a time to --run-device; auto (probe prune): "
                        "the first plan the memory model predicts to fit (offload, bfloat16 activations, disk spill)")
    p.add_argument("--run-device", default=None, help="where blocks run in offload mode (None: cuda)")
    p.add_argument("--max-pixels", type=positive_int, default=None,
                   help="image resolution cap of Qwen-VL families; use the same value when evaluating")


def add_calib_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", default="bundled",
                   help="bundled, hf:NAME (a datasets dataset), or a LLaVA-style .json/.jsonl file")
    p.add_argument("--image-root", default=None, help="folder the calibration images are relative to")
    p.add_argument("--calib-subset", default=None,
                   help="keep records whose data_source/image path contains this, e.g. sharegpt4v")
    p.add_argument("--calib-split", default="train", help="split of an hf: dataset")
    p.add_argument("--nsamples", type=positive_int, default=128, help="calibration samples to draw")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")



def add_command(sub: argparse._SubParsersAction, name: str, help: str,  # noqa: A002
                examples: str = "") -> argparse.ArgumentParser:
    """A subcommand's parser: its help doubles as its description; examples go under it."""
    epilog = "examples:\n" + examples if examples else None
    return sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=HelpFormatter)


def refuse_offload(args: argparse.Namespace, command: str) -> None:
    """Offloading is a setting of ``probe prune``; elsewhere the model runs whole on ``--device``."""
    if args.offload != "off" or args.run_device is not None:
        raise ProbeError(f"probe {command} runs the whole model on --device; --offload and --run-device are "
                         "settings of probe prune")


