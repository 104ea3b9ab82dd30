"""Mixture-of-experts and hybrid stacks through the generic adapter: each expert is pruned with the
statistics of the tokens routed to it (checked against a plain loop over the router's choices), the MoT
probe routes every expert's tokens by modality, and blocks of several kinds each keep their own structure."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probe.calibration.capture import capture
from probe.contract.check import check_image
from probe.contract.coverage import tiny_loaded
from probe.models.experts import ExpertLinear, ExpertsError, check_experts, split_experts
from probe.models.generic import GenericAdapter, NoAttentionError, UnsupportedArchitectureError, block_kinds
from probe.pruning.engine import PruneConfig, prune
from probe.pruning.mot import prune_pathway, to_mot, weight_sharing_copy


def image_inputs(loaded):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    return loaded.adapter.build_inputs(loaded.processor, messages, [check_image()])


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True where a weight is pruned: in every row, the ``sparsity`` share of lowest scores (a plain loop)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    count = int(scores.shape[1] * sparsity)
    for row in range(scores.shape[0]):
        mask[row, scores[row].argsort()[:count]] = True
    return mask


def matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True where a weight is pruned: the ``sparsity`` share of lowest scores of the whole matrix."""
    flat = torch.zeros(scores.numel(), dtype=torch.bool)
    flat[scores.flatten().argsort()[:int(scores.numel() * sparsity)]] = True
    return flat.reshape(scores.shape)


@pytest.fixture(scope="module")
def moe():
    return tiny_loaded("qwen3_vl_moe")


@pytest.mark.parametrize("tokens", ["text", "visual"])
def test_each_expert_is_pruned_with_the_statistics_of_the_selected_tokens_routed_to_it(moe, tokens):
    model, adapter = moe.model, moe.adapter
    inputs = image_inputs(moe)
    sample = capture(model, adapter, inputs, "moe")
    if tokens == "visual":  # one visual token: the experts it did not choose see no selected token
        mask = torch.zeros_like(sample.visual_mask)
        mask.reshape(-1)[int(sample.visual_mask.reshape(-1).nonzero()[0])] = True
        sample = dataclasses.replace(sample, visual_mask=mask)
    experts = adapter.decoder_layers(model)[0].mlp.experts
    seen = {}
    handle = experts.register_forward_pre_hook(
        lambda module, args: seen.update(hidden=args[0].clone(), top_k=args[1].clone()))
    with torch.no_grad():
        model(**inputs, use_cache=False)
    handle.remove()
    dense_gate_up, dense_down = experts.gate_up_proj.detach().clone(), experts.down_proj.detach().clone()

    pruned = copy.deepcopy(model)
    report = prune(pruned, adapter, [sample], PruneConfig(method="wanda", tokens=tokens), show_progress=False)
    after = adapter.decoder_layers(pruned)[0].mlp.experts
    selected = sample.visual_mask.reshape(-1) if tokens == "visual" else ~sample.visual_mask.reshape(-1)
    unobserved = 0
    for e in range(dense_gate_up.shape[0]):
        routed = [t for t in range(seen["hidden"].shape[0]) if e in seen["top_k"][t].tolist() and selected[t]]
        x = seen["hidden"][routed].float()
        gate, up = F.linear(x, dense_gate_up[e]).chunk(2, dim=-1)
        inner = experts.act_fn(gate) * up
        pairs = ((dense_gate_up[e], after.gate_up_proj[e], x), (dense_down[e], after.down_proj[e], inner))
        for dense, weight, rows in pairs:
            if routed:
                expected = row_mask(dense.abs() * rows.pow(2).sum(dim=0).sqrt(), 0.5)
            else:  # no selected token chose this expert: the smallest half of the matrix goes, and it is said
                expected = matrix_mask(dense.abs(), 0.5)
                unobserved += 1
            assert torch.equal(weight == 0, expected), e
    assert len([k for k in report.unobserved if k.startswith("layers.0.")]) == unobserved
    assert (unobserved > 0) == (tokens == "visual")
    assert torch.equal(experts.gate_up_proj, dense_gate_up)  # the copy was pruned, not the model


