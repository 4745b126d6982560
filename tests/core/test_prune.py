"""Structured pruning: a pruned Llama (GQA) or BERT is the full model with those units cut
out, its config describes every layer, it round-trips save/load bit-exactly and still
generates; adapters on pruned modules are sliced with them, and so is the optimizer state."""
import copy

import pytest
import torch
from transformers import BertForSequenceClassification, LlamaForCausalLM

import lorakit
from lorakit.compress.importance import unit_scores
from lorakit.compress.prune import PruneReport, PruneSpec, load_pruned, prune, size
from lorakit.compress.structure import blocks, linear

from .tiny_transformers import (
    BERT_TARGETS,
    LLAMA_TARGETS,
    attach_lora,
    tiny_bert,
    tiny_llama,
    tokens,
    zero_pruned_units,
)


def random_scores(model, seed=0):
    """Scores that pick units at random (not the first ones), so the test sees the index maps."""
    scores = unit_scores(model, "magnitude")
    g = torch.Generator().manual_seed(seed)
    for table in (scores.heads, scores.kv_heads, scores.channels):
        for i, t in table.items():
            table[i] = torch.rand(t.shape, generator=g)
    return scores


@pytest.mark.parametrize("gqa, heads, kv", [("groups", 3, 1), ("queries", 4, 2)])
def test_pruned_llama_equals_the_full_model_with_its_units_zeroed(gqa, heads, kv):
    model = tiny_llama()
    full = copy.deepcopy(model)
    ratio = 0.5 if gqa == "groups" else 0.34      # queries: 2 of the 3 heads of each group
    report = prune(model, random_scores(model), PruneSpec(ratio=ratio, gqa=gqa))
    assert (report.heads_after, report.kv_heads_after, report.channels_after) == (heads, kv,
                                                                                32 if gqa == "groups" else 42)
    if gqa == "groups":   # whole groups: a kept KV head keeps all 3 of its query heads
        for b, kept_kv in report.kept_kv_heads.items():
            assert report.kept_heads[b] == [3 * g + j for g in kept_kv for j in range(3)]
    else:                 # every KV head stays, 2 query heads of each group
        for b, kept_q in report.kept_heads.items():
            assert report.kept_kv_heads[b] == [0, 1]
            assert [h // 3 for h in kept_q] == [0, 0, 1, 1]
    zero_pruned_units(full, report)
    ids = tokens()
    torch.testing.assert_close(model(ids).logits, full(ids).logits, atol=1e-5, rtol=1e-5)


def test_pruned_llama_config_describes_every_layer():
    model = tiny_llama()
    prune(model, random_scores(model), PruneSpec(ratio=0.5))
    c = model.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size) == (
        3, 1, 8, 32)
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        assert a.q_proj.weight.shape == (c.num_attention_heads * c.head_dim, c.hidden_size)
        assert a.k_proj.weight.shape == a.v_proj.weight.shape == (
            c.num_key_value_heads * c.head_dim, c.hidden_size)
        assert a.o_proj.weight.shape == (c.hidden_size, c.num_attention_heads * c.head_dim)
        assert a.num_key_value_groups == c.num_attention_heads // c.num_key_value_heads
        assert m.gate_proj.weight.shape == m.up_proj.weight.shape == (c.intermediate_size,
                                                                      c.hidden_size)
        assert m.down_proj.weight.shape == (c.hidden_size, c.intermediate_size)
    fresh = LlamaForCausalLM(c)    # the config alone builds the same shapes
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()}


def test_pruned_llama_round_trips_save_pretrained_bit_exactly_and_generates(tmp_path):
    model = tiny_llama()
    report = prune(model, random_scores(model), PruneSpec(ratio=0.5))
    model.save_pretrained(tmp_path)
    back = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = tokens()
    assert torch.equal(model(ids).logits, back(ids).logits)
    out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 16)
    assert torch.equal(out, back.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0))
    assert size(back) == (report.params_after, report.bytes_after)
    assert report.params_after == sum(p.numel() for p in back.parameters())
    assert report.bytes_after == 4 * report.params_after      # float32


def test_llama_head_count_is_raised_to_one_transformers_config_accepts():
    # 6 heads in 6 groups, hidden 48: 5 heads fails `hidden % heads` in LlamaConfig, so 6 stay
    model = tiny_llama(heads=6, kv_heads=6)
    report = prune(model, random_scores(model), PruneSpec(ratio=0.2, channels=False))
    assert (report.heads_after, report.heads_before) == (6, 6)
    report = prune(model, random_scores(model), PruneSpec(ratio=0.5, channels=False))
    assert report.heads_after == 3 and model.config.num_attention_heads == 3


