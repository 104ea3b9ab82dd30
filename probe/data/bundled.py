"""The bundled offline calibration set: real images that installed packages ship.

- scikit-image's photographs, each described by the first line of its loader's docstring;
- scikit-learn's 8x8 handwritten digits (1,797 images) with their true labels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from probe.data.calibration import ConversationSample

SKIMAGE_PHOTOS = (
    "astronaut", "camera", "coffee", "chelsea", "rocket", "horse", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "text", "clock", "coins", "retina",
)


def _to_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        array = (255 * (array.astype(np.float64) / max(float(array.max()), 1e-12))).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def skimage_samples() -> list[ConversationSample]:
    """scikit-image photographs with their one-line descriptions."""
    import skimage.data

    samples = []
    for name in SKIMAGE_PHOTOS:
        loader = getattr(skimage.data, name)
        description = loader.__doc__.strip().splitlines()[0]
        samples.append(
            ConversationSample(
                sample_id=f"skimage/{name}",
                conversations=[
                    {"from": "human", "value": "<image>\nDescribe this image in one sentence."},
                    {"from": "gpt", "value": description},
                ],
                image_loader=lambda fn=loader: _to_image(fn()),
                source="skimage",
            )
        )
    return samples


def digits_samples() -> list[ConversationSample]:
    """scikit-learn's handwritten digits, upscaled to 64x64, with their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    samples = []
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        pixels = (image * (255.0 / 16.0)).astype(np.uint8)
        samples.append(
            ConversationSample(
                sample_id=f"digits/{i}",
                conversations=[
                    {"from": "human", "value": "<image>\nWhich digit is written in this image?"},
                    {"from": "gpt", "value": f"The digit {int(label)}."},
                ],
                image_loader=lambda p=pixels: Image.fromarray(p).resize((64, 64), Image.NEAREST),
                source="digits",
            )
        )
    return samples


def bundled_samples() -> list[ConversationSample]:
    """Every bundled sample, photographs first."""
    return skimage_samples() + digits_samples()