def test_the_mot_probe_sends_each_experts_text_and_visual_tokens_through_their_own_copies(moe):
    model, adapter = moe.model, moe.adapter
    inputs = image_inputs(moe)
    sample = capture(model, adapter, inputs, "moe")
    probe = to_mot(weight_sharing_copy(model), adapter)
    names = adapter.pathway_linears(layer=adapter.decoder_layers(model)[0])
    assert any(".per_expert.gate_up_proj." in n for n in names) and any(".per_expert.down_proj." in n for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prune_pathway(probe, [sample], PruneConfig(method="wanda"), "visual", show_progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the model's own = text pathway
    copies = [r.visual for layer in adapter.decoder_layers(probe.model) for r in probe.routed_linears(layer).values()]
    assert all(isinstance(c, nn.Linear) and abs(float((c.weight == 0).float().mean()) - 0.5) < 0.01 for c in copies)

    text_only = {"input_ids": inputs["input_ids"][:, ~sample.visual_mask.reshape(-1)]}
    with torch.no_grad():
        dense = model(**text_only, use_cache=False).logits
        routed = probe.model(**text_only, use_cache=False).logits
        assert torch.equal(dense, routed)  # text tokens never reach a pruned visual copy
        with_image = model(**inputs, use_cache=False).logits
        assert not torch.allclose(with_image, probe.model(**inputs, use_cache=False).logits)


def test_experts_that_cannot_be_told_apart_by_their_tokens_are_refused():
    class Batched(nn.Module):  # as Llama 4: routing weights applied to the input, one product over all experts
        def __init__(self):
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.randn(2, 4, 8))
            self.down_proj = nn.Parameter(torch.randn(2, 4, 4))

        def forward(self, hidden_states):
            return torch.bmm(hidden_states.view(2, -1, 4), self.gate_up_proj)

    with pytest.raises(ExpertsError, match="cannot be told apart by the tokens routed to them"):
        check_experts("moe", 0, "mlp.experts", Batched())

    class Reordered(nn.Module):  # gathers an expert's rows in another order than the routing
        def __init__(self):
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.randn(2, 8, 4))
            self.down_proj = nn.Parameter(torch.randn(2, 4, 4))

        def forward(self, hidden_states, top_k_index, top_k_weights):
            out = torch.zeros_like(hidden_states)
            for e in range(2):
                tokens = torch.where((top_k_index == e).any(dim=-1))[0].flip(0)
                gate, up = F.linear(hidden_states[tokens], self.gate_up_proj[e]).chunk(2, dim=-1)
                out[tokens] += F.linear(F.silu(gate) * up, self.down_proj[e])
            return out

    block = nn.Module()
    block.experts = Reordered()
    split_experts(block, "moe", 0)
    assert isinstance(block.get_submodule("experts.per_expert.gate_up_proj.1"), ExpertLinear)
    assert not list(block.experts.per_expert.parameters())  # views only: the state dict is unchanged
    hidden = torch.randn(5, 4)
    with pytest.raises(ExpertsError, match="reads rows that are not the tokens routed to it"):
        block.experts(hidden, torch.tensor([[0], [1], [0], [1], [0]]), torch.ones(5, 1))


def test_a_hybrid_stack_keeps_each_kind_of_block_and_refuses_attention_methods_before_work():
    loaded = tiny_loaded("qwen3_5")  # three linear-attention blocks, then one of full attention
    model, adapter = loaded.model, loaded.adapter
    assert isinstance(adapter, GenericAdapter) and adapter.hybrid
    layers = adapter.decoder_layers(model)
    assert [adapter.kind(layer).mixer for layer in layers] == ["linear_attn"] * 3 + ["self_attn"]
    assert adapter.output_name(layers[0]) == "linear_attn.out_proj"
    assert adapter.output_name(layers[3]) == "self_attn.o_proj"
    assert adapter.attention_module(layers[3]) is layers[3].self_attn
    assert set(adapter.linear_names(layers[0])) == {n for n, m in layers[0].named_modules() if isinstance(m, nn.Linear)}
    assert ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj") in adapter.shared_inputs
    with pytest.raises(NoAttentionError, match="computes no attention probabilities"):
        adapter.attention_module(layers[0])

    sample = capture(model, adapter, image_inputs(loaded), "hybrid")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NoAttentionError):
        prune(model, adapter, [sample], PruneConfig(method="tamp"), show_progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # refused before any work
    report = prune(model, adapter, [sample], PruneConfig(method="wanda"), show_progress=False)
    assert sum(key.startswith("layers.0.") for key in report.sparsity) == 8  # 5 linear-attention + 3 MLP
    assert sum(key.startswith("layers.3.") for key in report.sparsity) == 7


def test_blocks_of_one_kind_with_different_linears_are_refused():
    import transformers as tf

    from probe.models.tiny import text_config

    layers = tf.LlamaForCausalLM(text_config(tf.LlamaConfig, 128)).model.layers
    assert list(block_kinds("llama", layers).values()) == [[0, 1, 2]]
    layers[1].self_attn.extra = nn.Linear(4, 4)
    with pytest.raises(UnsupportedArchitectureError, match="blocks 0 and 1 have the same modules but different"):
        block_kinds("odd", layers)
