"""Tiny random models of any transformers image-text-to-text architecture, from its config class alone.

:func:`tiny_config` takes the config class's defaults (a full-size model's) and shrinks every width,
depth and head count, in the config and each of its sub-configs, keeping what ties them together
(indices of special layers mapped into the shorter stack, per-layer type lists cut to it, rotary
sections scaled to the smaller head). :func:`tiny_processor` assembles the architecture's own
processor around a word-level tokenizer whose special tokens sit at the ids the config names. Families
with a file of their own keep their hand-made tiny models (:func:`probe.models.tiny.tiny_lvlm`).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import transformers as tf
from transformers import CONFIG_MAPPING

from probe.models.tiny import CHAT_TEMPLATE, WORDS, word_tokenizer

LAYERS = 4  # blocks of every stack: room for one of each kind in a stack that alternates
WIDTHS = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
          "head_dim": 8, "embed_dim": 32, "projection_dim": 32, "out_hidden_size": 32, "d_model": 32,
          "num_heads": 4, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 16,
          "vision_output_dim": 32, "text_hidden_size": 32, "mm_hidden_size": 32, "projector_hidden_size": 32,
          "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
          # multi-head latent attention: the rotary part of a head is its head_dim
          "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "qk_head_dim": 16, "v_head_dim": 8, "q_lora_rank": 16,
          "kv_lora_rank": 16, "n_group": 1, "topk_group": 1}
DEPTHS = ("num_hidden_layers", "num_layers", "depth", "encoder_layers", "decoder_layers")
INDEX_LISTS = ("cross_attention_layers", "deepstack_visual_indexes", "fullatt_block_indexes")


def _plain(config: Any, name: str) -> Any:
    """``config.name`` where it is one value for the whole model (None otherwise)."""
    try:
        return getattr(config, name, None)
    except Exception:  # noqa: BLE001 (per-layer configs refuse global reads with their own error type)
        return None


def _shrink(config: Any, seen: set[int]) -> None:
    if id(config) in seen:
        return
    seen.add(id(config))
    depth_before = {name: _plain(config, name) for name in DEPTHS}
    heads = _plain(config, "num_attention_heads")
    one_per_head = isinstance(heads, int) and _plain(config, "num_key_value_heads") == heads
    for name, value in WIDTHS.items():
        current = _plain(config, name)
        if isinstance(current, int) and not isinstance(current, bool):
            setattr(config, name, min(current, value) if name.startswith("num_") else value)
    if one_per_head:  # a key-value head per query head (no grouping) stays so: some attention needs it
        config.num_key_value_heads = config.num_attention_heads
    for name, before in depth_before.items():
        if isinstance(before, int) and not isinstance(before, bool) and before > 0:
            setattr(config, name, min(before, LAYERS))
    layers = next((v for v in (_plain(config, n) for n in DEPTHS) if isinstance(v, int)), None)
    if layers:
        for name in INDEX_LISTS:
            value = _plain(config, name)
            if isinstance(value, list) and value:
                setattr(config, name, sorted({i % layers for i in value})[:max(1, layers - 1)])
        types = _plain(config, "layer_types")
        if isinstance(types, list) and len(types) > layers:
            config.layer_types = _representative(types, layers)
    _scale_rope_sections(config)
    for name in list(vars(config)):
        value = _plain(config, name)
        if isinstance(value, tf.PretrainedConfig):
            _shrink(value, seen)


def _representative(types: list[str], layers: int) -> list[str]:
    """``layers`` entries of a per-layer type list holding each type it has (the stack stays mixed)."""
    out = list(types[:layers])
    missing = [kind for kind in dict.fromkeys(types) if kind not in out][:layers - 1]
    if missing:
        out[len(out) - len(missing):] = missing
    return out


def _scale_rope_sections(config: Any) -> None:
    """Multimodal rotary sections (``mrope_section``) summing to half the smaller head's rotary dimension."""
    head = _plain(config, "head_dim") or (
        (_plain(config, "hidden_size") or 0) // max(1, _plain(config, "num_attention_heads") or 1))
    for name in ("rope_parameters", "rope_scaling"):
        rope = _plain(config, name)
        if isinstance(rope, dict) and isinstance(rope.get("mrope_section"), list) and head:
            factor = rope.get("partial_rotary_factor") or _plain(config, "partial_rotary_factor") or 1.0
            sections, half = rope["mrope_section"], int(head * factor) // 2
            total = sum(sections)
            scaled = [max(1, s * half // total) for s in sections]
            scaled[0] += half - sum(scaled)
            rope["mrope_section"] = scaled


def tiny_config(model_type: str) -> Any:
    """The config class's defaults for ``model_type``, shrunk (see the module docstring)."""
    return shrink_config(CONFIG_MAPPING[model_type]())


def shrink_config(config: Any) -> Any:
    """``config`` (any model's, e.g. a hub model's own) shrunk in place to a tiny model of the same class."""
    _shrink(config, set())
    _fit_vocab(config)
    _three_dimensional_rope(config)
    _feature_layers_in_range(config)
    _patches_divide_evenly(config)
    return config


def _patches_divide_evenly(config: Any) -> None:
    """An image side whose patch grid a pixel-shuffle projector (``downsample_factor``) can fold: the largest
    side at most the config's that is a multiple of patch x factor."""
    vision = _plain(config, "vision_config")
    side, patch = _plain(vision, "image_size"), _plain(vision, "patch_size")
    factor = _plain(config, "downsample_factor")
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (side, patch, factor)):
        step = patch * factor
        if side % step:
            vision.image_size = max(step, side // step * step)


def _feature_layers_in_range(config: Any) -> None:
    """Vision feature layer indices (into the tower's ``depth + 1`` hidden states) kept in the shorter tower."""
    vision = _plain(config, "vision_config")
    depth = next((v for v in (_plain(vision, n) for n in DEPTHS) if isinstance(v, int)), None)
    if depth is None:
        return
    states = depth + 1

    def inside(index: int) -> int:
        return -((-index - 1) % states) - 1 if index < 0 else index % states

    for name in ("vision_feature_layers", "vision_feature_layer"):
        value = _plain(config, name)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(config, name, inside(value))
        elif isinstance(value, (list, tuple)) and all(isinstance(i, int) for i in value):
            setattr(config, name, type(value)(inside(i) for i in value))


def _three_dimensional_rope(config: Any) -> None:
    """Rotary sections (time, height, width) for a text model whose vision tower cuts video into time steps
    (``temporal_patch_size``), where the config leaves them to the modeling code's full-size default."""
    if _plain(_plain(config, "vision_config"), "temporal_patch_size") is None:
        return
    text = config.get_text_config()
    rope = _plain(text, "rope_parameters")
    head = _plain(text, "head_dim") or text.hidden_size // text.num_attention_heads
    if isinstance(rope, dict) and "mrope_section" not in rope:
        half = int(head * (rope.get("partial_rotary_factor") or 1.0)) // 2
        rope["mrope_section"] = [half - 2 * (half // 4), half // 4, half // 4]


def _fit_vocab(config: Any) -> None:
    """A vocabulary holding every special token id the config names (full-size models resize theirs)."""
    top = max(token_ids(config).values(), default=0) + 1
    for holder in (config, config.get_text_config()):
        vocab = _plain(holder, "vocab_size")
        if isinstance(vocab, int) and vocab < top:
            holder.vocab_size = top


def token_ids(config: Any) -> dict[str, int]:
    """The special tokens a config names, by stem: ``image_token_id`` / ``image_token_index`` -> ``image``."""
    found = {}
    for holder in (config, _plain(config, "text_config")):
        if holder is None:
            continue
        for name in dir(holder):
            if name.endswith(("_token_id", "_token_index")) and not name.startswith(("pad", "bos", "eos")):
                value = _plain(holder, name)
                if isinstance(value, int) and not isinstance(value, bool):
                    found.setdefault(name.rsplit("_token", 1)[0], value)
    return found


def _token_strings(processor: Any) -> dict[str, str]:
    """The special strings a processor writes, by stem: ``image_token`` -> ``image``."""
    strings = {}
    for name in dir(processor):
        if name.endswith("_token") and not name.startswith("_"):
            value = _plain(processor, name)
            if isinstance(value, str) and value:
                strings[name.removesuffix("_token")] = value
    return strings


def _image_processor(model_type: str, config: Any) -> Any:
    """The architecture's PIL image processor, resizing to the vision tower's image size."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    if names is None:  # an architecture that shares its processor class with a sibling (a MoE variant) uses its images
        own = PROCESSOR_MAPPING_NAMES.get(model_type)
        names = next((IMAGE_PROCESSOR_MAPPING_NAMES[t] for t, p in PROCESSOR_MAPPING_NAMES.items()
                      if p == own and own and t in IMAGE_PROCESSOR_MAPPING_NAMES), {})
    name = names.get("pil") if isinstance(names, dict) else None
    if name is None:
        raise NeedsTorchvisionError("its image processor needs torchvision (no PIL one), not installed here")
    cls = getattr(tf, name)
    default = cls()
    vision = _plain(config, "vision_config")
    side = _plain(vision, "image_size")
    side = side[0] if isinstance(side, (list, tuple)) else side
    sizes: dict[str, Any] = {}
    for key in ("size", "crop_size") if isinstance(side, int) else ():
        value = getattr(default, key, None)
        if getattr(value, "longest_edge", None) is not None or getattr(value, "max_pixels", None) is not None:
            continue  # a native-resolution processor: its images need no fixed side
        if getattr(value, "height", None) is not None:
            sizes[key] = {"height": side, "width": side}
        elif getattr(value, "shortest_edge", None) is not None:
            sizes[key] = {"shortest_edge": side}
    for key, source in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"),
                        ("temporal_patch_size", "temporal_patch_size")):
        want = _plain(vision, source)
        if isinstance(want, int) and isinstance(getattr(default, key, None), int) and getattr(default, key) != want:
            sizes[key] = want  # the processor cuts images as the tower reads them
    processor = cls(**sizes) if sizes else default
    if hasattr(processor, "image_seq_length") and processor.image_seq_length is None:
        patch = _plain(vision, "patch_size")
        tokens = _plain(config.get_text_config(), "num_image_tokens") or _plain(config, "num_image_tokens")
        if not tokens and isinstance(side, int) and isinstance(patch, int):
            tokens = (side // patch) ** 2  # one token per patch of the tower
        processor.image_seq_length = tokens
    return processor


def _processor_settings(cls: type, config: Any) -> dict[str, Any]:
    """The processor's settings that must agree with the model's config (patch size, feature selection,
    image sequence length), where its ``__init__`` takes them; no video processor."""
    taken = inspect.signature(cls.__init__).parameters
    vision = _plain(config, "vision_config")
    candidates = {"video_processor": None, "patch_size": _plain(vision, "patch_size"),
                  "vision_feature_select_strategy": _plain(config, "vision_feature_select_strategy"),
                  "image_seq_length": _plain(config, "image_seq_length") or _plain(config, "mm_tokens_per_image")}
    settings = {k: v for k, v in candidates.items() if k in taken and (v is not None or k == "video_processor")}
    for name in taken:  # audio and other non-image parts: none, for image work
        if name.endswith(("_extractor", "_processor")) and name != "image_processor" and name not in settings:
            settings[name] = None
    if "num_additional_image_tokens" in taken and settings.get("vision_feature_select_strategy") == "default":
        settings["num_additional_image_tokens"] = 1  # a CLIP tower's CLS token, which "default" drops
    return settings


def _tokenizer(strings: dict[str, str], ids: dict[str, int], vocab: int) -> Any:
    """A word-level tokenizer with ``strings`` (by stem) as special tokens, each at the config's id for its
    stem or at a free one, and as ``<stem>_token`` attributes."""
    specials: dict[str, int] = {}
    taken = set(ids.values())
    free = (i for i in range(len(WORDS) + 10, vocab) if i not in taken)
    for stem, text in strings.items():
        if text not in specials:
            specials[text] = ids[stem] if stem in ids and ids[stem] not in specials.values() else next(free)
    return word_tokenizer(specials, vocab, **{f"{stem}_token": text for stem, text in strings.items()})


def _processor(cls: type, images: Any, tokenizer: Any, kwargs: dict[str, Any]) -> Any:
    from probe.models.compat import processor_type_checks_tolerate_none

    with processor_type_checks_tolerate_none():
        return cls(image_processor=images, tokenizer=tokenizer, **kwargs)


class TinyModelError(Exception):
    """Why a tiny model or processor of an architecture cannot be built here."""


class NeedsTorchvisionError(TinyModelError):
    """The architecture's processor needs torchvision, which is not installed here."""


class NoProcessorError(TinyModelError):
    """transformers names no processor for the architecture."""


def tiny_processor(model_type: str, config: Any) -> Any:
    """The architecture's own processor around a word-level tokenizer whose special tokens sit at the ids
    the config names, with a chat template that writes the processor's image token."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    cls = getattr(tf, name, None) if name else None
    if cls is None:
        raise NoProcessorError("transformers names no processor class for it")
    vocab = config.get_text_config().vocab_size
    ids = token_ids(config)
    kwargs = _processor_settings(cls, config)
    images = _image_processor(model_type, config)
    # first the config's tokens under plain names (processors that read them from the tokenizer take these),
    # then every string the processor writes, at the id the config gives its stem or at a free one
    strings = {stem: f"<{stem}>" for stem in ids}
    for _ in range(8):  # a processor that reads another special token from its tokenizer names it in its error
        try:
            first = _processor(cls, images, _tokenizer(strings, ids, vocab), kwargs)
            break
        except ImportError as exc:
            if "torchvision" not in str(exc).lower():
                raise
            raise NeedsTorchvisionError(f"{cls.__name__} needs torchvision, which is not installed here") from None
        except AttributeError as exc:
            wanted = re.search(r"has no attribute (\w+)_token\b", str(exc))
            if wanted is None or wanted.group(1) in strings:
                raise
            strings[wanted.group(1)] = f"<{wanted.group(1)}>"
    else:
        raise TinyModelError(f"its processor reads more special tokens from its tokenizer than {', '.join(strings)}")
    strings.update(_token_strings(first))
    processor = _processor(cls, images, _tokenizer(strings, ids, vocab), kwargs)
    if "image" not in strings:
        raise TinyModelError("its processor names no image token")
    processor.chat_template = CHAT_TEMPLATE.replace("{{ image_placeholder }}", strings["image"])
    return processor


def direct_processor(model: Any, config: Any, reason: str = "") -> Any:
    """A :class:`probe.models.direct.DirectProcessor` for ``model``: inputs built without its own processor,
    with a word-level tokenizer whose special tokens sit at the config's ids."""
    from probe.models.direct import DirectInputsError, DirectProcessor

    ids = token_ids(config)
    if "image" not in ids:
        raise TinyModelError("its config names no image token id")
    strings = {stem: f"<{stem}>" for stem in ids}
    tokenizer = _tokenizer(strings, ids, config.get_text_config().vocab_size)
    try:
        return DirectProcessor(model, tokenizer, strings["image"], reason)
    except DirectInputsError as exc:
        raise TinyModelError(str(exc)) from None
