"""Train the reference model's projector on the offline tasks' train split, both networks frozen.

    python -m probe.reference.train [--epochs 2] [--batch-size 8] [--lr 2e-3] [--seed 0]

The vision tower runs once per image (its features are cached); only the projector gets gradients,
and the loss covers the answer tokens only. Deterministic for a seed on a given machine. Writes
``probe/reference/projector.safetensors``.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from probe.data.offline import VQAItem, projector_training_items
from probe.progress import progress_bar
from probe.reference.build import PROJECTOR_FILE, build_reference


@dataclass
class Example:
    input_ids: torch.Tensor  # (seq,)
    answer_start: int  # first position of the answer tokens
    features: torch.Tensor  # (49, 1280) vision features


def conversation(item: VQAItem, with_answer: bool) -> list[dict]:
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.question}]}]
    if with_answer:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": item.answer}]})
    return turns


@torch.no_grad()
def prepare_examples(
    model, processor, items: list[VQAItem], batch_size: int = 32, show_progress: bool = True  # noqa: ANN001
) -> list[Example]:
    """Tokenise each conversation and cache its vision features."""
    examples = []
    with progress_bar("vision features", len(items), show_progress) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            prompts = [processor.apply_chat_template(conversation(i, False), add_generation_prompt=True) for i in chunk]
            fulls = [processor.apply_chat_template(conversation(i, True)) for i in chunk]
            images = [i.image() for i in chunk]
            batch = processor(text=fulls, images=images, return_tensors="pt", padding=True)
            grid = model.model.vision_tower(batch["pixel_values"]).last_hidden_state  # (batch, 1280, 7, 7)
            features = grid.flatten(2).transpose(1, 2)
            for k, (prompt, full) in enumerate(zip(prompts, fulls)):
                ids = processor(text=[full], images=[images[k]], return_tensors="pt")["input_ids"][0]
                prefix = processor(text=[prompt], images=[images[k]], return_tensors="pt")["input_ids"][0]
                if not torch.equal(ids[: len(prefix)], prefix):
                    raise RuntimeError("the chat template's prompt is not a prefix of the full conversation")
                examples.append(Example(ids, len(prefix), features[k].clone()))
            bar.advance(len(chunk))
    return examples


def batch_loss(model, examples: list[Example], image_token_id: int, pad_id: int) -> torch.Tensor:  # noqa: ANN001
    """Mean cross-entropy of the answer tokens, images entering through the projector."""
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = e.input_ids
        mask[row, : len(e.input_ids)] = 1
    language_model = model.model.language_model
    embeds = language_model.embed_tokens(ids)
    projected = model.model.multi_modal_projector(torch.stack([e.features for e in examples]))
    image_positions = ids == image_token_id
    embeds = embeds.masked_scatter(image_positions.unsqueeze(-1), projected.to(embeds.dtype))
    hidden = language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    rows, cols, targets = [], [], []
    for row, e in enumerate(examples):
        for t in range(e.answer_start, len(e.input_ids)):
            rows.append(row)
            cols.append(t - 1)
            targets.append(int(e.input_ids[t]))
    logits = model.lm_head(hidden[rows, cols])
    return F.cross_entropy(logits, torch.tensor(targets))


def train_projector(
    model,  # noqa: ANN001
    processor,  # noqa: ANN001
    items: list[VQAItem],
    epochs: int = 2,
    batch_size: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    show_progress: bool = True,
) -> dict:
    """Train ``model``'s projector in place from a random start drawn with ``seed``; returns a summary."""
    projector = model.model.multi_modal_projector
    torch.manual_seed(seed)
    for layer in (projector.linear_1, projector.linear_2):
        layer.reset_parameters()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in projector.parameters():
        p.requires_grad_(True)

    examples = prepare_examples(model, processor, items, show_progress=show_progress)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=lr, weight_decay=0.0)
    steps = epochs * ((len(examples) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    image_token_id = model.config.image_token_index
    pad_id = processor.tokenizer.pad_token_id
    order_rng = random.Random(seed)
    started = time.perf_counter()
    losses = []
    model.train()
    with progress_bar("projector", steps, show_progress) as bar:
        for _ in range(epochs):
            order = list(range(len(examples)))
            order_rng.shuffle(order)
            for start in range(0, len(order), batch_size):
                chosen = [examples[i] for i in order[start : start + batch_size]]
                loss = batch_loss(model, chosen, image_token_id, pad_id)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.advance()
    model.eval()
    for p in projector.parameters():
        p.requires_grad_(False)
    return {"examples": len(examples), "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
            "steps": steps, "seconds": time.perf_counter() - started, "first_loss": losses[0],
            "last_loss": sum(losses[-10:]) / min(10, len(losses))}


def train(epochs: int = 2, batch_size: int = 8, lr: float = 2e-3, seed: int = 0, out: Path = PROJECTOR_FILE) -> dict:
    """Build the reference model, train its projector on the offline train split, save it to ``out``."""
    model, processor = build_reference(use_shipped_projector=False, seed=seed)
    summary = train_projector(model, processor, projector_training_items(), epochs, batch_size, lr, seed)
    state = {k: v.detach().contiguous() for k, v in model.model.multi_modal_projector.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=PROJECTOR_FILE)
    args = parser.parse_args()
    summary = train(args.epochs, args.batch_size, args.lr, args.seed, args.out)
    print(summary)


if __name__ == "__main__":
    main()
