"""The four axes against plain references: RIA, Wanda's use_variant, OWL, TAMP's allocation,
true-sequential statistics, composed runs, the run record and grid method entries."""

import copy
import json
import math

import pytest
import torch

from probe.calibration.calibrate import capture_calibration
from probe.calibration.capture import run_block
from probe.core.record import RunRecord
from probe.core.settings import SettingsError
from probe.data.calibration import CalibrationSpec
from probe.errors import ProbeError
from probe.models.loading import load_model
from probe.pruning.allocation.owl import outlier_ratio, owl_sparsities
from probe.pruning.allocation.tamp import proportional_keep
from probe.pruning.engine import PruneConfig, PruneConfigError, prune
from probe.pruning.method_spec import MethodSpecError, method_entry
from probe.pruning.scorers.ria import ria_scores
from probe.pruning.scorers.wanda import variant_mask
from probe.pruning.sparsity.amia import modality_similarities


@pytest.fixture(scope="module")
def base():
    loaded = load_model("tiny:llava_next")
    return loaded, capture_calibration(loaded, CalibrationSpec(nsamples=3), show_progress=False)


def fresh(base):
    loaded, samples = base
    return copy.deepcopy(loaded.model), loaded.adapter, samples


def dense_inputs(model, adapter, samples):
    """Per block and linear, each sample's input rows, from a plain replay of the dense model."""
    inputs = {}
    hidden = [s.hidden.clone() for s in samples]
    for b, layer in enumerate(adapter.decoder_layers(model)):
        linears = adapter.prunable_linears(layer)
        seen = {name: [] for name in linears}
        handles = [lin.register_forward_hook(lambda m, i, o, n=name, store=seen: store[n].append(i[0][0].clone()))
                   for name, lin in linears.items()]
        hidden = [run_block(layer, h, s.calls[b]) for s, h in zip(samples, hidden)]
        for handle in handles:
            handle.remove()
        inputs[b] = seen
    return inputs


def test_ria_scores_equal_a_plain_double_loop():
    torch.manual_seed(0)
    weight, norms = torch.randn(5, 7), torch.rand(7) + 0.1
    scores = ria_scores(weight, norms, power=0.5)
    for i in range(5):
        for j in range(7):
            row = sum(abs(weight[i, k].item()) for k in range(7))
            col = sum(abs(weight[k, j].item()) for k in range(5))
            w = abs(weight[i, j].item())
            assert scores[i, j].item() == pytest.approx((w / row + w / col) * norms[j].item() ** 0.5, rel=1e-5)


