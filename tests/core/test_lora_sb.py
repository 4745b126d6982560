"""LoRA-SB: r² trained numbers per module (R), A and B fixed; `init_from_gradients` sets
scale·B R A to the best rank-r approximation of Adam's first full step, −lr·sign(Ḡ),
in orthonormal bases; merge, save/load and PEFT export (A and B·R) are exact."""
import pytest
import torch

import lorakit

from .variant_properties import (
    ALL,
    batches,
    check_merge_and_unmerge,
    check_save_and_load,
    loss,
    peft_logits,
    step,
)

peft = pytest.importorskip("peft")

TARGETS = ["*.query", "*.value"]


def sb(rank=4, **kw):
    return lorakit.LoRAConfig(rank=rank, alpha=8, method="lora_sb", targets=TARGETS, **kw)


@pytest.mark.parametrize("case", ALL)
def test_merge_equals_unmerged_forward_and_unmerge_restores_the_base(case):
    check_merge_and_unmerge(case, method="lora_sb", rank=2, alpha=4)


@pytest.mark.parametrize("case", ALL)
def test_save_and_load_round_trip_bit_exactly(case, tmp_path):
    check_save_and_load(case, tmp_path, method="lora_sb", rank=2)


def test_only_r_trains_r_squared_numbers_per_module(tiny_bert):
    adapters = lorakit.attach(tiny_bert(), sb(rank=4))
    assert len(adapters.layers) == 4
    assert adapters.trainable_count() == 4 * 4 ** 2
    assert [t.shape for t in adapters.parameters()] == [torch.Size([4, 4])] * 4


def test_init_is_the_best_rank_r_approximation_of_the_first_adam_step(tiny_bert):
    data = batches()
    reference = tiny_bert()
    weights = [reference.get_submodule(p).weight for p in
               ("bert.encoder.layer.0.attention.self.query",
                "bert.encoder.layer.1.attention.self.value")]
    for w in weights:
        w.requires_grad_(True)
    mean = [sum(g) / len(data) for g in zip(*(torch.autograd.grad(loss(reference, b), weights)
                                              for b in data))]
    model = tiny_bert()
    adapters = lorakit.attach(model, sb(rank=4, init_lr=1e-3))
    assert lorakit.init_from_gradients(model, adapters, data, loss) == 3
    assert not any(layer.base.weight.requires_grad for layer in adapters.layers.values())
    for path, g in zip(("bert.encoder.layer.0.attention.self.query",
                        "bert.encoder.layer.1.attention.self.value"), mean):
        v = adapters.variants()[path]
        first_step = -1e-3 * torch.sign(g)
        u, s, vh = torch.linalg.svd(first_step)
        best = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]          # Eckart-Young
        assert torch.allclose(v.delta_weight(), best, atol=1e-7)
        assert torch.allclose(v.lora_B.T @ v.lora_B, torch.eye(4), atol=1e-5)
        assert torch.allclose(v.lora_A @ v.lora_A.T, torch.eye(4), atol=1e-5)


def test_a_training_step_moves_r_and_nothing_else(tiny_bert):
    model = tiny_bert()
    adapters = lorakit.attach(model, sb())
    lorakit.init_from_gradients(model, adapters, batches(2), loss)
    before = {k: t.clone() for k, t in adapters.state_dict().items()}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    ids, labels = batches(1, seed=5)[0]
    step(model, adapters, ids, labels)
    after = adapters.state_dict()
    for key in before:
        assert (not torch.equal(before[key], after[key])) == key.endswith(".lora_R"), key
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)


def test_lorakit_export_as_a_and_b_r_loads_in_peft_with_the_same_logits(tiny_bert, tmp_path):
    ids, labels = batches(1, seed=3)[0]
    model = tiny_bert()
    adapters = lorakit.attach(model, sb())
    lorakit.init_from_gradients(model, adapters, batches(2), loss)
    step(model, adapters, ids, labels)
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    assert (ours - peft_logits(peft, tiny_bert, adapters, ids, tmp_path)).abs().max() <= 1e-5


def test_methods_without_a_gradient_init_are_refused(tiny_bert):
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=TARGETS))
    with pytest.raises(lorakit.LoraKitError, match="'lora', which has no gradient-driven"):
        lorakit.init_from_gradients(model, adapters, batches(1), loss)
