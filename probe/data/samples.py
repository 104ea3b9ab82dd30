"""One calibration sample (an image and a conversation) and the error every calibration problem raises.

Kept apart from the sources (:mod:`probe.data.calibration`, :mod:`probe.data.bundled`) so that each
source builds samples without importing the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from PIL import Image, ImageFile

from probe.errors import ProbeError


class CalibrationError(ProbeError):
    """A calibration source or sample that cannot be used."""


@dataclass
class ConversationSample:
    """One image + conversation, images loaded lazily."""

    sample_id: str
    conversations: list[dict[str, str]]  # LLaVA format: {"from": "human"|"gpt"|"system", "value": str}
    image_loader: Callable[[], Image.Image] | None
    source: str = ""

    def load_image(self) -> Image.Image:
        if self.image_loader is None:
            raise CalibrationError(f"sample {self.sample_id!r} has no image")
        try:
            with complete_images_only():
                return self.image_loader().convert("RGB")
        except CalibrationError:
            raise
        except Exception as exc:  # PIL raises many types for unreadable files
            raise CalibrationError(f"sample {self.sample_id!r}: image cannot be read ({exc})") from exc


@contextlib.contextmanager
def complete_images_only() -> Iterator[None]:
    """Decode images with PIL's refusal of truncated files in force, whatever another library set for the
    process (lmms-eval turns ``ImageFile.LOAD_TRUNCATED_IMAGES`` on when imported)."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before
