"""``emoji_names``: Noto Color Emoji (Debian's ``fonts-noto-color-emoji``), which of 4 Unicode names.

Every single-code-point emoji in the font that has a Unicode name (``unicodedata``) and draws
something is rendered in colour with Pillow; the options are its lower-case name and three names of
other emoji, the true one at position ``k mod 4`` for item ``k`` so every position is equally often
right. Emoji are split by code point (a seeded shuffle), so no emoji is in two splits; options are
scored by log-likelihood.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFont

from probe.data.choices import SplitError, choice_question, options_with_answer
from probe.data.items import OfflineDataError, VQAItem

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the one size of the font's colour bitmaps
SPLIT_SIZES = {"train": 600, "test": 300}
N_OPTIONS = 4
PROMPT = "What is the Unicode name of this emoji?"
# code points the font maps that are not pictures on their own
NOT_PICTURES = ("TAG ", "CANCEL TAG", "REGIONAL INDICATOR", "VARIATION SELECTOR", "COMBINING", "ZERO WIDTH",
                "EMOJI MODIFIER")


def available(font: Path | None = None) -> bool:
    return (font or FONT).is_file()


@lru_cache(maxsize=2)
def _font(font: Path) -> ImageFont.FreeTypeFont:
    if not font.is_file():
        raise OfflineDataError(f"{font} not found: install Debian's fonts-noto-color-emoji package "
                               "(apt-get install fonts-noto-color-emoji)")
    return ImageFont.truetype(str(font), FONT_SIZE)


def render(char: str, font: Path = FONT) -> Image.Image:
    """``char`` drawn in colour on white, cropped to what it draws, on a square canvas."""
    canvas = Image.new("RGB", (2 * FONT_SIZE, 2 * FONT_SIZE), "white")
    ImageDraw.Draw(canvas).text((FONT_SIZE // 4, FONT_SIZE // 4), char, font=_font(font), embedded_color=True)
    box = ImageChops.difference(canvas, Image.new("RGB", canvas.size, "white")).getbbox()
    if box is None:
        return canvas.crop((0, 0, FONT_SIZE, FONT_SIZE))
    cropped = canvas.crop(box)
    side = max(cropped.size) + 8
    square = Image.new("RGB", (side, side), "white")
    square.paste(cropped, ((side - cropped.width) // 2, (side - cropped.height) // 2))
    return square


@lru_cache(maxsize=2)
def named_emoji(font: Path = FONT) -> dict[str, str]:
    """``{character: lower-case Unicode name}`` for every single-code-point picture in the font."""
    from fontTools.ttLib import TTFont

    _font(font)
    named = {}
    for code in sorted(TTFont(str(font)).getBestCmap()):
        char = chr(code)
        name = unicodedata.name(char, "")
        if code < 0x2190 or not name or name.startswith(NOT_PICTURES):
            continue
        if render(char, font).getcolors(maxcolors=1) is None:  # more than the white ground: it draws something
            named[char] = name.lower()
    return named


def split_characters(named: dict[str, str], split: str, seed: int = 0) -> list[str]:
    """The characters of ``split`` from one seeded shuffle of all of them (test first, then train)."""
    if split not in SPLIT_SIZES:
        raise SplitError(f"emoji_names has no split {split!r}; splits: {', '.join(SPLIT_SIZES)}")
    needed = sum(SPLIT_SIZES.values())
    if len(named) < needed:
        raise SplitError(f"emoji_names needs {needed} named emoji; the font has {len(named)}")
    order = sorted(named)
    random.Random(seed).shuffle(order)
    start = 0 if split == "test" else SPLIT_SIZES["test"]
    return order[start : start + SPLIT_SIZES[split]]


def emoji_items(
    named: dict[str, str], split: str, seed: int, image: Callable[[str], Image.Image]
) -> list[VQAItem]:
    """Items of ``split``; ``image`` draws a character. Distractors come from every name."""
    names = sorted(named.values())
    items = []
    for k, char in enumerate(split_characters(named, split, seed)):
        rng = random.Random(f"{seed}/{split}/{ord(char)}")
        options = options_with_answer(named[char], names, N_OPTIONS, k, rng)
        items.append(VQAItem(item_id=f"emoji/U+{ord(char):04X}", image=lambda c=char: image(c),
                             question=choice_question(PROMPT, options), answer=named[char], choices=options))
    return items


def emoji_names(split: str, font: Path | None = None, seed: int = 0) -> list[VQAItem]:
    """The items of ``split`` (``train``: 600 emoji, ``test``: 300) from ``font`` (default: :data:`FONT`)."""
    font = font or FONT
    return emoji_items(named_emoji(font), split, seed, lambda char: render(char, font))
