"""Train a reference model's projector on offline tasks' train splits, both networks frozen.

    python -m probe.reference.train [--model reference]        # the model's own recipe (TrainingRecipe)
    python -m probe.reference.train --model reference-large --checkpoint runs/projector-large.pt
                                                               # resumable: run the same command after a stop

The vision tower runs once per image (its features are cached); only the projector gets gradients,
and the loss covers the answer tokens only. ``--align-epochs N`` first pulls the projector's tokens
towards the embeddings of the answers' words (``probe.reference.alignment``), a warm start that needs
no pass through the decoder. ``--dtype bfloat16`` runs the frozen language model in bfloat16 (the
projector and its optimizer stay float32), about twice as fast on CPUs with bfloat16 instructions.
``--checkpoint`` saves the training state after the alignment and every 10 steps, and resumes
from it. Flags left out take the model's recipe. Deterministic for a seed on a given machine.
Writes the spec's projector file (``probe/reference/projector.safetensors``, ``projector_large.safetensors``).
"""

from __future__ import annotations

import argparse
import io
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save as safetensors_bytes

from probe.core.manifest import write_bytes_atomic
from probe.core.names import REFERENCE_MODELS
from probe.core.progress import progress_bar
from probe.data.offline import TASK_BUILDERS, VQAItem
from probe.evaluation.task_files import task_data_available
from probe.models.loading import parse_dtype
from probe.reference import reference_spec
from probe.reference.alignment import align_projector, answer_embeddings
from probe.reference.build import ReferenceModelError, ReferenceSpec, build_reference


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
    return F.cross_entropy(logits.float(), torch.tensor(targets))


