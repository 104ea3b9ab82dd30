"""Embedding alignment, the projector's warm start: targets, loss and training checked by hand."""

import pytest
import torch

from probe.models.tiny import word_tokenizer
from probe.reference.alignment import align_projector, alignment_loss, answer_embeddings
from probe.reference.build import ReferenceModelError


def test_answer_embeddings_average_the_answer_tokens_rows():
    tokenizer = word_tokenizer({}, vocab_size=512)
    embedding = torch.randn(512, 6)
    answers = ["red", "red cat", "a large dog"]
    got = answer_embeddings(answers, tokenizer, embedding)
    for row, answer in zip(got, answers):
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(answer.split())
        total = torch.zeros(6)
        for i in ids:
            total += embedding[i]
        torch.testing.assert_close(row, total / len(ids))
    with pytest.raises(ReferenceModelError, match="no tokens"):
        answer_embeddings([""], tokenizer, embedding)


def test_alignment_loss_by_hand():
    outputs = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])  # one image, two tokens
    targets = torch.tensor([[1.0, 0.0]])  # norm 1
    # token 1: cos = 3/5, norms 5 vs 1; token 2: cos = 0, norms 2 vs 1
    expected = ((1 - 0.6 + 16) + (1 - 0 + 1)) / 2
    assert alignment_loss(outputs, targets).item() == pytest.approx(expected)
    assert alignment_loss(targets[:, None, :].repeat(1, 3, 1), targets).item() == pytest.approx(0, abs=1e-6)


def test_aligned_projector_places_new_images_near_their_class_target():
    torch.manual_seed(0)
    classes, per_class, tokens, width, hidden = 3, 40, 5, 12, 8
    centres = torch.randn(classes, width) * 2
    labels = torch.arange(classes).repeat_interleave(per_class)
    features = centres[labels][:, None, :] + 0.3 * torch.randn(len(labels), tokens, width)
    class_targets = torch.eye(classes, hidden) * torch.tensor([[0.5], [1.0], [2.0]])  # orthogonal, other norms
    projector = torch.nn.Sequential(torch.nn.Linear(width, 16), torch.nn.GELU(), torch.nn.Linear(16, hidden))
    losses = align_projector(projector, features, class_targets[labels], epochs=40, lr=1e-2, batch_size=16,
                             show_progress=False)
    assert len(losses) == 40 and losses[-1] < 0.1 * losses[0]

    fresh = torch.arange(classes).repeat_interleave(10)
    held_out = centres[fresh][:, None, :] + 0.3 * torch.randn(len(fresh), tokens, width)
    with torch.no_grad():
        pooled = projector(held_out).mean(1)
    nearest = [min(range(classes), key=lambda c: (pooled[i] - class_targets[c]).norm().item())
               for i in range(len(fresh))]
    assert nearest == fresh.tolist()
    for c in range(classes):
        norms = pooled[fresh == c].norm(dim=-1)
        assert torch.allclose(norms, torch.full_like(norms, class_targets[c].norm().item()), rtol=0.2)


def test_alignment_is_deterministic_for_a_seed_and_refuses_mismatched_targets():
    features, targets = torch.randn(6, 2, 4), torch.randn(6, 3)
    states = []
    for _ in range(2):
        torch.manual_seed(1)
        projector = torch.nn.Linear(4, 3)
        align_projector(projector, features, targets, epochs=3, batch_size=4, seed=5, show_progress=False)
        states.append(projector.weight.detach().clone())
    assert torch.equal(states[0], states[1])
    with pytest.raises(ReferenceModelError, match="6 images but 5 target embeddings"):
        align_projector(torch.nn.Linear(4, 3), features, targets[:5], epochs=1, show_progress=False)