def test_ria_prunes_one_threshold_per_matrix_or_per_row(base):
    model, adapter, samples = fresh(base)
    prune(model, adapter, samples, PruneConfig(scorer="ria", sparsity=0.5), show_progress=False)
    q = adapter.prunable_linears(adapter.decoder_layers(model)[0])["self_attn.q_proj"].weight
    assert (q == 0).sum().item() == int(q.numel() * 0.5)
    assert len({int(r) for r in (q == 0).sum(1)}) > 1  # one threshold for the matrix: rows differ
    model, adapter, samples = fresh(base)
    prune(model, adapter, samples, PruneConfig(scorer="ria", scorer_settings={"per_row": True}), show_progress=False)
    q = adapter.prunable_linears(adapter.decoder_layers(model)[0])["self_attn.q_proj"].weight
    assert {int(r) for r in (q == 0).sum(1)} == {q.shape[1] // 2}


def plain_variant(scores, sparsity):
    """Wanda's use_variant written out row by row: bisect alpha; each row prunes the scores not above the
    last sorted score whose running sum stays within alpha times the row sum."""
    rows = [sorted(r) for r in scores.tolist()]

    def mask_at(alpha):
        mask = []
        for original, ordered in zip(scores.tolist(), rows):
            total, running, threshold = sum(original), 0.0, None
            for value in ordered:
                running += value
                if running <= alpha * total:
                    threshold = value
            mask.append([threshold is not None and v <= threshold for v in original])
        return mask, sum(map(sum, mask)) / scores.numel()

    alpha, low, high = 0.4, 0.0, 0.8
    mask, got = mask_at(alpha)
    while abs(got - sparsity) > 0.001 and high - low >= 0.001:
        if got > sparsity:
            alpha, high = (alpha + low) / 2, alpha
        else:
            alpha, low = (alpha + high) / 2, alpha
        mask, got = mask_at(alpha)
    return torch.tensor(mask), alpha


def test_wanda_use_variant_thresholds_equal_a_plain_loop():
    torch.manual_seed(1)
    scores = torch.rand(16, 32, dtype=torch.float64)
    ours, alpha = variant_mask(scores, 0.5)
    theirs, their_alpha = plain_variant(scores, 0.5)
    assert alpha == pytest.approx(their_alpha) and torch.equal(ours, theirs)
    assert abs(ours.double().mean().item() - 0.5) < 0.05
    with pytest.raises(Exception, match="use_variant"):
        PruneConfig(scorer="wanda", scorer_settings={"use_variant": True}, pattern="2:4")


def test_owl_sparsities_follow_the_formula_and_keep_the_target():
    ratios, params = [0.01, 0.04, 0.02, 0.03], [10, 10, 30, 50]
    ours = owl_sparsities(ratios, params, target=0.5, lam=0.08)
    z = [(r - 0.01) / 0.03 * 0.16 for r in ratios]
    mean = sum(zi * p for zi, p in zip(z, params)) / sum(params)
    assert ours == pytest.approx([0.5 - (zi - mean) for zi in z])
    assert sum(s * p for s, p in zip(ours, params)) / sum(params) == pytest.approx(0.5, abs=1e-12)
    assert ours[1] < ours[3] < ours[2] < ours[0]  # more outliers, fewer weights pruned
    equal = owl_sparsities([0.02, 0.04, 0.03], [1, 1, 1], 0.6, 0.08)
    assert max(equal) - min(equal) == pytest.approx(0.16) and sum(equal) / 3 == pytest.approx(0.6)
    assert owl_sparsities([0.5, 0.5], [1, 3], 0.5, 0.08) == [0.5, 0.5]
    scores = [torch.tensor([[1.0, 1.0], [1.0, 50.0]]), torch.tensor([[1.0, 2.0]])]
    flat = [1, 1, 1, 50, 1, 2]
    assert outlier_ratio(scores, 5.0) == sum(v > 5 * sum(flat) / 6 for v in flat) / 6


def test_owl_settings_are_checked_against_the_spread_the_formula_can_reach():
    """The block sparsities span 2 lam and their mean is the target, so a block lies up to 2 lam from it
    (tiny LLaVA's three blocks at 50% and lam 0.08: 0.553 / 0.393 / 0.553); a lam of 0.08 at 10% passed a
    target +- lam check and then left [0, 1) after the pre-pass."""
    three = owl_sparsities([0.0, 1.0, 0.0], [1, 1, 1], 0.5, 0.08)
    assert three == pytest.approx([0.5 + 0.16 / 3, 0.5 - 0.32 / 3, 0.5 + 0.16 / 3])
    assert min(owl_sparsities([0.0, 1.0, 0.0], [1, 1, 1], 0.1, 0.08)) < 0  # what the old check let through
    for sparsity, lam in ((0.1, 0.08), (0.9, 0.08), (0.5, 0.26)):
        with pytest.raises(ProbeError, match=r"block sparsities can lie up to 2 \* lam"):
            PruneConfig(allocation="owl", sparsity=sparsity, allocation_settings={"lam": lam})
    generator = torch.Generator().manual_seed(0)
    for sparsity, lam in ((0.16, 0.08), (0.84, 0.08), (0.5, 0.25)):  # accepted: every block stays in [0, 1]
        PruneConfig(allocation="owl", sparsity=sparsity, allocation_settings={"lam": lam})
        for _ in range(200):
            blocks = int(torch.randint(2, 9, (1,), generator=generator))
            ratios = torch.rand(blocks, generator=generator).tolist()
            params = torch.randint(1, 100, (blocks,), generator=generator).tolist()
            chosen = owl_sparsities(ratios, params, sparsity, lam)
            assert all(-1e-12 <= s <= 1 + 1e-12 for s in chosen)
            assert max(chosen) - min(chosen) == pytest.approx(2 * lam)


def test_owl_allocation_end_to_end_against_a_plain_pre_pass(base):
    model, adapter, samples = fresh(base)
    inputs = dense_inputs(copy.deepcopy(model), adapter, samples)
    ratios, params = [], []
    for b, layer in enumerate(adapter.decoder_layers(model)):
        scores = []
        for name, lin in adapter.prunable_linears(layer).items():
            x = torch.cat(inputs[b][name]).double()
            scores.append(lin.weight.abs().double() * torch.sqrt((x ** 2).sum(0)))
        flat = torch.cat([s.flatten() for s in scores])
        ratios.append(((flat > 5 * flat.mean()).double().mean()).item())
        params.append(sum(lin.weight.numel() for lin in adapter.prunable_linears(layer).values()))
    expected = owl_sparsities(ratios, params, 0.5, 0.08)
    config = PruneConfig(tokens="text", scorer="sparsegpt", allocation="owl")
    report = prune(model, adapter, samples, config, show_progress=False)
    for b, layer in enumerate(adapter.decoder_layers(model)):
        for name in adapter.prunable_linears(layer):
            key = f"layers.{b}.{name}"
            assert report.target_sparsity[key] == pytest.approx(expected[b], abs=1e-9)
            assert abs(report.sparsity[key] - expected[b]) < 0.02
    assert [report.allocation["outlier_ratio"][str(b)] for b in range(len(ratios))] == pytest.approx(ratios)
    with pytest.raises(Exception, match="N:M"):
        PruneConfig(method="owl", pattern="2:4")


def plain_keep(scores, sizes, total, max_sparsity):
    """TAMP's compute_the_sparsity_per_group written out (its overshoot taken back from the largest)."""
    keep = [math.ceil(n * (1 - max_sparsity)) for n in sizes]
    scores = list(scores)
    while sum(keep) < total:
        rest, ratio = total - sum(keep), sum(scores)
        for i in range(len(keep)):
            keep[i] += math.ceil(scores[i] / ratio * rest)
        for i in range(len(keep)):
            if keep[i] >= sizes[i]:
                scores[i] = 0.0
                keep[i] = sizes[i]
    excess = sum(keep) - total
    for i in sorted(range(len(keep)), key=lambda j: -keep[j]):
        take = min(excess, keep[i] - math.ceil(sizes[i] * (1 - max_sparsity)))
        keep[i], excess = keep[i] - take, excess - take
    return keep


def test_tamp_allocation_equals_its_formula():
    scores, sizes = [0.9, 0.1, 0.5, 2.0], [100, 100, 400, 400]
    total = int(sum(sizes) * 0.5)
    ours = proportional_keep(scores, sizes, total, 0.6)
    assert ours == plain_keep(scores, sizes, total, 0.6)
    assert sum(ours) == total and all(k >= math.ceil(n * 0.4) for k, n in zip(ours, sizes))
    assert all(k <= n for k, n in zip(ours, sizes))
    assert ours[3] / sizes[3] > ours[1] / sizes[1]


def test_tamp_allocation_scores_from_dense_outputs(base):
    model, adapter, samples = fresh(base)
    inputs = dense_inputs(copy.deepcopy(model), adapter, samples)
    report = prune(model, adapter, samples, PruneConfig(method="tamp-full"), show_progress=False)
    layer0 = adapter.prunable_linears(adapter.decoder_layers(base[0].model)[0])
    for name, lin in layer0.items():
        sims = []
        for s, x in zip(samples, inputs[0][name]):
            out = torch.nn.functional.normalize(lin(x).double(), dim=-1)
            sims.append(modality_similarities(out, s.visual_mask))
        expected = abs(3 - sum(sum(v) for v in sims) / len(sims))
        assert report.allocation["score"][f"layers.0.{name}"] == pytest.approx(expected, rel=1e-6)
    params = {k: 0 for k in report.sparsity}
    for b, layer in enumerate(adapter.decoder_layers(model)):
        for name, lin in adapter.prunable_linears(layer).items():
            params[f"layers.{b}.{name}"] = lin.weight.numel()
    kept = sum((1 - report.target_sparsity[k]) * n for k, n in params.items())
    assert kept == pytest.approx(int(sum(params.values()) * 0.5), abs=0.5)
    assert max(report.target_sparsity.values()) <= 0.6 + 1e-9 and len(set(report.target_sparsity.values())) > 1


def test_true_sequential_changes_exactly_the_later_groups(base):
    """Block 0 under true-sequential: q, k, v (the first group) as by default; o_proj, the MLP's inputs and
    down_proj take their statistics after the earlier groups were pruned, equal to Wanda on the inputs a
    plain replay of the partly pruned block gives."""
    default, adapter, samples = fresh(base)
    prune(default, adapter, samples, PruneConfig(tokens="mixed"), show_progress=False)
    seq, _, _ = fresh(base)
    prune(seq, adapter, samples, PruneConfig(true_sequential=True), show_progress=False)
    ours = adapter.prunable_linears(adapter.decoder_layers(seq)[0])
    theirs = adapter.prunable_linears(adapter.decoder_layers(default)[0])
    same = {n for n in ours if torch.equal(ours[n].weight, theirs[n].weight)}
    assert same == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}
    # o_proj: Wanda over the inputs of the block with only q, k, v pruned
    plain, _, _ = fresh(base)
    layer = adapter.decoder_layers(plain)[0]
    linears = adapter.prunable_linears(layer)
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        linears[name].weight.data.copy_(ours[name].weight)
    rows = []
    handle = linears["self_attn.o_proj"].register_forward_hook(lambda m, i, o: rows.append(i[0][0]))
    for s in samples:
        run_block(layer, s.hidden.clone(), s.calls[0])
    handle.remove()
    x = torch.cat(rows).double()
    score = linears["self_attn.o_proj"].weight.abs().double() * torch.sqrt((x ** 2).sum(0))
    k = score.shape[1] // 2
    expected = torch.zeros_like(score, dtype=torch.bool)
    for i in range(score.shape[0]):
        expected[i, sorted(range(score.shape[1]), key=lambda j: (score[i, j].item(), j))[:k]] = True
    assert torch.equal(ours["self_attn.o_proj"].weight == 0, expected)
    with pytest.raises(PruneConfigError, match="true_sequential"):
        PruneConfig(method="magnitude", true_sequential=True)


