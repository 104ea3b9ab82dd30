"""Compatibility helpers: transformers installs without torchvision, and the KV-cache names that changed
across transformers 5 releases."""

from __future__ import annotations

import contextlib
import inspect
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
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


def save_processor(processor, folder) -> None:  # noqa: ANN001
    """``processor.save_pretrained(folder)``, skipping sub-processors that are absent (``None``); a causal
    language model's processor is its tokenizer."""
    if not hasattr(type(processor), "get_attributes"):
        processor.save_pretrained(folder)
        return
    present = [a for a in type(processor).get_attributes() if getattr(processor, a, None) is not None]
    processor.get_attributes = lambda: present  # instance attribute shadows the classmethod
    try:
        processor.save_pretrained(folder)
    finally:
        del processor.get_attributes


def copy_left_out_processor_files(source: str, folder: Path) -> list[str]:
    """Copy ``source``'s video processor config into ``folder`` where the saved processor lacks it.

    Without torchvision :func:`load_processor` leaves the video part out, so ``save_pretrained`` cannot
    write it; copying the file keeps a checkpoint written here whole for machines that have torchvision
    (lmms-eval's Qwen wrappers load the full processor). ``source`` is a local folder or a hub id;
    returns the names copied.
    """
    from transformers.utils import VIDEO_PROCESSOR_NAME, cached_file

    folder = Path(folder)
    if (folder / VIDEO_PROCESSOR_NAME).exists():
        return []
    found = cached_file(source, VIDEO_PROCESSOR_NAME, _raise_exceptions_for_missing_entries=False,
                        _raise_exceptions_for_connection_errors=False)
    if found is None:
        return []
    shutil.copyfile(found, folder / VIDEO_PROCESSOR_NAME)
    return [VIDEO_PROCESSOR_NAME]


def torchvision_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def load_processor(ref: str):  # noqa: ANN201
    """``AutoProcessor.from_pretrained(ref)``; without torchvision, video sub-processors are left out.

    Video processors need torchvision; image-only work (calibration, image benchmarks) does not, so
    the processor is then assembled from its tokenizer and image processor with ``video_processor=None``.
    """
    import inspect
    import json
    from pathlib import Path

    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.utils import cached_file

    config_file = cached_file(ref, "processor_config.json", _raise_exceptions_for_missing_entries=False)
    config = json.loads(Path(config_file).read_text()) if config_file else {}
    cls = getattr(transformers, config.get("processor_class", ""), None)
    needs_video = cls is not None and "video_processor" in inspect.signature(cls.__init__).parameters
    if torchvision_available() or not needs_video:
        with processor_type_checks_tolerate_none():
            return AutoProcessor.from_pretrained(ref)
    kwargs = {k: v for k, v in config.items() if k in inspect.signature(cls.__init__).parameters}
    for sub in ("image_processor", "tokenizer", "video_processor", "chat_template"):
        kwargs.pop(sub, None)
    template_file = cached_file(ref, "chat_template.jinja", _raise_exceptions_for_missing_entries=False)
    template = Path(template_file).read_text() if template_file else None
    with processor_type_checks_tolerate_none():
        return cls(
            image_processor=AutoImageProcessor.from_pretrained(ref),
            tokenizer=AutoTokenizer.from_pretrained(ref),
            video_processor=None,
            chat_template=template,
            **kwargs,
        )


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword by which ``model``'s forward takes a KV cache: ``cache`` from transformers 5.25 on,
    ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(output):  # noqa: ANN001, ANN201
    """The KV cache a forward with ``use_cache=True`` returned, under either name."""
    return output["cache" if "cache" in output else "past_key_values"]


def forget_rope_deltas(model: torch.nn.Module) -> None:
    """Clear the M-RoPE position offsets a Qwen-VL model keeps from its last forward. A forward that
    continues from a cache adds them to its positions, and a text-only prefill does not renew them, so
    without this a text request scored from a cache after an image request is shifted by the image's
    offset."""
    for module in model.modules():
        if getattr(module, "rope_deltas", None) is not None:
            module.rope_deltas = None
