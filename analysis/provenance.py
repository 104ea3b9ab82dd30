"""Where a grid's cells were computed, and whether they can be compared as if computed alike.

    records = load_records("results/grid/table1-large")   # {cell id: its run record}
    print(provenance_note(records))                      # how the cells differ, or "" where they do not

A comparison between cells is read as the effect of their settings; cells computed by another code
revision, on another machine, with other package versions or in another dtype or device may differ for
those reasons too, so tables say so under them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

NOT_RECORDED = "not recorded"


def load_records(folder: str | Path) -> dict[str, dict[str, Any]]:
    """The run records of a grid folder's cells (``cells/*.json``) by cell id (the id the record names, else
    its file name); unreadable files are left out."""
    records = {}
    for path in sorted(Path(folder).glob("cells/*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            cell = (data.get("context") or {}).get("cell") or path.stem
            records[str(cell)] = data
    return records


def _code(record: dict[str, Any]) -> str:
    code = record.get("code") or {}
    if code.get("commit"):
        return code["commit"][:12] + (" with uncommitted changes" if code.get("dirty") else "")
    return f"package {code['version']}" if code.get("version") else NOT_RECORDED


def _machine(record: dict[str, Any]) -> str:
    machine = (record.get("context") or {}).get("machine") or record.get("machine") or {}
    if not machine:
        return NOT_RECORDED
    parts = [machine.get("cpu") or "?", machine.get("cpu_capability") or "?"]
    return ", ".join(parts + ([machine["gpu"]] if machine.get("gpu") else []))


def _version(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda record: (record.get("versions") or {}).get(name) or NOT_RECORDED


def _field(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda record: str(record.get(name) or NOT_RECORDED)


ASPECTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "code revision": _code,
    "machine": _machine,
    "torch": _version("torch"),
    "transformers": _version("transformers"),
    "dtype": _field("dtype"),
    "device": _field("device"),
}


def _named(cells: list[str]) -> str:
    return ", ".join(cells) if len(cells) <= 3 else f"{len(cells)} cells"


def provenance_note(records: dict[str, dict[str, Any]], cells: set[str] | None = None) -> str:
    """A paragraph naming each aspect (:data:`ASPECTS`) in which the records of ``cells`` (default: all)
    differ or are partly not recorded, with the cells of each value; empty where every aspect is recorded
    and the same in every cell."""
    chosen = {cell: record for cell, record in records.items() if cells is None or cell in cells}
    lines = []
    for aspect, read in ASPECTS.items():
        values: dict[str, list[str]] = {}
        for cell, record in chosen.items():
            values.setdefault(read(record), []).append(cell)
        if len(values) > 1 or NOT_RECORDED in values:
            shown = "; ".join(f"{value} ({_named(named)})" for value, named in values.items())
            lines.append(f"- {aspect}: {shown}")
    if not lines:
        return ""
    return ("The cells compared here were not all computed alike, so their differences may also come from "
            "these:\n" + "\n".join(lines) + "\n")