def _save_state(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def train_projector(
    model,  # noqa: ANN001
    processor,  # noqa: ANN001
    items: list[VQAItem],
    epochs: int = 2,
    batch_size: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    show_progress: bool = True,
    checkpoint: Path | None = None,
    save_every: int = 10,
    align_epochs: int = 0,
) -> dict:
    """Train ``model``'s projector in place from a random start drawn with ``seed``; returns a summary.

    With ``align_epochs``, the projector is first aligned to the answers' embeddings for that many
    epochs (``probe.reference.alignment``), then trained on the answer tokens' cross-entropy.

    With ``checkpoint``, the projector, optimizer, schedule and losses are saved there every
    ``save_every`` steps (atomically), and a run started again with the same arguments continues from
    the last save; the result equals an uninterrupted run's.
    """
    projector = model.model.multi_modal_projector
    torch.manual_seed(seed)
    for layer in (projector.linear_1, projector.linear_2):
        layer.reset_parameters()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in projector.parameters():
        p.requires_grad_(True)

    settings = {"examples": len(items), "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                "align_epochs": align_epochs}
    saved = None
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if saved is not None and saved["settings"] != settings:  # refused before the vision features are computed
        raise ReferenceModelError(f"{checkpoint} holds a run with other settings ({saved['settings']}); "
                                  "remove it or pass another --checkpoint")
    examples = prepare_examples(model, processor, items, show_progress=show_progress)
    alignment_losses: list[float] = []
    if align_epochs and saved is None:
        embedding = model.model.language_model.embed_tokens.weight.detach()
        targets = answer_embeddings([i.answer for i in items], processor.tokenizer, embedding)
        features = torch.stack([e.features for e in examples])
        alignment_losses = align_projector(projector, features, targets, align_epochs, seed=seed,
                                           show_progress=show_progress)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=lr, weight_decay=0.0)
    per_epoch = (len(examples) + batch_size - 1) // batch_size
    steps = epochs * per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses: list[float] = []
    seconds = 0.0
    if saved is not None:
        projector.load_state_dict(saved["projector"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        losses, seconds = saved["losses"], saved["seconds"]
        alignment_losses = saved["alignment_losses"]
    image_token_id = model.config.image_token_index
    pad_id = processor.tokenizer.pad_token_id
    order_rng = random.Random(seed)
    started = time.perf_counter() - seconds

    def save() -> None:
        _save_state(checkpoint, {
            "settings": settings, "projector": projector.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "losses": losses, "alignment_losses": alignment_losses,
            "seconds": time.perf_counter() - started})

    if checkpoint is not None and saved is None and align_epochs:
        save()  # a stop after this point does not redo the alignment
    model.train()
    with progress_bar("projector", steps, show_progress) as bar:
        bar.advance(len(losses))
        for epoch in range(epochs):
            order = list(range(len(examples)))
            order_rng.shuffle(order)  # drawn for every epoch, done or not, so a resumed run sees the same order
            for k, start in enumerate(range(0, len(order), batch_size)):
                if epoch * per_epoch + k < len(losses):
                    continue
                chosen = [examples[i] for i in order[start : start + batch_size]]
                loss = batch_loss(model, chosen, image_token_id, pad_id)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.advance()
                if checkpoint is not None and (len(losses) % save_every == 0 or len(losses) == steps):
                    save()
    model.eval()
    for p in projector.parameters():
        p.requires_grad_(False)
    summary = {**settings, "steps": steps, "seconds": time.perf_counter() - started, "first_loss": losses[0],
               "last_loss": sum(losses[-10:]) / min(10, len(losses))}
    if alignment_losses:
        summary["alignment_loss"] = [alignment_losses[0], alignment_losses[-1]]
    return summary


def training_items(spec: ReferenceSpec) -> list[VQAItem]:
    """The train splits of ``spec``'s training tasks that can be built here, in the spec's order."""
    tasks = [t for t in spec.training_tasks if task_data_available(t)]
    if not tasks:
        raise ReferenceModelError(f"none of {spec.name}'s training tasks ({', '.join(spec.training_tasks)}) can be "
                                  "built here: their source packages are missing (see docs/getting-started.md)")
    return [item for task in tasks for item in TASK_BUILDERS[task]("train")]


def train(
    spec: ReferenceSpec, epochs: int | None = None, batch_size: int = 8, lr: float | None = None, seed: int = 0,
    out: Path | None = None, dtype: torch.dtype | None = None, checkpoint: Path | None = None,
    align_epochs: int | None = None,
) -> dict:
    """Build ``spec``'s model, train its projector on the training tasks' train splits, save it to ``out``
    (default: the spec's projector file). Settings left as None take ``spec.recipe``'s."""
    recipe = spec.recipe
    epochs = recipe.epochs if epochs is None else epochs
    lr = recipe.lr if lr is None else lr
    dtype = parse_dtype(recipe.dtype) if dtype is None else dtype
    align_epochs = recipe.align_epochs if align_epochs is None else align_epochs
    items = training_items(spec)
    model, processor = build_reference(use_shipped_projector=False, seed=seed, spec=spec)
    model.model.language_model.to(dtype)
    model.lm_head.to(dtype)
    summary = train_projector(model, processor, items, epochs, batch_size, lr, seed, checkpoint=checkpoint,
                              align_epochs=align_epochs)
    state = {k: v.detach().float().contiguous() for k, v in model.model.multi_modal_projector.state_dict().items()}
    write_bytes_atomic(out or spec.projector_file, safetensors_bytes(state))
    return {**summary, "dtype": str(dtype).removeprefix("torch.")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference", choices=REFERENCE_MODELS)
    parser.add_argument("--epochs", type=int, default=None, help="decoder-loss epochs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate of the decoder-loss training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default=None, help="the frozen language model's dtype during training")
    parser.add_argument("--align-epochs", type=int, default=None, help="embedding-alignment epochs run first")
    parser.add_argument("--checkpoint", type=Path, default=None, help="training state file, saved and resumed")
    parser.add_argument("--out", type=Path, default=None, help="projector file (default: the model's shipped one)")
    args = parser.parse_args()
    summary = train(reference_spec(args.model), args.epochs, args.batch_size, args.lr, args.seed, args.out,
                    parse_dtype(args.dtype) if args.dtype else None, args.checkpoint, args.align_epochs)
    print(summary)


if __name__ == "__main__":
    main()
