"""One offline question about one image, and the error every offline data problem raises."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from probe.errors import ProbeError


class OfflineDataError(ProbeError):
    """An offline task or split that cannot be built here."""


@dataclass
class VQAItem:
    """One question about one image, with its gold answer; ``choices`` lists the answers a
    multiple-choice item allows (option texts, or letters where the question letters them)."""

    item_id: str
    image: Callable[[], Image.Image]
    question: str
    answer: str
    choices: list[str] = field(default_factory=list)
