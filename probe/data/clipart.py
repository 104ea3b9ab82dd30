"""``clipart_category``: Openclipart's PNGs (Debian's ``openclipart-png``), which of 8 categories.

The package files its 8,121 PNGs in category folders. A picture whose bytes appear in two categories
is left out, and copies within a category count once, so no picture is in two splits or answers two
ways. Each split holds the same number of pictures of every category; the category names are the
options, scored by log-likelihood. Transparent parts are drawn on white.
"""

from __future__ import annotations

import hashlib
import struct
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

from PIL import Image

from probe.data.choices import SplitError, balanced_splits, choice_question
from probe.data.items import OfflineDataError, VQAItem

ROOT = Path("/usr/share/openclipart/png")
CATEGORIES = ("animals", "computer", "food", "people", "recreation", "shapes", "tools", "transportation")
PER_CLASS = {"train": 50, "test": 40}
QUESTION = choice_question("Which category of clip art is this picture filed under?", CATEGORIES)
MAX_SIDE = 256
MAX_PIXELS = 4096 * 4096  # a few of the files are drawn at sizes Pillow refuses to decode


def available(root: Path | None = None) -> bool:
    return all(((root or ROOT) / category).is_dir() for category in CATEGORIES)


@lru_cache(maxsize=2)
def unique_pictures(root: Path = ROOT, categories: tuple[str, ...] = CATEGORIES) -> dict[str, list[str]]:
    """``{category: [relative path, ...]}``: one path per distinct picture, pictures filed under
    more than one category (or too large to decode) left out."""
    missing = [c for c in categories if not (root / c).is_dir()]
    if missing:
        raise OfflineDataError(f"clip-art categories {', '.join(missing)} not found in {root}: install Debian's "
                               "openclipart-png package (apt-get install openclipart-png)")
    homes: dict[str, set[str]] = defaultdict(set)
    first: dict[str, str] = {}
    for category in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for path in sorted((root / category).rglob("*.png")):
            data = path.read_bytes()
            if png_pixels(data) > MAX_PIXELS:
                continue
            digest = hashlib.sha256(data).hexdigest()
            homes[digest].add(category)
            first.setdefault(digest, str(path.relative_to(root)))
    pictures: dict[str, list[str]] = {c: [] for c in categories}
    for digest, where in homes.items():
        if len(where) == 1 and (category := next(iter(where))) in pictures:
            pictures[category].append(first[digest])
    return pictures


def png_pixels(data: bytes) -> int:
    """Width x height from a PNG's header (0 for bytes that are not a PNG)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return 0
    width, height = struct.unpack(">II", data[16:24])
    return width * height


def load_picture(path: Path) -> Image.Image:
    """The picture on white, its longer side at most 256 pixels."""
    image = Image.open(path).convert("RGBA")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, image).convert("RGB")


def clipart_category(split: str, root: Path | None = None, seed: int = 0) -> list[VQAItem]:
    """The items of ``split`` (``train``: 50 per category, ``test``: 40 per category) from the category
    folders under ``root`` (default: :data:`ROOT`)."""
    if split not in PER_CLASS:
        raise SplitError(f"clipart_category has no split {split!r}; splits: {', '.join(PER_CLASS)}")
    root = root or ROOT
    pictures = unique_pictures(root)
    return [
        VQAItem(item_id=f"clipart/{relative}", image=lambda p=root / relative: load_picture(p),
                question=QUESTION, answer=category, choices=list(CATEGORIES))
        for category, relative in balanced_splits(pictures, PER_CLASS, seed)[split]
    ]
