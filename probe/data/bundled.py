"""The bundled offline calibration set: real images that installed packages ship, none of them an
evaluation item.

Like the paper's ShareGPT4V conversations, each sample asks for a description of the image and
answers with a few sentences naming what it shows. The pool holds, in equal numbers where both exist:

- scikit-learn's handwritten digits outside the ``digits`` task's test split (the projector's train
  split and the digits no split uses);
- Fashion-MNIST photographs from its training file (the ``fashion_mnist`` task tests on the other
  file), where Debian's ``dataset-fashion-mnist`` is installed.

scikit-image's photographs are all test items of ``skimage_photos``, so none of them calibrates.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from probe.data.offline import (
    FASHION_CLASSES,
    digits_split_indices,
    fashion_arrays,
    fashion_mnist_available,
)
from probe.data.samples import ConversationSample

PROMPTS = (
    "Describe this image in detail.",
    "What do you see in this picture? Describe it.",
    "Give a detailed description of the image.",
    "Explain what is shown in this image.",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_DETAILS = {
    "T-shirt": "a short-sleeved top with a round neckline",
    "Trouser": "a pair of long trousers with two straight legs",
    "Pullover": "a long-sleeved knitted pullover",
    "Dress": "a one-piece dress that hangs from the shoulders",
    "Coat": "a long-sleeved coat that opens at the front",
    "Sandal": "an open sandal held on by straps",
    "Shirt": "a shirt with sleeves and a collar",
    "Sneaker": "a low sports shoe seen from the side",
    "Bag": "a bag with a handle or strap",
    "Ankle boot": "a boot that reaches just above the ankle",
}


def _describe_digit(label: int) -> str:
    return (f"The image is a small grayscale picture of a handwritten digit {label} ({NUMBER_WORDS[label]}). "
            "Light, blocky strokes stand on a dark background; the picture was scanned at 8 by 8 pixels "
            "and enlarged, so its edges are coarse.")


def _describe_fashion(label: str) -> str:
    return (f"This is a grayscale catalogue photograph of a {label.lower()}: {FASHION_DETAILS[label]}. "
            "The item is centred on a plain black background and fills most of the small square frame.")


def digits_samples(seed: int = 0) -> list[ConversationSample]:
    """scikit-learn digits outside the ``digits`` test split, upscaled to 64x64, described."""
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = random.Random(seed)
    samples = []
    for i in sorted(digits_split_indices("train", seed) + digits_split_indices("unused", seed)):
        pixels = (data.images[i] * (255.0 / 16.0)).astype(np.uint8)
        samples.append(ConversationSample(
            sample_id=f"digits/{i}",
            conversations=[{"from": "human", "value": f"<image>\n{rng.choice(PROMPTS)}"},
                           {"from": "gpt", "value": _describe_digit(int(data.target[i]))}],
            image_loader=lambda p=pixels: Image.fromarray(p).resize((64, 64), Image.NEAREST),
            source="digits",
        ))
    return samples


def fashion_samples(n: int, seed: int = 0, indices: list[int] | None = None) -> list[ConversationSample]:
    """``n`` Fashion-MNIST training photographs drawn with ``seed`` (or drawn from ``indices``), described
    (none if not installed)."""
    if not fashion_mnist_available():
        return []
    images, labels = fashion_arrays("train")
    rng = random.Random(seed)
    samples = []
    for i in sorted(rng.sample(indices if indices is not None else range(len(labels)), n)):
        samples.append(ConversationSample(
            sample_id=f"fashion_mnist/train/{i}",
            conversations=[{"from": "human", "value": f"<image>\n{rng.choice(PROMPTS)}"},
                           {"from": "gpt", "value": _describe_fashion(FASHION_CLASSES[int(labels[i])])}],
            image_loader=lambda a=images[i]: Image.fromarray(a).convert("RGB"),
            source="fashion_mnist",
        ))
    return samples


def bundled_samples() -> list[ConversationSample]:
    """The whole pool: the digits samples and as many Fashion-MNIST samples, interleaved."""
    digits = digits_samples()
    fashion = fashion_samples(len(digits))
    return [s for pair in zip(digits, fashion) for s in pair] + digits[len(fashion):]


def heldout_fashion_samples(n: int, seed: int = 0) -> list[ConversationSample]:
    """``n`` Fashion-MNIST training photographs outside the bundled pool, described like the pool's: no
    calibration draw can take them and no task tests on them (empty if Fashion-MNIST is not installed)."""
    if not fashion_mnist_available():
        return []
    _, labels = fashion_arrays("train")
    pool = {int(s.sample_id.rsplit("/", 1)[1]) for s in fashion_samples(len(digits_samples()))}
    return fashion_samples(n, seed, [i for i in range(len(labels)) if i not in pool])