def test_axes_compose_and_presets_refuse_contradictions(base):
    for config in (PruneConfig(tokens="atv", scorer="sparsegpt", allocation="owl"),
                   PruneConfig(tokens="tamp", scorer="ria", allocation="tamp"),
                   PruneConfig(tokens="visual", scorer="magnitude", allocation="owl")):
        model, adapter, samples = fresh(base)
        report = prune(model, adapter, samples, config, show_progress=False)
        weighted = sum(report.target_sparsity[k] * p.numel() for k, p in
                       ((f"layers.{b}.{n}", lin.weight) for b, layer in enumerate(adapter.decoder_layers(model))
                        for n, lin in adapter.prunable_linears(layer).items()))
        total = sum(lin.weight.numel() for layer in adapter.decoder_layers(model)
                    for lin in adapter.prunable_linears(layer).values())
        assert weighted / total == pytest.approx(0.5, abs=1e-3)
    assert PruneConfig(method="atv").label == "atv" and PruneConfig(scorer="ria").label == "ria"
    assert PruneConfig(tokens="text", scorer="sparsegpt", allocation="owl").label == "text+sparsegpt+owl"
    with pytest.raises(PruneConfigError, match="method 'atv' uses tokens 'atv'"):
        PruneConfig(method="atv", tokens="text")
    with pytest.raises(SettingsError, match="unknown scorer 'wanda' setting.*power.*known: use_variant"):
        PruneConfig(scorer_settings={"power": 2})
    with pytest.raises(SettingsError, match="'m'"):
        PruneConfig(allocation="owl", allocation_settings={"m": "many"})


