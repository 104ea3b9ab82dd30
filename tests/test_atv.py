"""ATV-Pruning: the selection maths against the paper's formulas, masks against a plain three-pass
reference, the limits alpha = 0 (text pool) and alpha large (mixed pool), records and ablations."""

import copy
import json
import math

import pytest
import torch

from probe.calibration.calibrate import capture_calibration
from probe.calibration.capture import run_block
from probe.data.calibration import CalibrationSpec
from probe.models.loading import load_model
from probe.pruning.engine import PruneConfig, PruneConfigError, prune
from probe.pruning.sparsity.selection import budget_bound, token_drift, visual_budget
from probe.pruning.tokens.atv import AtvSettings, AtvTokens
from probe.pruning.tokens.base import TokenSelectorError


def atv_config(atv: AtvSettings | None = None, **settings) -> PruneConfig:
    """Pruning settings with ATV's settings as ``atv=``."""
    return PruneConfig(tokens_settings=atv, **settings)


@pytest.fixture(scope="module")
def base():
    loaded = load_model("tiny:llava_next")
    return loaded, capture_calibration(loaded, CalibrationSpec(nsamples=3, seed=0), show_progress=False)


def fresh(base):
    loaded, samples = base
    return copy.deepcopy(loaded.model), loaded.adapter, copy.deepcopy(samples)


def masks_of(model, adapter):
    return {f"{b}.{n}": (lin.weight == 0).clone() for b, layer in enumerate(adapter.decoder_layers(model))
            for n, lin in adapter.prunable_linears(layer).items()}


def test_drift_is_one_minus_cosine():
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    expected = [1 - float(a[t] @ b[t]) / (a[t].norm().item() * b[t].norm().item()) for t in range(5)]
    assert token_drift(a[None], b[None]).tolist() == pytest.approx(expected, abs=1e-6)
    assert token_drift(a, a).abs().max() < 1e-6 and token_drift(a, -a).tolist() == pytest.approx([2.0] * 5)


@pytest.mark.parametrize("s_bar,n_text,n_visual,alpha,paper,released", [
    (0.1, 120, 576, 1.0, 12, 12), (0.1, 120, 5, 1.0, 5, 5), (0.37, 50, 576, 1.5, 27, 28),
    (0.8, 40, 576, 2.0, 64, 40), (0.25, 10, 576, 0.0, 0, 0), (0.05, 30, 576, 1.0, 1, 2),
])
def test_visual_budget_follows_both_rules(s_bar, n_text, n_visual, alpha, paper, released):
    assert visual_budget(s_bar, n_text, n_visual, alpha, "paper") == paper
    assert paper == min(n_visual, math.floor(alpha * s_bar * n_text))
    assert visual_budget(s_bar, n_text, n_visual, alpha, "released") == released
    assert budget_bound(n_text, n_visual, alpha, "paper") >= paper


@torch.no_grad()
def reference_atv_masks(model, adapter, samples, alpha, sparsity, rule="paper"):
    """Three passes per block, written plainly: a dense pass for drift, a second dense pass collecting
    each linear's inputs at the chosen positions, Wanda per row, then the propagation pass."""
    masks, records = {}, []
    hidden = [s.hidden.clone() for s in samples]
    for b, layer in enumerate(adapter.decoder_layers(model)):
        outs = [run_block(layer, h, s.calls[b]) for s, h in zip(samples, hidden)]  # pass 1
        drifts = []
        for h, o in zip(hidden, outs):
            x, y = h[0].double(), o[0].double()
            drifts.append(torch.tensor([1 - float(x[t] @ y[t]) / float(x[t].norm() * y[t].norm())
                                        for t in range(x.shape[0])]))
        visual_drifts = torch.cat([d[s.visual_mask] for d, s in zip(drifts, samples)])
        s_bar = float(visual_drifts.mean())
        selections = []
        for d, s in zip(drifts, samples):
            n_text, n_visual = int((~s.visual_mask).sum()), int(s.visual_mask.sum())
            if rule == "paper":
                k = min(n_visual, math.floor(alpha * s_bar * n_text))
            else:
                k = min(n_visual, round(min(1.0, alpha * s_bar) * n_text))
            visual_positions = [t for t in range(len(d)) if s.visual_mask[t]]
            ranked = sorted(visual_positions, key=lambda t: -d[t].item())
            chosen = ~s.visual_mask.clone()
            chosen[ranked[:k]] = True
            selections.append(chosen)
        records.append((s_bar, sum(int(c.sum()) - int((~s.visual_mask).sum()) for c, s in zip(selections, samples))))
        linears = adapter.prunable_linears(layer)
        rows = {name: [] for name in linears}
        handles = [lin.register_forward_hook(lambda m, i, o, n=name, store=rows: store[n].append(i[0][0]))
                   for name, lin in linears.items()]
        for s, h in zip(samples, hidden):  # pass 2
            run_block(layer, h, s.calls[b])
        for handle in handles:
            handle.remove()
        for name, lin in linears.items():
            x = torch.cat([r[c] for r, c in zip(rows[name], selections)]).double()
            score = lin.weight.abs().double() * torch.sqrt((x ** 2).sum(0))
            k = int(score.shape[1] * sparsity)
            mask = torch.zeros_like(score, dtype=torch.bool)
            for i in range(score.shape[0]):
                mask[i, sorted(range(score.shape[1]), key=lambda j: (score[i, j].item(), j))[:k]] = True
            lin.weight.data[mask] = 0
            masks[f"{b}.{name}"] = mask
        hidden = [run_block(layer, h, s.calls[b]) for s, h in zip(samples, hidden)]  # pass 3
    return masks, records


