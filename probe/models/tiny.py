"""Tiny randomly initialised LVLMs of the real transformers classes, built offline from configs.

They exercise exactly the code paths of the full-size models (same classes, same processors) at a
size that runs in milliseconds on a CPU. Used by the tests, the notebooks and quick demos.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

WORDS = (
    "the a an is are what which of in on to and this that image picture photo color shape "
    "answer question describe shows there how many red green blue cat dog car tree sky yes no "
    "one two three four five left right top bottom small large user assistant system"
).split()

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : "
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ image_placeholder }}{% else %}{{ c['text'] }}{% endif %} "
    "{% endfor %}{% endif %} ;"
    "{% endfor %}{% if add_generation_prompt %} assistant :{% endif %}"
)

TEXT_BASE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def word_tokenizer(specials: dict[str, int], vocab_size: int, **attrs: str) -> tf.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer whose special tokens sit at the given ids."""
    vocab: dict[str, int] = {"<unk>": 0, "<pad>": 1, "<s>": 2, "</s>": 3, ";": 4, ":": 5}
    for idx in specials.values():
        if idx in vocab.values():
            raise ValueError(f"special token id {idx} collides with the tokenizer's own tokens")
    taken = set(specials.values())
    free = (i for i in range(len(vocab), vocab_size + len(WORDS)) if i not in taken)
    for word in WORDS:  # the words take the ids the special tokens leave
        vocab.setdefault(word, next(free))
    vocab.update(specials)
    if max(vocab.values()) >= vocab_size:
        raise ValueError("vocab_size too small for the special token ids")
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = tf.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens=attrs,
    )
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    return tok


@dataclass
class TinyLVLM:
    """A tiny model, its processor (with a chat template) and its family."""

    model: tf.PreTrainedModel
    processor: tf.ProcessorMixin
    family: str


def text_config(cls: type, vocab_size: int, **extra) -> tf.PretrainedConfig:
    return cls(vocab_size=vocab_size, **{**TEXT_BASE, **extra})


def tiny_lvlm(family: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyLVLM:
    """Build a tiny randomly initialised model of ``family`` with a working processor (the builder lives
    beside the family's adapter, :meth:`probe.models.base.Adapter.tiny_model`)."""
    from probe.models import check_tiny_family, get_adapter

    check_tiny_family(family)
    adapter = get_adapter(family)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny = adapter.tiny_model(family)
    tiny.model.eval().to(dtype)
    tiny.processor.chat_template = tiny.processor.chat_template.replace(
        "{{ image_placeholder }}", adapter.tiny_image_placeholder
    )
    return tiny