def test_run_record_round_trip(tmp_path, base):
    model, adapter, samples = fresh(base)
    config = PruneConfig(method="atv", allocation="owl")
    report = prune(model, adapter, samples, config, show_progress=False)
    record = RunRecord.from_report(config, report, model="tiny:llava_next", context={"cell": "x"})
    record.write(tmp_path / "r.json")
    again = RunRecord.read(tmp_path / "r.json")
    assert again == record
    assert again.settings["allocation_settings"] == {"m": 5.0, "lam": 0.08}
    assert again.method == "atv+wanda+owl" and again.selector_blocks and again.allocation["outlier_ratio"]
    for b, layer in enumerate(adapter.decoder_layers(model)):
        weights = [lin.weight for lin in adapter.prunable_linears(layer).values()]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert again.block_sparsity[str(b)] == pytest.approx(zeros)
    assert json.loads((tmp_path / "r.json").read_text())["mean_sparsity"] == pytest.approx(record.mean_sparsity)


def test_method_entries_as_mappings():
    entry = method_entry({"method": "atv", "alpha": 2})
    assert entry.label == "atv(alpha=2)" and entry.config(0.5).tokens_settings.alpha == 2.0
    entry = method_entry({"tokens": "text", "scorer": "sparsegpt", "allocation": "owl", "lam": 0.1})
    config = entry.config(0.5)
    assert entry.label == "text+sparsegpt+owl(lam=0.1)" and config.allocation_settings.lam == 0.1
    assert method_entry({"method": "sparsegpt", "true_sequential": True, "label": "seq"}).label == "seq"
    for bad, match in (({"alpha": 2}, "needs method"), ({"method": "atv", "tokens": 3}, "tokens should be a name"),
                       ({"scorer": "obd"}, "unknown scorer 'obd'"), (["atv"], "not \\['atv'\\]"),
                       ({"method": "wanda", "true_sequential": "yes"}, "true or false")):
        with pytest.raises((MethodSpecError, Exception), match=match):
            method_entry(bad)
    with pytest.raises(MethodSpecError, match="unknown setting 'beta'"):
        method_entry({"method": "atv", "beta": 1}).config(0.5)
