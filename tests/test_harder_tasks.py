"""The harder offline tasks: balanced, disjoint, deterministic splits built from stand-ins of the Debian
data (a digit sheet, a clip-art tree, a table of emoji names), and their lmms-eval task files."""

import io
import random
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from probe.data import clipart, emoji, opencv_digits
from probe.data.choices import SplitError, balanced_splits, options_with_answer
from probe.data.items import OfflineDataError


def test_balanced_splits_are_disjoint_balanced_and_fixed_by_the_seed():
    classes = {c: [f"{c}{i}" for i in range(30)] for c in "abc"}
    splits = balanced_splits(classes, {"train": 10, "test": 5}, seed=1)
    assert [len(splits[s]) for s in ("train", "test")] == [30, 15]
    for split, per_class in (("train", 10), ("test", 5)):
        assert Counter(c for c, _ in splits[split]) == {c: per_class for c in "abc"}
        assert all(key.startswith(c) for c, key in splits[split])
    assert not {k for _, k in splits["train"]} & {k for _, k in splits["test"]}
    # the same for a reordered listing; another seed draws other items
    reordered = {c: list(reversed(keys)) for c, keys in reversed(list(classes.items()))}
    assert balanced_splits(reordered, {"train": 10, "test": 5}, seed=1) == splits
    assert balanced_splits(classes, {"train": 10, "test": 5}, seed=2)["test"] != splits["test"]
    with pytest.raises(SplitError, match=r"needs 31 distinct items.*a \(30\)"):
        balanced_splits(classes, {"train": 30, "test": 1})


def test_options_hold_the_answer_at_its_position_and_distinct_distractors():
    pool = [f"name {i}" for i in range(20)]
    for position in range(6):
        options = options_with_answer("name 3", pool, 4, position, random.Random(position))
        assert options[position % 4] == "name 3" and len(set(options)) == 4 and set(options) <= set(pool)
    with pytest.raises(SplitError, match="3 distractors"):
        options_with_answer("a", ["a", "b", "c"], 4, 0, random.Random(0))


def _digit_sheet(path: Path) -> Path:
    """A 2000x1000 sheet whose cell (row r, column c) is filled with (r * 100 + c) % 251: the cell's
    value tells where it came from."""
    sheet = np.zeros((1000, 2000), dtype=np.uint8)
    for r in range(50):
        for c in range(100):
            sheet[r * 20 : (r + 1) * 20, c * 20 : (c + 1) * 20] = (r * 100 + c) % 251
    Image.fromarray(sheet).save(path)
    return path


