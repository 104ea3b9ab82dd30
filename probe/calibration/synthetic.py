"""Models and calibration samples at a paper's shapes, with random weights, for timing and memory work.

Time and memory of pruning depend on the shapes, not on the weights' values. The paper prunes
LLaVA-NeXT 8B (``llava-hf/llama3-llava-next-8b-hf``: a Llama-3-8B decoder and a CLIP-L/336 tower) with
128 calibration samples of about 2,000-2,900 visual and 100-300 text tokens. :func:`llava_next_8b_config`
is that configuration; :func:`language_side` builds its decoder with random weights and a chosen number
of blocks (the vision tower never runs in pruning: captured samples enter at block 0), and
:func:`synthetic_samples` captures samples of the paper's lengths through it, with their visual positions
where LLaVA's prompt puts the image (after a short system prefix).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaNextConfig

from probe.calibration.capture import CapturedSample, capture
from probe.models import get_adapter
from probe.models.base import Adapter

PAPER_VISUAL_TOKENS = (2000, 2900)
PAPER_TEXT_TOKENS = (100, 300)
PAPER_SAMPLES = 128
PAPER_BLOCKS = 32
PROMPT_PREFIX_TOKENS = 5  # tokens before the image in the chat template (begin of text, header, role)


def llama3_8b_text_config(blocks: int = PAPER_BLOCKS) -> LlamaConfig:
    """Llama-3-8B's decoder: hidden 4,096, intermediate 14,336, 32 heads with 8 KV heads, vocabulary 128,256."""
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=blocks, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                       rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False)


def llava_next_8b_config(blocks: int = PAPER_BLOCKS) -> LlavaNextConfig:
    """``llava-hf/llama3-llava-next-8b-hf``'s configuration (CLIP-L/336 tower, anyres grids up to 672 x 672)."""
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    return LlavaNextConfig(vision_config=vision, text_config=llama3_8b_text_config(blocks), image_token_index=128256,
                           image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
                           vision_feature_layer=-2, vision_feature_select_strategy="default")


def meta_model(config: LlavaNextConfig) -> torch.nn.Module:
    """The whole LVLM of ``config`` on the ``meta`` device: every parameter's shape, no storage."""
    from transformers import LlavaNextForConditionalGeneration

    with torch.device("meta"):
        return LlavaNextForConditionalGeneration(config)


@dataclass(frozen=True)
class SampleShape:
    """One calibration sample's token counts."""

    n_visual: int
    n_text: int

    @property
    def n_tokens(self) -> int:
        return self.n_visual + self.n_text


def paper_sample_shapes(n: int, seed: int = 0) -> list[SampleShape]:
    """``n`` token counts drawn uniformly from the paper's ranges (2,000-2,900 visual, 100-300 text)."""
    rng = random.Random(seed)
    return [SampleShape(rng.randint(*PAPER_VISUAL_TOKENS), rng.randint(*PAPER_TEXT_TOKENS)) for _ in range(n)]


def language_side(text_config: LlamaConfig, dtype: torch.dtype = torch.float32, seed: int = 0, device: str = "cpu"
                  ) -> tuple[torch.nn.Module, Adapter]:
    """The decoder of ``text_config`` with random weights (its output head shares the embedding, which
    pruning never runs), built and initialised on ``device`` in ``dtype``, in eval mode, and its adapter."""
    torch.manual_seed(seed)
    config = text_config.__class__(**{**text_config.to_dict(), "tie_word_embeddings": True})
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return model, get_adapter(model)


@torch.no_grad()
def synthetic_samples(model: torch.nn.Module, adapter: Adapter, shapes: list[SampleShape], seed: int = 0,
                      store_device: str = "cpu") -> list[CapturedSample]:
    """Samples of the given token counts captured through ``model``: random token ids, the visual tokens
    at positions ``PROMPT_PREFIX_TOKENS`` onwards, the text after them."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    samples = []
    for index, shape in enumerate(shapes):
        ids = torch.randint(0, vocab, (1, shape.n_tokens), generator=generator)
        sample = capture(model, adapter, {"input_ids": ids}, f"synthetic-{index}", store_device)
        prefix = min(PROMPT_PREFIX_TOKENS, shape.n_text)
        mask = torch.zeros(shape.n_tokens, dtype=torch.bool)
        mask[prefix:prefix + shape.n_visual] = True
        sample.visual_mask = mask.to(store_device)
        sample.meta.update({"n_tokens": shape.n_tokens, "n_visual": shape.n_visual})
        samples.append(sample)
    return samples
