"""Compatibility helpers for transformers installs without torchvision."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from transformers import processing_utils


@contextlib.contextmanager
def processor_type_checks_tolerate_none() -> Iterator[None]:
    """Let a processor be built with an absent (``None``) sub-processor.

    Without torchvision, transformers cannot resolve the video-processor base class and its type
    check fails even for ``video_processor=None``. Inside this context a ``None`` sub-processor is
    accepted as is; every other argument is still checked.
    """
    original = processing_utils.ProcessorMixin.check_argument_for_proper_class

    def check(self, argument_name, argument):  # noqa: ANN001, ANN202
        if argument is None:
            return None
        return original(self, argument_name, argument)

    processing_utils.ProcessorMixin.check_argument_for_proper_class = check
    try:
        yield
    finally:
        processing_utils.ProcessorMixin.check_argument_for_proper_class = original
