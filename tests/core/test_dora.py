"""DoRA: starts at the base (m = row norms of W), merge equals the unmerged forward and
unmerge restores W on every layer kind, files round-trip bit-exactly, `adapter merge`
folds it from the file, and PEFT's DoRA gives the same logits and gradients both ways."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit
from lorakit.compose.merge_file import merge_into_state_file

from .test_layer_kinds import output
from .variant_properties import (
    ALL,
    check_merge_and_unmerge,
    check_save_and_load,
    mlp,
    peft_base,
)

peft = pytest.importorskip("peft")


def perturb(adapters, seed=0):
    """Random A and B, and each magnitude scaled by a factor in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in adapters.variants().values():
            v.lora_A.copy_(torch.randn(v.lora_A.shape, generator=g) * 0.3)
            v.lora_B.copy_(torch.randn(v.lora_B.shape, generator=g) * 0.3)
            v.lora_magnitude.mul_(0.5 + torch.rand(v.lora_magnitude.shape, generator=g))


def dora(targets, **kw):
    return lorakit.LoRAConfig(method="dora", targets=targets, **kw)


@pytest.mark.parametrize("case", ALL)
def test_merge_equals_unmerged_forward_and_unmerge_restores_the_base(case):
    check_merge_and_unmerge(case, prepare=perturb, method="dora", rank=3, alpha=6)


def test_merged_rows_have_the_trained_magnitude_as_norm():
    model = mlp()
    adapters = lorakit.attach(model, dora(["0", "2"], rank=3, alpha=6))
    perturb(adapters)
    adapters.merge()
    for v, layer in zip(adapters.variants().values(), adapters.layers.values()):
        # W' = m ⊙ (W + s·B A) / ‖W + s·B A‖: every merged row has norm m (sec. 4.1, eq. 5)
        rows = torch.linalg.vector_norm(layer.base.weight, dim=1)
        assert torch.allclose(rows, v.lora_magnitude, rtol=1e-5, atol=1e-6)


def test_a_weighted_merge_equals_the_weighted_unmerged_forward():
    model = mlp()
    x = torch.randn(4, 6)
    adapters = lorakit.attach(model, dora(["0", "2"], rank=2))
    perturb(adapters)
    w0 = model[0].base.weight.detach().clone()
    with torch.no_grad():
        adapters.set_active({"default": 0.4})
        unmerged = model(x)
        adapters.merge()
        assert (model(x) - unmerged).abs().max() <= 1e-5
        adapters.unmerge()
    assert (model[0].base.weight - w0).abs().max() <= 1e-6


@pytest.mark.parametrize("case", ALL)
def test_save_and_load_round_trip_bit_exactly(case, tmp_path):
    check_save_and_load(case, tmp_path, prepare=perturb, method="dora", rank=2)


def test_adapter_merge_folds_dora_into_a_saved_base_from_the_file_alone(tmp_path):
    x = torch.randn(4, 6)
    model = mlp()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "base.safetensors"))
    adapters = lorakit.attach(model, dora(["0", "2"], rank=2))
    perturb(adapters)
    adapters.save(tmp_path / "a.safetensors")
    merged_file = tmp_path / "merged.safetensors"
    assert merge_into_state_file(tmp_path / "a.safetensors", tmp_path / "base.safetensors",
                                 merged_file) == 2
    fresh = mlp(seed=1)
    fresh.load_state_dict(load_file(str(merged_file)))
    with torch.no_grad():
        assert (fresh(x) - model(x)).abs().max() <= 1e-5


def test_a_training_step_moves_a_b_and_the_magnitude_and_never_the_base():
    model = mlp()
    adapters = lorakit.attach(model, dora(["0", "2"], rank=2))
    perturb(adapters)
    assert set(adapters.param_groups()) == {"lora"}
    before = {k: t.clone() for k, t in adapters.state_dict().items()}
    base = [p.detach().clone() for p in model[0].base.parameters()]
    opt = torch.optim.SGD(adapters.parameters(), lr=0.1)
    model(torch.randn(5, 6)).pow(2).sum().backward()
    opt.step()
    after = adapters.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before), \
        [k for k in before if torch.equal(before[k], after[k])]
    assert all(torch.equal(b, p) for b, p in zip(base, model[0].base.parameters()))


def test_dora_cannot_be_routed():
    model = mlp()
    lorakit.attach(model, dora(["0"], rank=2))
    with pytest.raises(lorakit.LoraKitError, match="cannot be routed"):
        with lorakit.adapters_of(model).route([0, 0]):
            pass


@pytest.mark.parametrize("case", ALL)
def test_lorakit_dora_exports_to_peft_with_equal_outputs(case, tmp_path):
    make, targets, inputs = ALL[case]
    x = inputs()
    model = make()
    adapters = lorakit.attach(model, dora(targets, rank=3, alpha=5))
    perturb(adapters)
    ours = output(model, x)
    out = lorakit.export_peft(adapters, tmp_path / "peft")
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
    theirs = output(peft.PeftModel.from_pretrained(peft_base(case), str(out)).eval(), x)
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("case", ALL)
def test_a_peft_dora_adapter_imports_as_lorakit_dora_with_equal_outputs(case, tmp_path):
    make, targets, inputs = ALL[case]
    x = inputs()
    names = [n for n, m in make().named_modules()
             if n and any(lorakit.adapters.matches(n, t) for t in targets)]
    peft_model = peft.get_peft_model(peft_base(case), peft.LoraConfig(
        r=3, lora_alpha=7, target_modules=names, use_dora=True, init_lora_weights=False))
    with torch.no_grad():   # a magnitude away from ‖W‖, as after training
        for n, p in peft_model.named_parameters():
            if "lora_magnitude_vector" in n:
                p.mul_(1.3)
    peft_model.eval()
    theirs = output(peft_model, x)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    model = make()
    adapters = lorakit.import_peft(tmp_path / "peft", model)
    assert adapters.configs["default"].method == "dora"
    assert (output(model, x) - theirs).abs().max() <= 1e-5


def test_gradients_equal_peft_dora_with_the_norm_detached(tiny_bert, tmp_path):
    ids = torch.randint(0, 60, (3, 12))
    labels = torch.tensor([0, 1, 1])
    peft_model = peft.get_peft_model(tiny_bert(), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], use_dora=True,
        init_lora_weights=False))
    peft_model.save_pretrained(str(tmp_path / "peft"))
    model = tiny_bert()
    adapters = lorakit.import_peft(tmp_path / "peft", model)
    peft_model(input_ids=ids, labels=labels).loss.backward()
    model(input_ids=ids, labels=labels).loss.backward()
    theirs = {n: p.grad for n, p in peft_model.named_parameters() if p.grad is not None}
    path = "bert.encoder.layer.0.attention.self.query"
    v = adapters.variants()[path]
    prefix = f"base_model.model.{path}"
    assert torch.allclose(v.lora_A.grad, theirs[f"{prefix}.lora_A.default.weight"], atol=1e-6)
    assert torch.allclose(v.lora_B.grad, theirs[f"{prefix}.lora_B.default.weight"], atol=1e-6)
    assert torch.allclose(v.lora_magnitude.grad,
                          theirs[f"{prefix}.lora_magnitude_vector.default.weight"], atol=1e-6)