@pytest.mark.parametrize("alpha,rule", [(1.0, "paper"), (3.0, "paper"), (2.0, "released")])
def test_two_pass_atv_matches_a_three_pass_reference(base, alpha, rule):
    model, adapter, samples = fresh(base)
    ref_masks, ref_records = reference_atv_masks(copy.deepcopy(model), adapter, copy.deepcopy(samples), alpha, 0.5,
                                                 rule)
    config = atv_config(method="atv", sparsity=0.5, atv=AtvSettings(alpha=alpha, k_rule=rule))
    report = prune(model, adapter, samples, config, show_progress=False)
    ours = masks_of(model, adapter)
    assert all(torch.equal(ours[k], ref_masks[k]) for k in ref_masks)
    for record, (s_bar, kept) in zip(report.selector_blocks, ref_records):
        assert record["mean_drift"] == pytest.approx(s_bar, rel=1e-5) and record["visual_kept"] == kept
    assert any(r["visual_kept"] > 0 for r in report.selector_blocks)


def test_alpha_zero_is_the_text_pool_and_a_large_alpha_the_mixed_pool(base):
    for alpha, pool in ((0.0, "text"), (1e6, "mixed")):
        atv_model, adapter, samples = fresh(base)
        prune(atv_model, adapter, samples, atv_config(method="atv", atv=AtvSettings(alpha=alpha)), show_progress=False)
        plain_model, _, samples = fresh(base)
        prune(plain_model, adapter, samples, atv_config(method="wanda", tokens=pool), show_progress=False)
        atv, plain = masks_of(atv_model, adapter), masks_of(plain_model, adapter)
        assert all(torch.equal(atv[k], plain[k]) for k in atv), f"alpha={alpha} vs {pool}"


def test_text_ratio_keeps_the_highest_drift_text_tokens(base):
    _, _, samples = fresh(base)
    pool = AtvTokens(AtvSettings(alpha=1.0, text_ratio=0.5))
    x_in = samples[0].hidden
    x_out = x_in + torch.randn_like(x_in)
    order = pool.rank(0, samples[0], 0, x_in, x_out)
    n_text = int((~samples[0].visual_mask).sum())
    kept = int(math.floor(0.5 * n_text + 0.5))
    drift = token_drift(x_in, x_out)
    text_positions = (~samples[0].visual_mask).nonzero().flatten().tolist()
    top = sorted(text_positions, key=lambda t: -drift[t].item())[:kept]
    assert order[:kept].tolist() == top
    count = pool.choose(0)[0]
    assert kept <= count <= kept + int(samples[0].visual_mask.sum())


