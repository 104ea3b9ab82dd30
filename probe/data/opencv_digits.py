"""``opencv_digits``: OpenCV's 5,000 handwritten digits (Debian's ``opencv-doc``), which of 0-9.

``examples/data/digits.png`` is a 2000x1000 sheet of 20x20 cells, 100 per row; rows 5k to 5k+4 hold
digit k (500 of each). Splits are balanced per digit and disjoint (:mod:`probe.data.choices`); the ten
digits are the options, scored by log-likelihood.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from probe.data.choices import SplitError, balanced_splits, choice_question
from probe.data.items import OfflineDataError, VQAItem

SHEET = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")
CELL = 20
ROWS_PER_DIGIT = 5
PER_CLASS = {"train": 60, "test": 30}
OPTIONS = [str(d) for d in range(10)]
QUESTION = choice_question("Which digit is written in this image?", OPTIONS)


def available(sheet: Path | None = None) -> bool:
    return (sheet or SHEET).is_file()


@lru_cache(maxsize=2)
def _cells(sheet: Path) -> np.ndarray:
    """(digit, index, 20, 20) uint8 cells of the sheet."""
    if not sheet.is_file():
        raise OfflineDataError(f"{sheet} not found: install Debian's opencv-doc package (apt-get install opencv-doc)")
    pixels = np.asarray(Image.open(sheet).convert("L"))
    rows, cols = pixels.shape[0] // CELL, pixels.shape[1] // CELL
    if rows % ROWS_PER_DIGIT or rows // ROWS_PER_DIGIT != 10:
        raise OfflineDataError(f"{sheet} is not the 10-digit sheet of 20x20 cells (size {pixels.shape[::-1]})")
    grid = pixels[: rows * CELL, : cols * CELL].reshape(rows, CELL, cols, CELL).transpose(0, 2, 1, 3)
    return grid.reshape(10, ROWS_PER_DIGIT * cols, CELL, CELL)


def opencv_digits(split: str, sheet: Path | None = None, seed: int = 0) -> list[VQAItem]:
    """The items of ``split`` (``train``: 60 per digit, ``test``: 30 per digit) from ``sheet``
    (default: :data:`SHEET`)."""
    if split not in PER_CLASS:
        raise SplitError(f"opencv_digits has no split {split!r}; splits: {', '.join(PER_CLASS)}")
    cells = _cells(sheet or SHEET)
    classes = {str(d): list(range(cells.shape[1])) for d in range(10)}
    items = []
    for digit, index in balanced_splits(classes, PER_CLASS, seed)[split]:
        cell = cells[int(digit), index]
        items.append(VQAItem(
            item_id=f"opencv_digits/{digit}/{index}",
            image=lambda c=cell: Image.fromarray(c).resize((4 * CELL, 4 * CELL), Image.NEAREST).convert("RGB"),
            question=QUESTION, answer=digit, choices=list(OPTIONS),
        ))
    return items
