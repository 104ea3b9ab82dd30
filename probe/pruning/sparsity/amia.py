"""TAMP's adaptive multimodal input activation (AMIA) token selection, as pure functions.

For one linear and one sample, over the linear's L2-normalised outputs ``u`` (one row per token):

1. density: the mean of three cosine similarities: visual-visual and text-text (each over the distinct
   pairs with a positive similarity) and visual-text (over all pairs);
2. a kNN graph (3 nearest neighbours by cosine distance ``1 - u_i . u_j``, self excluded); each token's
   graph score is its attention score plus ``sum_n exp(-d(i, n)) * score_n`` over its neighbours;
3. greedy picks: the highest graph score is picked, its neighbours' scores drop by
   ``exp(-0.2 d) * max(score_picked, 0)``, picked tokens are never picked again; the picks stop once the
   squared MMD (Gaussian kernel, sigma 1) between all tokens and the picks falls under
   ``0.1 * sqrt(1 - density)``.

The attention score of a token is the attention the sample's last query gives it, averaged over heads.
"""

from __future__ import annotations

import math

import torch

NEIGHBOURS = 3
SUPPRESSION = 0.2
MMD_SCALE = 0.1


def modality_similarities(unit: torch.Tensor, visual: torch.Tensor) -> tuple[float, float, float]:
    """Mean cosine similarity of unit rows: visual-visual and text-text (each over the distinct pairs with a
    positive similarity) and visual-text (over all pairs); 0 where a modality has no such pair."""
    unit = unit.detach()  # statistics only: no gradient flows through them
    v, t = unit[visual], unit[~visual]

    def positive_pairs_mean(x: torch.Tensor) -> float:
        sims = (x @ x.T).triu(diagonal=1)
        positive = sims[sims > 0]
        return float(positive.mean()) if positive.numel() else 0.0

    cross = float((v @ t.T).mean()) if v.shape[0] and t.shape[0] else 0.0
    return positive_pairs_mean(v), positive_pairs_mean(t), cross


def modality_density(unit: torch.Tensor, visual: torch.Tensor) -> float:
    """Mean of the three :func:`modality_similarities`."""
    return sum(modality_similarities(unit, visual)) / 3.0


def amia_select(outputs: torch.Tensor, visual: torch.Tensor, attention_score: torch.Tensor,
                neighbours: int = NEIGHBOURS) -> torch.Tensor:
    """Boolean mask of the tokens whose inputs feed this linear's statistics (see the module docstring).

    ``outputs`` (tokens, d_out) are the linear's outputs for one sample, ``visual`` (tokens,) marks
    visual tokens, ``attention_score`` (tokens,) is the last query's head-averaged attention.
    """
    unit = torch.nn.functional.normalize(outputs.double(), dim=-1)
    n = unit.shape[0]
    density = modality_density(unit, visual)
    distance = 1.0 - unit @ unit.T
    k = min(neighbours, n - 1)
    knn = torch.topk(distance, k=k + 1, largest=False).indices[:, 1:]
    score = attention_score.double()
    graph = score + (torch.exp(-torch.gather(distance, 1, knn)) * score[knn]).sum(dim=1)

    squared = (unit * unit).sum(1)
    kernel = torch.exp(-(squared[:, None] + squared[None, :] - 2.0 * unit @ unit.T) / 2.0)
    kxx = float(kernel.mean())
    column_sums = kernel.sum(dim=0)  # sum_i K(i, j), for the cross term
    threshold = math.sqrt(max(1.0 - density, 0.0)) * MMD_SCALE

    chosen = torch.zeros(n, dtype=torch.bool)
    picked: list[int] = []
    kyy_sum, kxy_sum = 0.0, 0.0
    while len(picked) < n:
        pick = int(torch.argmax(graph))
        near = knn[pick]
        graph[near] = graph[near] - torch.exp(-distance[pick, near] * SUPPRESSION) * torch.clamp(graph[pick], min=0)
        kyy_sum += 2.0 * float(kernel[pick, chosen].sum()) + float(kernel[pick, pick])
        kxy_sum += float(column_sums[pick])
        chosen[pick] = True
        picked.append(pick)
        graph[chosen] = graph.min() - 1
        m = len(picked)
        mmd2 = kxx + kyy_sum / (m * m) - 2.0 * kxy_sum / (n * m)
        if mmd2 < threshold:
            break
    return chosen