def test_random_signal_is_seeded_and_selects_the_same_count(base):
    counts = []
    for signal, seed in (("drift", 0), ("random", 0), ("random", 0), ("random", 1)):
        model, adapter, samples = fresh(base)
        config = atv_config(method="atv", atv=AtvSettings(alpha=2.0, signal=signal, seed=seed))
        report = prune(model, adapter, samples, config, show_progress=False)
        counts.append(([r["visual_kept"] for r in report.selector_blocks], masks_of(model, adapter)))
    (drift_kept, drift_masks), (r0_kept, r0), (r0b_kept, r0b), (_, r1) = counts
    assert all(torch.equal(r0[k], r0b[k]) for k in r0)
    assert r0_kept[0] == drift_kept[0]  # block 0 sees the same inputs, hence the same budget
    assert any(not torch.equal(r0[k], r1[k]) for k in r0) and any(not torch.equal(r0[k], drift_masks[k]) for k in r0)


def test_bad_atv_settings_are_named():
    with pytest.raises(TokenSelectorError, match="alpha"):
        AtvSettings(alpha=-1)
    with pytest.raises(TokenSelectorError, match="budget rule"):
        AtvSettings(k_rule="median")
    with pytest.raises(TokenSelectorError, match="signal"):
        AtvSettings(signal="entropy")
    with pytest.raises(TokenSelectorError, match="text ratio"):
        AtvSettings(text_ratio=1.5)
    with pytest.raises(PruneConfigError, match="atv"):
        atv_config(method="atv", tokens="text")
    assert atv_config(method="sparsegpt", tokens="atv").make_selector().name == "atv"