def test_opencv_digits_labels_come_from_the_sheet_rows(tmp_path):
    sheet = _digit_sheet(tmp_path / "digits.png")
    splits = {s: opencv_digits.opencv_digits(s, sheet=sheet) for s in ("train", "test")}
    assert len(splits["train"]) == 600 and len(splits["test"]) == 300
    value_to_row = {}
    for r in range(50):
        for c in range(100):
            value_to_row.setdefault((r * 100 + c) % 251, set()).add(r)
    for items in splits.values():
        assert Counter(i.answer for i in items) == {str(d): len(items) // 10 for d in range(10)}
        for item in items:
            assert item.choices == [str(d) for d in range(10)]
            value = int(np.asarray(item.image())[0, 0, 0])
            rows = value_to_row[value]
            assert any(row // 5 == int(item.answer) for row in rows)  # rows 5k..5k+4 hold digit k
    assert not {i.item_id for i in splits["train"]} & {i.item_id for i in splits["test"]}
    again = opencv_digits.opencv_digits("test", sheet=sheet)
    assert [i.item_id for i in again] == [i.item_id for i in splits["test"]]


def _png(value: int, size: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (size, size), (value % 256, value // 256, 7, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


def _huge_png() -> bytes:
    """A PNG whose header declares 100000 x 100000 pixels (never decoded)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 6, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_clipart_splits_leave_out_shared_and_oversized_pictures(tmp_path):
    root = tmp_path / "png"
    value = 0
    for category in (*clipart.CATEGORIES, "unsorted"):
        for i in range(92):
            folder = root / category / ("sub" if i % 3 == 0 else "")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{category}_{i}.png").write_bytes(_png(value))
            value += 1
    # a copy within a category counts once; a picture filed under two categories is left out
    (root / "animals" / "copy.png").write_bytes((root / "animals" / "animals_1.png").read_bytes())
    (root / "food" / "shared.png").write_bytes(_png(10_000))
    (root / "tools" / "shared.png").write_bytes(_png(10_000))
    (root / "people" / "huge.png").write_bytes(_huge_png())
    clipart.unique_pictures.cache_clear()
    pictures = clipart.unique_pictures(root)
    assert set(pictures) == set(clipart.CATEGORIES)
    assert all(len(paths) == 92 for paths in pictures.values())
    assert not any("shared" in p or "huge" in p for paths in pictures.values() for p in paths)

    splits = {s: clipart.clipart_category(s, root=root) for s in ("train", "test")}
    for split, per_class in (("train", 50), ("test", 40)):
        assert Counter(i.answer for i in splits[split]) == {c: per_class for c in clipart.CATEGORIES}
        for item in splits[split]:
            assert item.item_id.split("/")[1] == item.answer and item.choices == list(clipart.CATEGORIES)
    train_pixels = {np.asarray(i.image()).tobytes() for i in splits["train"]}
    assert not train_pixels & {np.asarray(i.image()).tobytes() for i in splits["test"]}
    assert clipart.clipart_category("test", root=root)[5].item_id == splits["test"][5].item_id

    clipart.unique_pictures.cache_clear()
    (root / "shapes").rename(root / "gone")
    with pytest.raises(OfflineDataError, match="shapes not found.*openclipart-png"):
        clipart.clipart_category("test", root=root)


def test_emoji_items_are_disjoint_position_balanced_and_fixed_by_the_seed():
    named = {chr(0x1F300 + i): f"emoji number {i}" for i in range(1000)}
    drawn = []
    splits = {s: emoji.emoji_items(named, s, 0, lambda c: drawn.append(c) or Image.new("RGB", (4, 4)))
              for s in ("train", "test")}
    assert len(splits["train"]) == 600 and len(splits["test"]) == 300
    assert not {i.item_id for i in splits["train"]} & {i.item_id for i in splits["test"]}
    for items in splits.values():
        positions = Counter(i.choices.index(i.answer) for i in items)
        assert positions == {p: len(items) // 4 for p in range(4)}
        for item in items:
            char = chr(int(item.item_id.split("U+")[1], 16))
            assert item.answer == named[char] and len(set(item.choices)) == 4
            assert all(f"- {option}" in item.question for option in item.choices)
    assert drawn == []  # images are drawn only when asked for
    splits["test"][0].image()
    assert drawn == [chr(int(splits["test"][0].item_id.split("U+")[1], 16))]
    again = emoji.emoji_items(named, "test", 0, lambda c: None)
    assert [(i.item_id, i.choices) for i in again] == [(i.item_id, i.choices) for i in splits["test"]]
    with pytest.raises(SplitError, match="needs 900 named emoji"):
        emoji.emoji_items(dict(list(named.items())[:100]), "test", 0, lambda c: None)


def test_multiple_choice_task_file_scores_the_most_likely_option(tmp_path, monkeypatch):
    """opencv_digits through lmms-eval from its task file (built on the stand-in sheet): each item's
    accuracy is whether the option with the highest summed log-likelihood is the gold digit, recomputed
    here option by option."""
    from probe.evaluation.harness import evaluate_with_items
    from probe.evaluation.task_files import build_task_files
    from probe.evaluation.wrapper import ProbeLVLM
    from probe.models.loading import load_model

    monkeypatch.setattr(opencv_digits, "SHEET", _digit_sheet(tmp_path / "digits.png"))
    folder = tmp_path / "tasks"
    assert build_task_files(folder, tasks=["opencv_digits"]) == ["opencv_digits"]
    loaded = load_model("tiny:llava")
    table, items = evaluate_with_items(loaded, ["opencv_digits"], limit=6, tasks_dir=folder, show_progress=False)
    assert table.set_index("task").loc["opencv_digits", "metric"] == "acc"

    wrapper = ProbeLVLM(loaded=loaded, show_progress=False)
    expected = []
    for item in opencv_digits.opencv_digits("test")[:6]:
        # the parquet round trip stores the image as PNG, which is lossless
        scores = [wrapper.continuation_loglikelihood(item.question, option, [item.image()])[0]
                  for option in item.choices]
        expected.append(float(item.choices[int(np.argmax(scores))] == item.answer))
    assert items.sort_values("doc_id")["value"].tolist() == expected
    assert table.set_index("task").loc["opencv_digits", "score"] == pytest.approx(np.mean(expected))


def test_offline_hard_without_its_packages_is_one_clear_error(tmp_path, monkeypatch):
    from probe.data import offline
    from probe.evaluation.harness import UnknownTaskError, resolve_tasks
    from probe.evaluation.task_files import CHOICE_TASKS, build_task_files

    for task in CHOICE_TASKS:
        monkeypatch.setitem(offline.DEBIAN_SOURCES, task, lambda: False)
    folder = tmp_path / "tasks"
    assert not set(build_task_files(folder, tasks=["digits", *CHOICE_TASKS])) & set(CHOICE_TASKS)
    with pytest.raises(UnknownTaskError, match="none of the tasks of preset 'offline-hard'"):
        resolve_tasks("offline-hard", folder)
    with pytest.raises(UnknownTaskError, match="emoji_names cannot be built here"):
        resolve_tasks("digits,emoji_names", folder)
    assert resolve_tasks("offline", folder) == ["digits"]
