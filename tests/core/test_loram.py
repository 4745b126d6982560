"""LoRAM: LoRA trained on the pruned base, recovered to the full base's shapes, is the same
update on the kept units (zeros elsewhere), loads with `lorakit.load_adapter` onto the full
model and gives, on the kept path, what the pruned model gave."""
import pytest
import torch

import lorakit
from lorakit.compress.loram import align, loram, prune_base, recover
from lorakit.compress.prune import PruneSpec
from lorakit.compress.structure import linear

from .tiny_transformers import (
    LLAMA_TARGETS,
    attach_lora,
    lm_batches,
    randomise_adapters,
    tiny_llama,
    tokens,
    zero_pruned_units,
)


@pytest.fixture
def trained(tmp_path):
    """A full base, its pruned copy (LLM-Pruner's criterion) with a LoRA of random factors on
    every projection, and the recovered adapter file."""
    full = tiny_llama()
    small, report = prune_base(full, PruneSpec(ratio=0.5), "taylor", batches=lm_batches(2))
    adapters = attach_lora(small, LLAMA_TARGETS, seed=3)
    path = recover(adapters, report, tmp_path / "full.safetensors")
    return full, small, adapters, report, path


def test_recovered_delta_equals_the_pruned_delta_on_kept_units_and_is_zero_elsewhere(trained):
    full, small, adapters, report, path = trained
    assert full.config.num_attention_heads == 6 and small.config.num_attention_heads == 3
    loaded = lorakit.load_adapter(full, path)
    for p, variant in loaded.variants().items():
        dw_full = variant.delta_weight()
        dw_small = adapters.variants()[p].delta_weight()
        rows = torch.tensor(report.kept[p]["rows"])
        cols = torch.tensor(report.kept[p]["cols"])
        assert list(dw_full.shape) == report.shapes[p]
        assert torch.equal(dw_full[rows][:, cols], dw_small)
        rest = torch.ones_like(dw_full, dtype=torch.bool)
        rest[rows.unsqueeze(1), cols] = False
        assert rest.any() and not dw_full[rest].any()


def test_recovered_adapter_on_the_full_model_matches_the_pruned_model_on_the_kept_path(trained):
    full, small, adapters, report, path = trained
    lorakit.load_adapter(full, path)
    ids = tokens(5)
    with torch.no_grad():
        zero_pruned_units(full, report)     # the full model, its pruned units cut off
        torch.testing.assert_close(full(ids).logits, small(ids).logits, atol=1e-5, rtol=1e-5)
        layer = full.get_submodule("model.layers.0.mlp.down_proj")
        x = torch.randn(3, 64)
        cols = torch.tensor(report.kept["model.layers.0.mlp.down_proj"]["cols"])
        small_layer = small.get_submodule("model.layers.0.mlp.down_proj")
        torch.testing.assert_close(layer(x) - layer.base(x), small_layer(x[:, cols])
                                   - small_layer.base(x[:, cols]))


def test_loram_prunes_aligns_trains_and_recovers(tmp_path):
    full = tiny_llama()
    trained_on = []

    def train(model, adapters):
        trained_on.append(model.config.intermediate_size)
        randomise_adapters(adapters, seed=1)

    before = {n: p.clone() for n, p in full.named_parameters()}
    result = loram(full, lorakit.LoRAConfig(rank=2, targets=LLAMA_TARGETS), train,
                   tmp_path / "a.safetensors", PruneSpec(ratio=0.5), "magnitude",
                   align_batches=lm_batches(2), align_steps=3)
    assert trained_on == [32] and len(result.align_losses) == 3
    assert result.report.params_after < result.report.params_before
    assert all(torch.equal(p, before[n]) for n, p in full.named_parameters())   # a copy pruned
    assert not any(p.requires_grad for n, p in result.pruned.named_parameters()
                   if "lora_" not in n)
    adapters = lorakit.load_adapter(full, result.adapter_file)
    meta = lorakit.read_adapter(result.adapter_file)[0]
    assert meta["extra"]["loram"]["channels_after"] == 32
    assert linear(full, "model.layers.0.mlp.down_proj").weight.shape == (48, 64)
    assert adapters.variants()["model.layers.0.mlp.down_proj"].lora_A.shape == (2, 64)


def test_the_recovered_file_is_refused_by_the_pruned_model(trained):
    _, small, adapters, _, path = trained
    adapters.detach()
    with pytest.raises(lorakit.AdapterMismatchError, match="made for another base"):
        lorakit.load_adapter(small, path)


def test_align_lowers_the_loss_and_recovery_refuses_other_methods(tmp_path):
    small, report = prune_base(tiny_llama(), PruneSpec(ratio=0.5), "magnitude")
    losses = align(small, lm_batches(1), steps=8, lr=1e-2)
    assert losses[-1] < losses[0]
    adapters = lorakit.attach(small, lorakit.LoRAConfig(method="dora", rank=2,
                                                        targets=["o_proj"]))
    with pytest.raises(lorakit.LoraKitError, match="plain LoRA factors"):
        recover(adapters, report, tmp_path / "x.safetensors")