def test_cli_atv_writes_per_block_records(tmp_path):
    from probe.cli import main

    out = tmp_path / "atv"
    assert main(["prune", "tiny:llava_next", "--method", "atv", "--alpha", "1.5", "--k-rule", "released",
                 "--nsamples", "3", "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["tokens"] == "atv" and manifest["settings"]["tokens_settings"]["alpha"] == 1.5
    assert manifest["settings"]["tokens_settings"]["k_rule"] == "released" and manifest["method"] == "atv"
    records = manifest["selector_blocks"]
    assert len(records) == load_model("tiny:llava_next").model.config.text_config.num_hidden_layers
    assert {"block", "mean_drift", "k_mean", "k_min", "k_max", "visual_kept"} <= set(records[0])
    assert main(["prune", "tiny:llava_next", "--method", "atv", "--alpha", "-1", "--out", str(tmp_path / "x")]) == 2
    fixed = tmp_path / "fixed"
    assert main(["prune", "tiny:llava_next", "--method", "atv", "--budget", "fixed", "--budget-from", str(out),
                 "--nsamples", "3", "--out", str(fixed), "--no-progress"]) == 0
    kept = json.loads((fixed / "manifest.json").read_text())["selector_blocks"]
    assert sum(b["visual_kept"] for b in kept) == sum(b["visual_kept"] for b in records)


def test_selection_helpers_against_plain_loops():
    from probe.pruning.sparsity.selection import (
        attention_from_text,
        max_min_diversity_order,
        mean_cosine_distance,
        split_total,
    )

    assert split_total(10, [1, 1, 2], [10, 10, 10]) == [3, 2, 5]  # 2.5, 2.5, 5: the first .5 goes first
    assert split_total(10, [1, 1, 2], [10, 10, 1]) == [5, 4, 1]
    assert split_total(7, [3, 0, 1], [2, 5, 5]) == [2, 0, 5]
    assert sum(split_total(1000, [5, 7, 11], [400, 400, 400])) == 1000

    f = torch.randn(7, 5)
    cos = lambda i, j: float(f[i] @ f[j]) / (f[i].norm().item() * f[j].norm().item())  # noqa: E731
    mean_distance = [sum(1 - cos(i, j) for j in range(7) if j != i) / 6 for i in range(7)]
    assert mean_cosine_distance(f).tolist() == pytest.approx(mean_distance, abs=1e-5)
    order = [2]
    while len(order) < 7:
        rest = [j for j in range(7) if j not in order]
        order.append(max(rest, key=lambda j: (min(1 - cos(j, i) for i in order), -j)))
    assert max_min_diversity_order(f, 2).tolist() == order

    probs = torch.rand(3, 6, 6)
    text = torch.tensor([True, False, False, True, True, False])
    keys = torch.tensor([1, 2, 5])
    plain = [sum(probs[h, q, k].item() for h in range(3) for q in (0, 3, 4)) / 9 for k in (1, 2, 5)]
    assert attention_from_text(probs, text, keys).tolist() == pytest.approx(plain, abs=1e-6)


def test_recorded_attention_is_the_blocks_own(base):
    """The probabilities kept for ABS/TAMP equal softmax(q k^T / sqrt(d) + causal) computed by hand, and
    the eager replay gives the same block output as the model's own attention."""
    from probe.calibration.attention import eager_call, recording_attention

    loaded, samples = base
    layer, sample = loaded.adapter.decoder_layers(loaded.model)[0], samples[0]
    attn = layer.self_attn
    with torch.no_grad():
        fused = run_block(layer, sample.hidden, sample.calls[0])
        with recording_attention(attn) as record:
            eager = run_block(layer, sample.hidden, eager_call(sample.calls[0], sample.seq_len, torch.float32,
                                                               torch.device("cpu")))
        x = layer.input_layernorm(sample.hidden)[0]
        cos, sin = sample.calls[0].kwargs["position_embeddings"]
        heads, kv_heads, d = attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim
        q = attn.q_proj(x).view(-1, heads, d).transpose(0, 1)
        k = attn.k_proj(x).view(-1, kv_heads, d).transpose(0, 1)

        def rotate(t):
            half = t.shape[-1] // 2
            return t * cos[0] + torch.cat([-t[..., half:], t[..., :half]], -1) * sin[0]

        q, k = rotate(q), rotate(k).repeat_interleave(heads // kv_heads, 0)
        logits = q @ k.transpose(1, 2) / d ** 0.5
        n = x.shape[0]
        logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        expected = torch.softmax(logits, -1)
    torch.testing.assert_close(eager, fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(record["probs"], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("signal", ["abs", "dbs"])
def test_abs_and_dbs_signals_prune_with_their_own_budget(base, signal):
    model, adapter, samples = fresh(base)
    report = prune(model, adapter, samples, atv_config(method="atv", atv=AtvSettings(alpha=50.0, signal=signal)),
                   show_progress=False)
    drift_model, _, drift_samples = fresh(base)
    drift_report = prune(drift_model, adapter, drift_samples, atv_config(method="atv", atv=AtvSettings(alpha=50.0)),
                         show_progress=False)
    assert [r["mean_drift"] for r in report.selector_blocks] != [r["mean_drift"] for r in drift_report.selector_blocks]
    sparsity = list(report.sparsity.values())
    assert sparsity == pytest.approx([0.5] * len(sparsity))


def test_fixed_budget_keeps_the_adaptive_total_evenly_over_blocks(base):
    model, adapter, samples = fresh(base)
    adaptive = prune(model, adapter, samples, atv_config(method="atv", atv=AtvSettings(alpha=3.0)),
                     show_progress=False)
    total = sum(r["visual_kept"] for r in adaptive.selector_blocks)
    assert len({r["visual_kept"] for r in adaptive.selector_blocks}) > 1  # adaptive: varies by block
    model, adapter, samples = fresh(base)
    fixed = prune(model, adapter, samples,
                  atv_config(method="atv", atv=AtvSettings(alpha=3.0, budget="fixed", fixed_total=total)),
                  show_progress=False)
    kept = [r["visual_kept"] for r in fixed.selector_blocks]
    assert sum(kept) == total and max(kept) - min(kept) <= 1
    with pytest.raises(TokenSelectorError, match="fixed_total"):
        AtvSettings(budget="fixed")


def test_atv_pool_feeds_sparsegpt(base):
    """The extension: SparseGPT's Hessian over ATV's tokens; alpha = 0 equals SparseGPT over the text pool."""
    model, adapter, samples = fresh(base)
    report = prune(model, adapter, samples, atv_config(method="sparsegpt", tokens="atv", atv=AtvSettings(alpha=0.0)),
                   show_progress=False)
    plain, _, samples = fresh(base)
    prune(plain, adapter, samples, atv_config(method="sparsegpt", tokens="text"), show_progress=False)
    ours, theirs = masks_of(model, adapter), masks_of(plain, adapter)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours) and report.selector_blocks


def test_shipped_grid_configs_are_valid():
    from pathlib import Path

    from probe.experiments.grid import GridConfig, cells

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        assert len(cells(GridConfig.from_yaml(path))) > 1, path.name
