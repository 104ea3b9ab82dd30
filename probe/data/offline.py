"""Offline visual question sets built from real data that installed packages ship.

- ``fashion_mnist``: Zalando's Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``), 10 clothing classes; train items from its training file,
  test items from its test file.
- ``digits``: scikit-learn's 1,797 handwritten digits with their labels, split by a seeded shuffle.
- ``skimage_photos``: scikit-image's photographs; which of four one-line descriptions (from their
  loaders' docstrings) fits the image, answered with a letter. Test only.
- harder tasks scored by the log-likelihood of their options, each in its own module:
  ``emoji_names`` (:mod:`probe.data.emoji`), ``clipart_category`` (:mod:`probe.data.clipart`),
  ``opencv_digits`` (:mod:`probe.data.opencv_digits`), from Debian packages.

Nothing here is generated ground truth: every answer is the label or description the data ships with.
Where a Debian package is missing (no root for apt), the task files leave its tasks out
(:data:`DEBIAN_SOURCES`, :func:`probe.evaluation.task_files.task_data_available`).
"""

from __future__ import annotations

import gzip
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from probe.data import clipart, emoji, opencv_digits
from probe.data.items import OfflineDataError, VQAItem

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_QUESTION = "What clothing item is shown? Answer with one of: " + ", ".join(FASHION_CLASSES) + "."
DIGITS_QUESTION = "Which digit is written in this image? Answer with a single digit."
SPLIT_SIZES = {"fashion_mnist": {"train": 1000, "test": 500}, "digits": {"train": 520, "test": 400}}


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzip-compressed."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]  # bytes 0-1 are zero, byte 2 the element type (unsigned byte here)
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist_available() -> bool:
    return (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file()


@lru_cache(maxsize=2)
def fashion_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    if not fashion_mnist_available():
        raise OfflineDataError(
            f"Fashion-MNIST not found in {FASHION_DIR}: install Debian's dataset-fashion-mnist package "
            "(apt-get install dataset-fashion-mnist)"
        )
    images = _read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    return images, labels


def fashion_mnist(split: str, n: int | None = None, seed: int = 0) -> list[VQAItem]:
    """Fashion-MNIST items of ``split``, ``n`` of them drawn with ``seed`` (default: the split size)."""
    images, labels = fashion_arrays(split)
    n = n or SPLIT_SIZES["fashion_mnist"][split]
    picks = random.Random(seed).sample(range(len(labels)), n)
    return [
        VQAItem(
            item_id=f"fashion_mnist/{split}/{i}",
            image=lambda a=images[i]: Image.fromarray(a).convert("RGB"),
            question=FASHION_QUESTION,
            answer=FASHION_CLASSES[int(labels[i])],
        )
        for i in picks
    ]


def digits(split: str, n: int | None = None, seed: int = 0) -> list[VQAItem]:
    """scikit-learn digits; the split is a seeded shuffle (test items are the last of it)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    chosen = digits_split_indices(split, seed)
    chosen = chosen[: n or len(chosen)]
    items = []
    for i in chosen:
        pixels = (data.images[i] * (255.0 / 16.0)).astype(np.uint8)
        items.append(
            VQAItem(
                item_id=f"digits/{split}/{i}",
                image=lambda p=pixels: Image.fromarray(p).resize((64, 64), Image.NEAREST).convert("RGB"),
                question=DIGITS_QUESTION,
                answer=str(int(data.target[i])),
            )
        )
    return items


SKIMAGE_PHOTOS = (
    "astronaut", "camera", "coffee", "chelsea", "rocket", "horse", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "text", "clock", "coins", "retina",
)


def _to_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        array = (255 * (array.astype(np.float64) / max(float(array.max()), 1e-12))).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def skimage_photographs() -> list[tuple[str, Callable[[], Image.Image], str]]:
    """scikit-image's photographs as (name, image loader, the first line of its loader's docstring)."""
    import skimage.data

    photos = []
    for name in SKIMAGE_PHOTOS:
        loader = getattr(skimage.data, name)
        photos.append((name, lambda fn=loader: _to_image(fn()), loader.__doc__.strip().splitlines()[0]))
    return photos


def digits_split_indices(split: str, seed: int = 0) -> list[int]:
    """Indices into scikit-learn's digits of ``split``: ``train`` (the projector's), ``test`` (the task's),
    or ``unused`` (neither), from one seeded shuffle."""
    from sklearn.datasets import load_digits

    order = list(range(len(load_digits().target)))
    random.Random(seed).shuffle(order)
    sizes = SPLIT_SIZES["digits"]
    parts = {"train": order[: sizes["train"]], "test": order[-sizes["test"]:],
             "unused": order[sizes["train"]: len(order) - sizes["test"]]}
    if split not in parts:
        raise OfflineDataError(f"digits has no split {split!r}; splits: {', '.join(parts)}")
    return parts[split]


def skimage_photos(split: str = "test", seed: int = 0) -> list[VQAItem]:
    """Four-way multiple choice between scikit-image photographs' descriptions (test only)."""
    if split != "test":
        raise OfflineDataError("skimage_photos has only a test split")
    photos = skimage_photographs()
    descriptions = [description for _, _, description in photos]
    rng = random.Random(seed)
    items = []
    for (name, loader, description) in photos:
        distractors = rng.sample([d for d in descriptions if d != description], 3)
        options = distractors + [description]
        rng.shuffle(options)
        letters = "ABCD"
        question = "Which description fits this image?\n" + "\n".join(
            f"{letter}. {text}" for letter, text in zip(letters, options)
        ) + "\nAnswer with the letter of the correct option."
        items.append(VQAItem(f"skimage/{name}", loader, question, letters[options.index(description)],
                             list(letters)))
    return items


TASK_BUILDERS: dict[str, Callable[..., list[VQAItem]]] = {
    "fashion_mnist": fashion_mnist,
    "digits": digits,
    "skimage_photos": skimage_photos,
    "emoji_names": emoji.emoji_names,
    "clipart_category": clipart.clipart_category,
    "opencv_digits": opencv_digits.opencv_digits,
}
# the tasks whose data comes from Debian packages, and whether it is installed here
DEBIAN_SOURCES: dict[str, Callable[[], bool]] = {
    "fashion_mnist": fashion_mnist_available,
    "emoji_names": emoji.available,
    "clipart_category": clipart.available,
    "opencv_digits": opencv_digits.available,
}


FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNE_FILES = ("fortunes", "literature", "riddles")


@dataclass
class CompletionItem:
    """A text prefix and candidate endings; ``answer`` indexes the true one."""

    item_id: str
    prefix: str
    endings: list[str]
    answer: int


def fortunes_available() -> bool:
    return all((FORTUNES_DIR / name).is_file() for name in FORTUNE_FILES)


def _quotes() -> list[tuple[str, str]]:
    """(id, text) of every quote in Debian's fortunes-min files, whitespace normalised."""
    if not fortunes_available():
        raise OfflineDataError(
            f"fortune files not found in {FORTUNES_DIR}: install Debian's fortunes-min package"
        )
    quotes = []
    for name in FORTUNE_FILES:
        text = (FORTUNES_DIR / name).read_text(encoding="utf-8", errors="replace")
        for k, block in enumerate(text.split("\n%\n")):
            words = block.split()
            if len(words) >= 8:
                quotes.append((f"{name}/{k}", " ".join(words)))
    return quotes


def quote_completion(split: str = "test", n: int | None = 300, seed: int = 0) -> list[CompletionItem]:
    """Human-written quotes cut in half; pick the true second half among four (test only)."""
    if split != "test":
        raise OfflineDataError("quote_completion has only a test split")
    quotes = _quotes()
    rng = random.Random(seed)
    halves = []
    for qid, text in quotes:
        words = text.split()
        cut = len(words) // 2
        halves.append((qid, " ".join(words[:cut]), " " + " ".join(words[cut:])))
    chosen = rng.sample(range(len(halves)), min(n or len(halves), len(halves)))
    items = []
    for i in chosen:
        qid, prefix, ending = halves[i]
        others = rng.sample([h[2] for j, h in enumerate(halves) if j != i], 3)
        endings = others + [ending]
        rng.shuffle(endings)
        items.append(CompletionItem(f"quote_completion/{qid}", prefix, endings, endings.index(ending)))
    return items
