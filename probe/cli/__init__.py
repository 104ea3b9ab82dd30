"""The ``probe`` command: one module per subcommand, each adding its parser with ``register``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, TextIO

from probe.cli import check, evaluate, families, grid, plot, ppl, prune, table
from probe.cli.common import HelpFormatter, RunInterrupted
from probe.errors import ProbeError

COMMANDS = (prune, evaluate, grid, plot, table, families, check, ppl)  # in the order `probe --help` lists them

EXAMPLES = """examples:
  probe prune --method wanda --tokens text --sparsity 0.5 --out runs/wanda-text-50
  probe prune llava-hf/llama3-llava-next-8b-hf --device cuda --dtype bfloat16 --method atv --out pruned/atv-50
  probe eval runs/wanda-text-50 --tasks offline --limit 40 --dense runs/dense.csv
  probe grid --quick
  probe plot drift runs/atv-50
"""


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("probe-lvlm")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe", description="Weight pruning and sensitivity probes for LVLMs.",
                                     epilog=EXAMPLES, formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("probe").setLevel(logging.DEBUG if args.verbose else logging.INFO)

    stdout, sys.stdout = sys.stdout, CheckedStream(sys.stdout)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except StdoutError as exc:
        _silence(stdout)
        print(f"probe: error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 130
    except ProbeError as exc:
        print(f"probe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("probe: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout


class StdoutError(ProbeError):
    """Standard output cannot be written (a full device, a closed pipe)."""


class CheckedStream:
    """A text stream whose failed writes raise :class:`StdoutError` (one line from the CLI), not OSError."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise StdoutError(f"cannot write to standard output ({exc.strerror or exc})") from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise StdoutError(f"cannot write to standard output ({exc.strerror or exc})") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _silence(stream: TextIO) -> None:
    """Point ``stream`` at the null device, so that the interpreter's last flush of what it still holds
    cannot fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a file descriptor (a test's captured stream)
        pass
