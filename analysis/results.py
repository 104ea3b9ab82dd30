"""Load stored results into pandas: our grids, pruning records, and the paper's tables.

    results = load_grid("results/grid/table2")       # one row per cell and task, every setting a column
    paper = load_paper("table2")                     # the paper's Table 2, tidy
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pandas as pd

from probe.core.record import RecordError, read_selector_blocks

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
    """A grid's ``results.csv``: one row per cell and task, checked (whole rows, each cell and task once,
    every score a number)."""
    path = Path(folder) / "results.csv"
    if not path.is_file():
        raise ResultsError(f"no grid results at {path}")
    frame = _read_checked_csv(path, "grid results")
    missing = [c for c in ("task", "score") if c not in frame.columns]
    if missing:
        raise ResultsError(f"{path} lacks the column(s) {', '.join(missing)} of grid results")
    key = ["cell", "task"] if "cell" in frame.columns else [c for c in frame.columns if c not in VALUE_COLUMNS]
    _check_scores(frame, path, key=key)
    return frame


VALUE_COLUMNS = ("score", "stderr", "n", "metric")  # what a results row measures, not which cell and task it is


def _read_checked_csv(path: Path, what: str) -> pd.DataFrame:
    """A CSV that is UTF-8, not empty, ends with a whole line and has as many fields in every row as in its
    header (a row cut off by a torn write is named, never read as missing values)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ResultsError(f"{path} is not a CSV of {what} (not UTF-8 text)") from None
    if not text.strip():
        raise ResultsError(f"{path} is empty: it holds no {what}")
    rows = list(csv.reader(io.StringIO(text)))
    if not text.endswith("\n"):
        raise ResultsError(f"{path}: its last row (row {len(rows)}) is cut off, as a write stopped part-way leaves "
                           "it (every row of a file written here ends with a line break); remove that row")
    width = len(rows[0])
    for line, row in enumerate(rows[1:], start=2):
        if row and len(row) != width:
            raise ResultsError(f"{path}: row {line} has {len(row)} fields where the header has {width} (a torn or "
                               "hand-edited row); mend or remove it")
    try:
        return pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=["", "nan", "NaN"])
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ResultsError(f"{path} is not a CSV of {what} ({str(exc).splitlines()[0]})") from None


def _check_scores(frame: pd.DataFrame, path: Path, key: list[str]) -> None:
    """Every score a finite number >= 0 and each ``key`` once, or a :class:`ResultsError` naming the row."""
    if not pd.api.types.is_numeric_dtype(frame["score"]):
        raise ResultsError(f"{path}: the score column is not numeric")
    for i, row in frame.iterrows():
        score = row["score"]
        if not math.isfinite(score) or score < 0:
            where = ", ".join(f"{k} {row[k]}" for k in key)
            raise ResultsError(f"{path}: row {i + 2} ({where}) has the score {score}; a score is a finite number "
                               ">= 0")
    twice = frame[frame.duplicated(key, keep=False)]
    if not twice.empty:
        where = ", ".join(f"{k} {twice.iloc[0][k]}" for k in key)
        raise ResultsError(f"{path} holds {len(twice)} rows for the same {' and '.join(key)} ({where}); each "
                           "may appear once")


SCORE_COLUMNS = ("task", "metric", "score", "n")


def load_scores(path: str | Path) -> pd.DataFrame:
    """A tidy scores CSV written by ``probe eval --out`` (columns task, metric, score, n), checked."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"scores not found: {path}")
    frame = _read_checked_csv(path, "scores")
    missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
    if missing:
        raise ResultsError(f"{path} lacks the column(s) {', '.join(missing)} of a scores CSV (probe eval --out)")
    _check_scores(frame, path, key=[*(["model"] if "model" in frame.columns else []), "task", "metric"])
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
