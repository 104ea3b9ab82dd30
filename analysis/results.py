"""Load stored results into pandas: our grids, pruning records, and the paper's tables.

    results = load_grid("results/grid/table2")       # one row per cell and task, every setting a column
    paper = load_paper("table2")                     # the paper's Table 2, tidy
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from probe.record import RecordError, read_selector_blocks

PAPER_DIR = Path(__file__).resolve().parent.parent / "results" / "paper"
# hub ids of the paper's models -> the model names in results/paper/*.csv
PAPER_MODELS = {
    "llava-hf/llama3-llava-next-8b-hf": "llava-next-8b",
    "Qwen/Qwen2-VL-7B-Instruct": "qwen2-vl-7b",
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": "llava-onevision-7b",
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2.5-vl-7b",
}


class ResultsError(RecordError):
    """A results folder or table that is not there."""


def load_grid(folder: str | Path) -> pd.DataFrame:
    """A grid's ``results.csv``: one row per cell and task."""
    path = Path(folder) / "results.csv"
    if not path.is_file():
        raise ResultsError(f"no grid results at {path}")
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


SCORE_COLUMNS = ("task", "metric", "score", "n")


def load_scores(path: str | Path) -> pd.DataFrame:
    """A tidy scores CSV written by ``probe eval --out`` (columns task, metric, score, n), checked."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"scores not found: {path}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path} is not a CSV of scores ({str(exc).splitlines()[0]})") from None
    missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
    if missing:
        raise ResultsError(f"{path} lacks the column(s) {', '.join(missing)} of a scores CSV (probe eval --out)")
    if not pd.api.types.is_numeric_dtype(frame["score"]):
        raise ResultsError(f"{path}: the score column is not numeric")
    return frame


def load_items(folder: str | Path) -> pd.DataFrame | None:
    """Every cell's per-item scores of a grid (``items/*.csv``: cell, task, doc_id, value), or None for a
    grid run before they were kept."""
    paths = sorted((Path(folder) / "items").glob("*.csv"))
    if not paths:
        return None
    return pd.concat([pd.read_csv(p, dtype={"cell": str, "task": str}) for p in paths], ignore_index=True)


def load_cell_records(folder: str | Path) -> dict[str, dict]:
    """The pruning record of every finished cell of a grid, by cell id."""
    records = {}
    for path in sorted((Path(folder) / "cells").glob("*.json")):
        record = json.loads(path.read_text())
        records[record.get("cell") or record["context"]["cell"]] = record  # "cell": records before version 2
    return records


def load_atv_blocks(source: str | Path) -> pd.DataFrame:
    """Per-block ATV records (mean drift, K, visual tokens kept) from a pruned checkpoint's
    ``manifest.json``, a grid cell record, or a folder holding a manifest."""
    return pd.DataFrame(read_selector_blocks(Path(source)))


def load_paper(table: str) -> pd.DataFrame:
    """One of the paper's tables (``table1``, ``table2``, ``table3``, ``table4``, ``table_a5``, ``table_a6``)."""
    path = PAPER_DIR / f"{table}.csv"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(PAPER_DIR.glob("*.csv")))
        raise ResultsError(f"no paper table {table!r}; known: {known}")
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def paper_model(model: str) -> str | None:
    """The paper's name for a model id, if the paper reports it."""
    return PAPER_MODELS.get(model)