def test_bert_channel_pruning_round_trips_through_from_pretrained(tmp_path):
    model = tiny_bert()
    full = copy.deepcopy(model)
    report = prune(model, random_scores(model), PruneSpec(ratio=0.5, heads=False))
    assert model.config.intermediate_size == report.channels_after == 24
    ids = tokens()
    zero_pruned_units(full, report)
    torch.testing.assert_close(model(ids).logits, full(ids).logits, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    back = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(model(ids).logits, back(ids).logits)


def test_head_pruned_bert_records_pruned_heads_and_loads_with_load_pruned(tmp_path):
    model = tiny_bert()
    full = copy.deepcopy(model)
    report = prune(model, random_scores(model), PruneSpec(ratio=0.5))
    assert report.heads_after == 2 and model.config.num_attention_heads == 4   # head size stays 8
    for b, kept in report.kept_heads.items():
        assert model.config.pruned_heads[str(b)] == sorted(set(range(4)) - set(kept))
        attn = model.bert.encoder.layer[b].attention.self
        assert (attn.num_attention_heads, attn.all_head_size) == (2, 16)
    ids = tokens()
    zero_pruned_units(full, report)
    torch.testing.assert_close(model(ids).logits, full(ids).logits, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        BertForSequenceClassification.from_pretrained(tmp_path)   # BERT's config cannot say it
    back = load_pruned(BertForSequenceClassification, tmp_path)
    assert torch.equal(model(ids).logits, back(ids).logits)
    # a second prune counts removed heads in the original numbering
    again = prune(back, random_scores(back, 1), PruneSpec(ratio=0.5, channels=False))
    for b in range(2):
        first = report.kept_heads[b]
        left = [first[i] for i in again.kept_heads[b]]
        assert back.config.pruned_heads[str(b)] == sorted(set(range(4)) - set(left))


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_adapters_on_pruned_modules_are_sliced_with_them(family):
    make = tiny_llama if family == "llama" else tiny_bert
    model, full = make(), make()            # the same seed: the same weights
    adapters = attach_lora(model, LLAMA_TARGETS if family == "llama" else BERT_TARGETS)
    reference = lorakit.attach(full, adapters.config)
    reference.load_state_dict(adapters.state_dict(), source="test")
    reference.detach(merge=True)            # the full model with the adapter folded in
    report = prune(model, random_scores(model), PruneSpec(ratio=0.5))
    for path, variant in adapters.variants().items():
        lin = linear(model, path)
        a, b = variant.factors()
        assert a.shape[1] == lin.in_features and b.shape[0] == lin.out_features
    zero_pruned_units(full, report)
    ids = tokens()
    torch.testing.assert_close(model(ids).logits, full(ids).logits, atol=1e-4, rtol=1e-4)
    adapters.merge()        # the sliced adapter still merges into the sliced weight
    torch.testing.assert_close(model(ids).logits, full(ids).logits, atol=1e-4, rtol=1e-4)


def test_optimizer_state_is_sliced_so_training_goes_on():
    model = tiny_llama()
    adapters = attach_lora(model, LLAMA_TARGETS)
    opt = torch.optim.AdamW(list(adapters.parameters()), lr=1e-3)
    ids = tokens()
    model(ids, labels=ids).loss.backward()
    opt.step()
    a = adapters.variants()["model.layers.0.self_attn.o_proj"].lora_A
    before = opt.state[a]["exp_avg"].clone()
    report = prune(model, random_scores(model), PruneSpec(ratio=0.5), optimizers=[opt])
    cols = torch.tensor(report.kept["model.layers.0.self_attn.o_proj"]["cols"])
    assert torch.equal(opt.state[a]["exp_avg"], before[:, cols])
    for p in adapters.parameters():
        for v in opt.state[p].values():
            assert not torch.is_tensor(v) or v.ndim == 0 or v.shape == p.shape
    opt.zero_grad()
    model(ids, labels=ids).loss.backward()
    opt.step()                                   # no shape error: the optimizer is still valid


def test_two_prunes_compose_into_one_kept_map():
    model = tiny_llama()
    full = copy.deepcopy(model)
    first = prune(model, random_scores(model, 0), PruneSpec(ratio=0.25, gqa="queries"))
    second = prune(model, random_scores(model, 1), PruneSpec(ratio=0.5, gqa="queries"))
    both = first.then(second)
    assert (both.heads_before, both.heads_after) == (6, 2)
    assert (both.channels_before, both.channels_after) == (64, 24)
    for path, idx in both.kept.items():
        w_full = linear(full, path).weight
        assert list(w_full.shape) == both.shapes[path]
        kept = w_full[torch.tensor(idx["rows"])][:, torch.tensor(idx["cols"])]
        assert torch.equal(kept, linear(model, path).weight)
    assert PruneReport.from_dict(both.to_dict()) == both


def test_pruning_refuses_bad_specs_and_methods_it_cannot_slice():
    with pytest.raises(lorakit.LoraKitError, match="ratio must be in"):
        PruneSpec(ratio=1.0)
    with pytest.raises(lorakit.LoraKitError, match="gqa must be"):
        PruneSpec(gqa="kv")
    with pytest.raises(lorakit.LoraKitError, match="no transformer block"):
        blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    model = tiny_llama()
    lorakit.attach(model, lorakit.LoRAConfig(method="dora", rank=2, targets=["o_proj"]))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(lorakit.LoraKitError, match="plain LoRA factors"):
        prune(model, random_scores(model), PruneSpec())
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes   # nothing changed
