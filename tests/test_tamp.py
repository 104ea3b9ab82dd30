"""TAMP (AMIA): the vectorised selection against a literal loop, and the engine's per-linear
statistics against a plain recomputation for one linear."""

import copy
import math

import pytest
import torch

from probe.calibration.calibrate import capture_calibration
from probe.calibration.capture import run_block
from probe.data.calibration import CalibrationSpec
from probe.models.loading import load_model
from probe.pruning.engine import PruneConfig, PruneConfigError, prune
from probe.pruning.sparsity.amia import amia_select


def literal_amia(outputs, visual, score):
    """The selection written out step by step, recomputing the full MMD after every pick."""
    u = torch.nn.functional.normalize(outputs.double(), dim=-1)
    n = u.shape[0]

    def mean_positive_upper(x):
        values = [float(x[i] @ x[j]) for i in range(len(x)) for j in range(i + 1, len(x)) if float(x[i] @ x[j]) > 0]
        return sum(values) / len(values) if values else 0.0

    v, t = u[visual], u[~visual]
    cross = [float(a @ b) for a in v for b in t]
    density = (mean_positive_upper(v) + mean_positive_upper(t) + sum(cross) / len(cross)) / 3
    dist = [[1 - float(u[i] @ u[j]) for j in range(n)] for i in range(n)]
    knn = [sorted(range(n), key=lambda j, i=i: (dist[i][j], j != i))[1:4] for i in range(n)]
    graph = [float(score[i]) + sum(math.exp(-dist[i][j]) * float(score[j]) for j in knn[i]) for i in range(n)]
    kern = [[math.exp(-float(((u[i] - u[j]) ** 2).sum()) / 2) for j in range(n)] for i in range(n)]
    kxx = sum(map(sum, kern)) / n ** 2
    picked = []
    while len(picked) < n:
        s = max(range(n), key=lambda i: (graph[i], -i))
        for j in knn[s]:
            graph[j] -= math.exp(-dist[s][j] * 0.2) * max(graph[s], 0.0)
        picked.append(s)
        low = min(graph) - 1
        for p in picked:
            graph[p] = low
        m = len(picked)
        kyy = sum(kern[a][b] for a in picked for b in picked) / m ** 2
        kxy = sum(kern[i][b] for i in range(n) for b in picked) / (n * m)
        if kxx + kyy - 2 * kxy < math.sqrt(1 - density) * 0.1:
            break
    mask = torch.zeros(n, dtype=torch.bool)
    mask[picked] = True
    return mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_selection_equals_the_literal_loop(seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(4, 16, generator=g)
    outputs = base[torch.randint(0, 4, (30,), generator=g)] + 0.3 * torch.randn(30, 16, generator=g)  # clusters
    visual = torch.zeros(30, dtype=torch.bool)
    visual[5:20] = True
    score = torch.softmax(torch.randn(30, generator=g), 0)
    ours = amia_select(outputs, visual, score)
    assert torch.equal(ours, literal_amia(outputs, visual, score))
    assert 0 < int(ours.sum()) < 30


def test_engine_feeds_each_linear_its_own_picks():
    loaded = load_model("tiny:llava_next")
    samples = capture_calibration(loaded, CalibrationSpec(nsamples=2), show_progress=False)
    model = copy.deepcopy(loaded.model)
    prune(model, loaded.adapter, copy.deepcopy(samples), PruneConfig(method="tamp", sparsity=0.5), show_progress=False)

    from probe.calibration.attention import eager_call, recording_attention

    layer = loaded.adapter.decoder_layers(loaded.model)[0]
    for name in ("self_attn.k_proj", "mlp.down_proj"):
        linear = layer.get_submodule(name)
        seen = []
        handle = linear.register_forward_hook(lambda m, i, o, store=seen: store.append((i[0][0], o[0])))
        rows = []
        with torch.no_grad(), recording_attention(layer.self_attn) as record:
            for s in samples:
                run_block(layer, s.hidden, eager_call(s.calls[0], s.seq_len, torch.float32, torch.device("cpu")))
                x, y = seen[-1]
                rows.append(x[amia_select(y, s.visual_mask, record["probs"][:, -1, :].mean(0))])
        handle.remove()
        x = torch.cat(rows).double()
        score = linear.weight.abs().double() * torch.sqrt((x ** 2).sum(0))
        expected = torch.zeros_like(score, dtype=torch.bool)
        for i in range(score.shape[0]):
            order = sorted(range(score.shape[1]), key=lambda j, i=i: (score[i, j].item(), j))
            expected[i, order[: score.shape[1] // 2]] = True
        pruned = loaded.adapter.decoder_layers(model)[0].get_submodule(name).weight == 0
        assert torch.equal(pruned, expected), name


def test_tamp_uses_its_own_pool():
    with pytest.raises(PruneConfigError, match="tamp"):
        PruneConfig(method="tamp", tokens="mixed")
