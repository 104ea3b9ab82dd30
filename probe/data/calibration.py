"""Calibration sets: image + conversation samples, validated and turned into model inputs.

Sources (see :class:`CalibrationSpec`):

- ``json``: a JSON list or JSONL file of LLaVA-style records
  ``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}``
  with images relative to ``image_root``. This is the layout of LLaVA-NeXT-Data, the paper's source;
  ``subset`` keeps the records whose ``data_source`` field (or, lacking one, image path) contains the
  given text, e.g. ``sharegpt4v`` for the slice the paper drew from.
- ``hf``: a Hugging Face ``datasets`` dataset (name or local folder) with an image column and a
  conversations column in the same format.
- ``bundled``: real images shipped by installed packages (scikit-image's photographs with the
  descriptions from their loaders, scikit-learn's handwritten digits with their labels).

Every problem (missing or unreadable image, a human turn without ``<image>``, too few samples, a
sample with no visual tokens after processing) is a :class:`CalibrationError` naming the sample,
raised before any model work.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from probe.data.samples import CalibrationError, ConversationSample

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class CalibrationSpec:
    """Where calibration samples come from and how many to draw."""

    source: Literal["bundled", "json", "hf"] = "bundled"
    path: str | None = None  # JSON/JSONL file, or dataset name / folder for ``hf``
    image_root: str | None = None
    subset: str | None = None
    split: str = "train"
    nsamples: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in ("bundled", "json", "hf"):
            raise CalibrationError(f"unknown calibration source {self.source!r}; use bundled, json or hf")
        if self.source != "bundled" and not self.path:
            raise CalibrationError(f"calibration source {self.source!r} needs a path")
        if self.nsamples < 1:
            raise CalibrationError("nsamples must be at least 1")

    @classmethod
    def parse(cls, text: str, **kwargs: Any) -> CalibrationSpec:
        """``bundled``, ``hf:NAME``, or a path to a ``.json`` / ``.jsonl`` file."""
        if text == "bundled":
            return cls(source="bundled", **kwargs)
        if text.startswith("hf:"):
            return cls(source="hf", path=text[3:], **kwargs)
        return cls(source="json", path=text, **kwargs)


def _file_loader(path: Path) -> Callable[[], Image.Image]:
    return lambda: Image.open(path)


def _check_conversations(sample_id: str, conversations: Any) -> list[dict[str, str]]:
    """``conversations`` as a list of turns ``{"from": str, "value": str}``, or a :class:`CalibrationError`."""
    if not isinstance(conversations, list):
        raise CalibrationError(f"sample {sample_id!r}: 'conversations' should be a list of turns, not a "
                               f"{type(conversations).__name__}")
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise CalibrationError(f"sample {sample_id!r}: turn {i} should be a mapping with 'from' and 'value', "
                                   f"not a {type(turn).__name__}")
        for key in ("from", "value"):
            if not isinstance(turn.get(key), str):
                raise CalibrationError(f"sample {sample_id!r}: turn {i}'s {key!r} should be a string, got "
                                       f"{turn.get(key)!r:.40}")
    return conversations


def _record_sample(record: Any, index: int, image_root: Path | None, origin: str) -> ConversationSample:
    if not isinstance(record, dict):
        raise CalibrationError(f"{origin}: record {index} should be a mapping with 'image' and 'conversations', "
                               f"not a {type(record).__name__} ({record!r:.40})")
    sample_id = str(record.get("id", f"{origin}#{index}"))
    if "conversations" not in record:
        raise CalibrationError(f"sample {sample_id!r} has no 'conversations'")
    conversations = _check_conversations(sample_id, record["conversations"])
    image = record.get("image")
    loader: Callable[[], Image.Image] | None
    if isinstance(image, Image.Image):
        loader = lambda img=image: img  # noqa: E731
    elif isinstance(image, str):
        path = Path(image) if image_root is None else image_root / image
        loader = _file_loader(path)
    else:
        loader = None
    source = str(record.get("data_source", image if isinstance(image, str) else ""))
    return ConversationSample(sample_id, list(conversations), loader, source)


def read_json_records(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON list or a JSONL file."""
    if not path.is_file():
        raise CalibrationError(f"calibration file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON") from None
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, list):
        raise CalibrationError(f"{path}: expected a list of records")
    return data


