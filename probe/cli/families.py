"""``probe families``: the model families and what each supports."""

from __future__ import annotations

import argparse

from probe.cli.common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``probe families`` to the subcommands."""
    p = add_command(sub, "families", "list the model families with an adapter of their own, then the architectures the "
                         "generic adapter serves where their structure allows")
    p.set_defaults(func=cmd_families)


def cmd_families(args: argparse.Namespace) -> int:
    from probe.models import generic_families
    from probe.models.base import text_families

    print(family_table())
    print("\nfound by structure (generic adapter; `probe check MODEL` says whether one can be pruned):")
    print("\n".join(generic_families()))
    print("\nplain causal language models, every token text (generic adapter; for the LLM-pruning baselines):")
    print("\n".join(text_families()))
    return 0


def family_table(layers: int = 32) -> str:
    """The families with an adapter of their own and what each supports, derived from the adapters and the
    token methods' own checks (a model of ``layers`` decoder blocks): weight pruning and the MoT probe on
    every one; visual token pruning at inference by method; ``--max-pixels``; a tiny model for tests."""
    from probe.errors import ProbeError as Refused
    from probe.models.base import Adapter, get_adapter, supported_families, tiny_families
    from probe.token_pruning.base import make_pruner
    from probe.token_pruning.runtime import check_token_method

    methods = ("fastv", "random", "vitcop")
    rows = [["family", "weights + MoT", *methods, "max-pixels", "tiny model"]]
    tiny = set(tiny_families())
    for family in supported_families():
        supported = []
        for method in methods:
            supported.append("-")
            for spec, label in ((method, "yes"), (f"{method}(deep_positions=keep)", "deep_positions=keep")):
                try:
                    check_token_method(make_pruner(spec), family, layers)
                except Refused:
                    continue
                supported[-1] = label
                break
        native = type(get_adapter(family)).set_max_pixels is not Adapter.set_max_pixels
        rows.append([family, "yes", *supported, "yes" if native else "-", "yes" if family in tiny else "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
