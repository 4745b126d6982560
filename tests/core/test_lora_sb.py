"""LoRA-SB: r² trained numbers per module (R), A and B fixed; `init_from_gradients` sets
scale·B R A to the best rank-r approximation of Adam's first full step, −lr·sign(Ḡ),
in orthonormal bases; merge, save/load and PEFT export (A and B·R) are exact."""
import pytest
import torch

import lorakit
from lorakit.config import LoRASBOptions

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
    adapters = lorakit.attach(model, sb(rank=4, lora_sb=LoRASBOptions(init_lr=1e-3)))
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


def test_parties_gradient_sums_averaged_give_the_init_of_all_batches(tiny_bert):
    """The federated split of the init (Fed-SB's init round): each party's
    `base_gradients` sum, pooled over the parties' batch counts, is the mean over all
    batches, and `apply_gradient_init` of it sets the adapter `init_from_gradients` does."""
    from lorakit.training.gradient_init import apply_gradient_init, base_gradients
    data = batches()
    whole, parts = tiny_bert(), tiny_bert()
    whole_ad = lorakit.attach(whole, sb(rank=4, lora_sb=LoRASBOptions(init_lr=1e-3)))
    parts_ad = lorakit.attach(parts, sb(rank=4, lora_sb=LoRASBOptions(init_lr=1e-3)))
    lorakit.init_from_gradients(whole, whole_ad, data, loss)
    (s1, n1), (s2, n2) = (base_gradients(parts, parts_ad, chunk, loss)
                          for chunk in (data[:1], data[1:]))
    assert (n1, n2) == (1, 2) and set(s1) == set(parts_ad.variants())
    apply_gradient_init(parts_ad, {k: (s1[k] + s2[k]) / (n1 + n2) for k in s1})
    for path, v in whole_ad.variants().items():
        assert torch.allclose(parts_ad.variants()[path].delta_weight(), v.delta_weight(),
                              atol=1e-7)
    with pytest.raises(lorakit.LoraKitError, match="no gradient for module"):
        apply_gradient_init(parts_ad, {k: s1[k] for k in list(s1)[1:]})


def test_clip_bounds_each_batchs_gradient_over_all_modules_together(tiny_bert):
    from lorakit.training.gradient_init import base_gradients
    model = tiny_bert()
    adapters = lorakit.attach(model, sb(rank=2))
    data = batches()
    free = [base_gradients(model, adapters, [b], loss)[0] for b in data]
    norms = [torch.sqrt(sum(g.pow(2).sum() for g in f.values())) for f in free]
    clip = float(min(norms)) / 2
    clipped, count = base_gradients(model, adapters, data, loss, clip=clip)
    assert count == 3
    for path, total in clipped.items():      # each batch scaled to norm ≈ `clip`, summed
        want = sum(f[path] * (clip / (n + 1e-6)) for f, n in zip(free, norms))   # Opacus
        assert torch.allclose(total, want, rtol=1e-4, atol=1e-7)


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
