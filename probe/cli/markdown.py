"""The command-line reference as Markdown, written from the parser itself, so that every flag the parser
knows appears in the documentation without anyone typing it."""

from __future__ import annotations

import argparse


def _help_text(action: argparse.Action) -> str:
    text = action.help or ""
    if "%" in text:
        text = text % {**vars(action), "prog": "probe", "default": action.default}
    if action.default not in (None, argparse.SUPPRESS, False) and action.option_strings \
            and "default" not in text and not isinstance(action, argparse._VersionAction):
        text += f" (default: `{action.default}`)"
    return text.replace("|", "\\|").replace("\n", " ")


def _name(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"`{s}`" for s in action.option_strings)
        if action.nargs != 0:
            names += f" `{action.metavar or action.dest.upper()}`"
        return names
    return f"`{action.metavar or action.dest}`"


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| argument | choices | what it does |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        choices = ", ".join(f"`{c}`" for c in action.choices) if action.choices else ""
        rows.append(f"| {_name(action)} | {choices} | {_help_text(action)} |")
    return rows


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """One section per subcommand: its description, usage, every argument with its choices and default,
    and its examples."""
    lines = [parser.description or "", "", "```text", parser.format_usage().strip(), "```", ""]
    lines += _options_table(parser)
    for name, sub in _subcommands(parser).items():
        lines += ["", f"## probe {name}", "", sub.description or "", "", "```text", sub.format_usage().strip(), "```",
                  "", *_options_table(sub)]
        if sub.epilog:
            lines += ["", "```text", sub.epilog.strip(), "```"]
    return "\n".join(lines) + "\n"
