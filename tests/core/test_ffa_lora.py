"""FFA-LoRA: A stays at its random init (a buffer: in the file and the checkpoint, never in
the optimizer), only B trains; merge, save/load and PEFT export as for LoRA."""
import pytest
import torch

import lorakit

from .test_lightning import TinyClassifier
from .variant_properties import ALL, check_merge_and_unmerge, check_save_and_load, peft_logits, step

peft = pytest.importorskip("peft")


@pytest.mark.parametrize("case", ALL)
def test_merge_equals_unmerged_forward_and_unmerge_restores_the_base(case):
    check_merge_and_unmerge(case, method="ffa_lora", rank=3, alpha=6)


@pytest.mark.parametrize("case", ALL)
def test_save_and_load_round_trip_bit_exactly_a_included(case, tmp_path):
    check_save_and_load(case, tmp_path, method="ffa_lora", rank=2)
    meta, tensors = lorakit.read_adapter(tmp_path / "a.safetensors")
    assert any(k.endswith(".lora_A") for k in tensors)


def test_the_optimizer_gets_b_only_and_a_step_leaves_a_as_it_was(tiny_bert):
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=4, method="ffa_lora",
                                                        targets=["*.query", "*.value"]))
    variants = adapters.variants().values()
    assert {id(p) for p in adapters.parameters()} == {id(v.lora_B) for v in variants}
    assert {id(p) for ps in adapters.param_groups().values() for p in ps} \
        == {id(v.lora_B) for v in variants}
    assert adapters.trainable_count() == 4 * 32 * 4          # 4 modules, out 32, r 4
    before = {k: t.clone() for k, t in adapters.state_dict().items()}
    step(model, adapters, torch.randint(0, 60, (3, 12)), torch.tensor([0, 1, 1]))
    after = adapters.state_dict()
    for key in before:
        moved = not torch.equal(before[key], after[key])
        assert moved == key.endswith(".lora_B"), key


def test_lorakit_export_loads_in_peft_with_the_same_logits(tiny_bert, tmp_path):
    ids = torch.randint(0, 60, (3, 12))
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=4, alpha=8, method="ffa_lora",
                                                        targets=["*.query", "*.value"]))
    step(model, adapters, ids, torch.tensor([0, 1, 1]), lr=0.1)
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    assert (ours - peft_logits(peft, tiny_bert, adapters, ids, tmp_path)).abs().max() <= 1e-5


class FFAClassifier(TinyClassifier):
    def __init__(self):
        super().__init__(rank=2, dropout=0.0)
        self.adapters.detach()
        self.attach_adapters(self.model, lorakit.LoRAConfig(rank=2, method="ffa_lora",
                                                            targets=["*.query", "*.value"]))


def test_a_checkpoint_keeps_the_frozen_a_and_the_optimizer_never_sees_it():
    module = FFAClassifier()
    in_opt = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    a = {path: v.lora_A for path, v in module.adapters.variants().items()}
    assert not in_opt & {id(t) for t in a.values()}
    state = module.trainable_state()
    for path, t in a.items():
        key = next(k for k in state if k.endswith(f"{path}.variants.default.lora_A"))
        assert torch.equal(state[key], t)
    other = FFAClassifier()
    with torch.no_grad():         # another A, which the checkpoint's state must replace
        for v in other.adapters.variants().values():
            v.lora_A.add_(1.0)
    other.load_state_dict(state, strict=False)
    for path, v in other.adapters.variants().items():
        assert torch.equal(v.lora_A, a[path])
