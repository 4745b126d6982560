"""Importance criteria: each ranks a planted dead unit lowest, LoRAPrune's reads LoRA's
gradients only (the base weights get none), its per-element formula is the paper's, and the
scores are smoothed with the moving average."""
import pytest
import torch

import lorakit
from lorakit.compress.importance import ScoreAccumulator, UnitScores, unit_scores
from lorakit.compress.prune import PruneSpec, prune
from lorakit.compress.structure import blocks, linear

from .tiny_transformers import LLAMA_TARGETS, attach_lora, lm_batches, tiny_bert, tiny_llama

DEAD_GROUP, DEAD_CHANNEL = 1, 5


@torch.no_grad()
def plant_dead_units(model, adapters=None):
    """Zero KV group 1 (KV head 1, query heads 3-5) and channel 5 of every block: in the base
    weights, and in the adapters' factors on them, so the effective weight is zero too."""
    d = 8
    q_rows = slice(3 * d, 6 * d)
    kv_rows = slice(DEAD_GROUP * d, (DEAD_GROUP + 1) * d)
    for block in blocks(model):
        cuts = [(block.q, 0, q_rows), (block.k, 0, kv_rows), (block.v, 0, kv_rows),
                (block.o, 1, q_rows), *((p, 0, DEAD_CHANNEL) for p in block.mlp_in),
                (block.mlp_out, 1, DEAD_CHANNEL)]
        for path, dim, idx in cuts:
            w = linear(model, path).weight
            (w[idx] if dim == 0 else w[:, idx]).zero_()
            if adapters is not None and path in adapters.variants():
                a, b = adapters.variants()[path].factors()
                (b[idx] if dim == 0 else a[:, idx]).zero_()


@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "loraprune"])
def test_each_criterion_prunes_a_planted_dead_unit_first(criterion):
    model = tiny_llama()
    adapters = attach_lora(model, LLAMA_TARGETS) if criterion == "loraprune" else None
    plant_dead_units(model, adapters)
    scores = unit_scores(model, criterion, batches=lm_batches(2))
    for b in range(2):
        group = scores.kv_heads[b] + scores.heads[b].reshape(2, 3).sum(1)
        assert int(group.argmin()) == DEAD_GROUP and float(group[DEAD_GROUP]) == 0.0
        assert float(group[1 - DEAD_GROUP]) > 0.0
        assert int(scores.channels[b].argmin()) == DEAD_CHANNEL
        assert float(scores.channels[b][DEAD_CHANNEL]) == 0.0
    report = prune(model, scores, PruneSpec(ratio=0.5))
    assert all(kept == [1 - DEAD_GROUP] for kept in report.kept_kv_heads.values())
    assert all(DEAD_CHANNEL not in kept for kept in report.kept_channels.values())


def test_magnitude_ranks_a_zeroed_bert_head_lowest():
    model = tiny_bert()
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            for lin in (layer.attention.self.query, layer.attention.self.key,
                        layer.attention.self.value):
                lin.weight[16:24] = 0
            layer.attention.output.dense.weight[:, 16:24] = 0
    scores = unit_scores(model, "magnitude")
    report = prune(model, scores, PruneSpec(ratio=0.25, channels=False))
    assert all(kept == [0, 1, 3] for kept in report.kept_heads.values())


def test_loraprune_reads_no_base_weight_gradient():
    model = tiny_llama()
    adapters = attach_lora(model, LLAMA_TARGETS)
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert base and not any(p.requires_grad for p in base)
    scores = unit_scores(model, "loraprune", batches=lm_batches(2))
    assert all(p.grad is None and not p.requires_grad for p in base)
    assert all(p.grad is None for p in adapters.parameters())      # its own gradients dropped
    for table in (scores.heads, scores.kv_heads, scores.channels):
        assert all(torch.isfinite(t).all() and (t > 0).all() for t in table.values())


def test_loraprune_refuses_a_model_without_adapters():
    with pytest.raises(lorakit.LoraKitError, match="carries no active lorakit adapter"):
        unit_scores(tiny_llama(), "loraprune", batches=lm_batches(1))


def test_loraprune_element_importance_is_the_papers_formula():
    model = tiny_llama()
    adapters = attach_lora(model, LLAMA_TARGETS)
    ids = lm_batches(1)[0]
    model(**ids).loss.backward()
    path = "model.layers.1.mlp.down_proj"
    variant = adapters.variants()[path]
    a, b = variant.lora_A, variant.lora_B
    w = linear(model, path).weight + variant.scale * b.detach() @ a.detach()
    expected = (w * (b.grad @ a.detach() + b.detach() @ a.grad - b.grad @ a.grad)).abs()
    acc = ScoreAccumulator(model, "loraprune")
    torch.testing.assert_close(acc._element(path), expected)
    # a channel's score: each module's per-channel sums, L2-normalised, added over modules
    parts = [acc._element(f"model.layers.1.mlp.{n}").sum(1) for n in ("gate_proj", "up_proj")]
    parts.append(expected.sum(0))            # down_proj: a channel is a column
    want = sum(s / (s.norm() + 1e-8) for s in parts)
    torch.testing.assert_close(acc.current().channels[1], want)


def test_taylor_scores_are_a_moving_average_and_gradients_are_given_back():
    model = tiny_llama()
    model.requires_grad_(False)
    acc = ScoreAccumulator(model, "taylor", beta=0.9)
    assert linear(model, "model.layers.0.self_attn.q_proj").weight.requires_grad
    steps = []
    for batch in lm_batches(2):
        model(**batch).loss.backward()
        steps.append(acc.current())
        acc.update()
        assert linear(model, "model.layers.0.mlp.up_proj").weight.grad is None   # read, dropped
    expected = 0.9 * steps[0].channels[0] + 0.1 * steps[1].channels[0]
    torch.testing.assert_close(acc.scores().channels[0], expected)
    acc.close()
    assert not any(p.requires_grad for p in model.parameters())


def test_unit_scores_refuses_what_it_cannot_do():
    with pytest.raises(lorakit.LoraKitError, match="criterion must be one of"):
        unit_scores(tiny_llama(), "fisher")
    with pytest.raises(lorakit.LoraKitError, match="needs batches"):
        unit_scores(tiny_llama(), "taylor")
    model = tiny_llama()
    stale = UnitScores("magnitude", {0: torch.ones(5)}, {}, {0: torch.ones(64)})
    with pytest.raises(lorakit.LoraKitError, match="has 6 query heads"):
        prune(model, stale, PruneSpec())
