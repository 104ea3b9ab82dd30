"""One calibration sample (an image and a conversation) and the error every calibration problem raises.

Kept apart from the sources (:mod:`probe.data.calibration`, :mod:`probe.data.bundled`) so that each
source builds samples without importing the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

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
            return self.image_loader().convert("RGB")
        except CalibrationError:
            raise
        except Exception as exc:  # PIL raises many types for unreadable files
            raise CalibrationError(f"sample {self.sample_id!r}: image cannot be read ({exc})") from exc