def load_samples(spec: CalibrationSpec) -> list[ConversationSample]:
    """Every sample of the source (before drawing)."""
    if spec.source == "bundled":
        from probe.data.bundled import bundled_samples

        samples = bundled_samples()
    elif spec.source == "json":
        path = Path(spec.path)
        root = Path(spec.image_root) if spec.image_root else path.parent
        if not root.is_dir():
            raise CalibrationError(f"image folder not found: {root}")
        samples = [_record_sample(r, i, root, path.name) for i, r in enumerate(read_json_records(path))]
    else:
        try:
            import datasets
        except ImportError as exc:
            raise CalibrationError("the 'hf' calibration source needs the `datasets` package") from exc
        ds = _load_dataset(datasets, spec.path)
        if isinstance(ds, datasets.DatasetDict):
            if spec.split not in ds:
                raise CalibrationError(f"dataset {spec.path!r} has no split {spec.split!r}; has {list(ds)}")
            ds = ds[spec.split]
        samples = [_record_sample(dict(r), i, None, spec.path) for i, r in enumerate(ds)]
    if spec.subset:
        samples = [s for s in samples if spec.subset.lower() in s.source.lower()]
    return samples


def _load_dataset(datasets: Any, name: str) -> Any:
    """A saved dataset folder (``save_to_disk``) or a dataset the ``datasets`` package can load by name."""
    if Path(name).is_dir():
        try:
            return datasets.load_from_disk(name)
        except FileNotFoundError:
            raise CalibrationError(f"hf:{name} is a folder but not a dataset saved with save_to_disk "
                                   "(no dataset_info.json / state.json)") from None
    try:
        return datasets.load_dataset(name)
    except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
        # offline, an unknown name, or a name the hub does not provide all end here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CalibrationError(f"hf:{name}: the dataset cannot be loaded ({reason:.200})") from None


def draw(samples: Sequence[ConversationSample], n: int, seed: int) -> list[ConversationSample]:
    """``n`` samples drawn without replacement with a seeded generator."""
    if len(samples) < n:
        raise CalibrationError(f"asked for {n} calibration samples but the source has only {len(samples)}")
    return random.Random(seed).sample(list(samples), n)


def to_messages(sample: ConversationSample) -> list[dict[str, Any]]:
    """LLaVA-format turns as chat-template messages, the image placed where ``<image>`` stood."""
    roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
    messages = []
    for turn in sample.conversations:
        role = roles.get(turn.get("from", ""))
        if role is None:
            raise CalibrationError(f"sample {sample.sample_id!r}: unknown speaker {turn.get('from')!r}")
        value = turn.get("value", "")
        content: list[dict[str, str]] = []
        parts = value.split(IMAGE_PLACEHOLDER)
        for i, part in enumerate(parts):
            if i > 0:
                content.append({"type": "image"})
            if part.strip():
                content.append({"type": "text", "text": part.strip()})
        messages.append({"role": role, "content": content})
    return messages


def validate(samples: Sequence[ConversationSample]) -> list[Image.Image]:
    """Check every sample and load its image; the first problem raises, naming the sample."""
    images = []
    for s in samples:
        human = [t for t in s.conversations if t.get("from") in ("human", "user")]
        if not human:
            raise CalibrationError(f"sample {s.sample_id!r} has no human turn")
        count = sum(t.get("value", "").count(IMAGE_PLACEHOLDER) for t in human)
        if count != 1:
            raise CalibrationError(
                f"sample {s.sample_id!r}: the human turns must hold exactly one {IMAGE_PLACEHOLDER!r}, found {count}"
            )
        images.append(s.load_image())
    return images


@dataclass
class CalibrationItem:
    """A calibration sample ready for the model."""

    sample_id: str
    inputs: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class SelectedSamples:
    """Drawn and validated samples with their loaded images."""

    samples: list[ConversationSample]
    images: list[Image.Image]


def select(spec: CalibrationSpec) -> SelectedSamples:
    """Load, draw and validate a calibration set; needs no model, so it runs before one is loaded."""
    chosen = draw(load_samples(spec), spec.nsamples, spec.seed)
    return SelectedSamples(chosen, validate(chosen))


def prepare(
    spec: CalibrationSpec | SelectedSamples, adapter: Any, processor: Any, config: Any
) -> list[CalibrationItem]:
    """Process a (selected) calibration set into model inputs; no model is run."""
    selected = select(spec) if isinstance(spec, CalibrationSpec) else spec
    chosen, images = selected.samples, selected.images
    items = []
    text_only = getattr(adapter, "text_only", False)  # a causal language model calibrates on the samples' text
    for sample, image in zip(chosen, images):
        inputs = adapter.build_inputs(processor, to_messages(sample), [] if text_only else [image])
        n_visual = int(adapter.visual_mask(inputs["input_ids"][0], config).sum())
        if n_visual == 0 and not text_only:
            raise CalibrationError(f"sample {sample.sample_id!r} has no visual tokens after processing")
        n_tokens = int(inputs["input_ids"].shape[1])
        items.append(CalibrationItem(sample.sample_id, inputs, {"n_tokens": n_tokens, "n_visual": n_visual}))
    return items
