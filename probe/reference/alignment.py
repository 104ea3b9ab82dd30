"""Embedding alignment: a warm start for a reference projector that needs no pass through the decoder.

Each visual token the projector makes is pulled towards the language model's input embedding of the
item's answer (the mean over the answer's tokens): cosine distance plus the squared difference of
norms. A projector aligned this way already places an image near the words that name it, so the
decoder-loss training that follows (``probe.reference.train``) starts from tokens the language model
can read, and needs far fewer steps through a large decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from probe.core.progress import progress_bar
from probe.reference.build import ReferenceModelError


def answer_embeddings(answers: list[str], tokenizer, embedding: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """(len(answers), hidden): the mean of ``embedding``'s rows over each answer's tokens (no special
    tokens), in float32."""
    rows = []
    for answer in answers:
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ReferenceModelError(f"answer {answer!r} has no tokens to align an image with")
        rows.append(embedding[ids].float().mean(0))
    return torch.stack(rows)


def alignment_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over visual tokens of ``1 - cos(o, t) + (|o| - |t|)^2``; ``outputs`` (batch, tokens, hidden),
    ``targets`` (batch, hidden), one target for all tokens of an image."""
    expanded = targets[:, None, :].expand_as(outputs)
    cosine = F.cosine_similarity(outputs, expanded, dim=-1)
    norms = outputs.norm(dim=-1) - expanded.norm(dim=-1)
    return (1 - cosine + norms**2).mean()


def align_projector(
    projector: torch.nn.Module,
    features: torch.Tensor,
    targets: torch.Tensor,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    show_progress: bool = True,
) -> list[float]:
    """Train ``projector`` in place so that each image's visual tokens approach its target embedding.

    ``features`` (images, tokens, vision features) and ``targets`` (images, hidden); AdamW, batches
    drawn in an order fixed by ``seed``. Returns the mean loss of each epoch."""
    if len(features) != len(targets):
        raise ReferenceModelError(f"{len(features)} images but {len(targets)} target embeddings")
    optimizer = torch.optim.AdamW(projector.parameters(), lr=lr, weight_decay=0.01)
    order = torch.Generator().manual_seed(seed)
    epoch_losses = []
    with progress_bar("alignment", epochs, show_progress) as bar:
        for _ in range(epochs):
            total = 0.0
            for batch in torch.randperm(len(features), generator=order).split(batch_size):
                loss = alignment_loss(projector(features[batch]), targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            epoch_losses.append(total / len(features))
            bar.advance()
    return epoch_losses
