"""L4Q: W + s·B A fake-quantized with learned LSQ step sizes; the export loads with torch and
safetensors alone and gives the training forward's logits."""
import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lorakit
from lorakit.compress import l4q_format
from lorakit.compress.l4q import export_l4q
from lorakit.compress.l4q_format import load_l4q_state, pack_codes, unpack_codes
from lorakit.variants.l4q import fake_quantize

from .tiny import tiny_llama, token_batch

LLAMA = ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.gate_proj", "*.up_proj",
         "*.down_proj"]


def config(**over):
    return lorakit.LoRAConfig(**(dict(method="l4q", rank=4, alpha=8.0, targets=["0"]) | over))


def reference(x, w, a, b, scale, step, offset, bits):
    """The same quantizer written with plain autograd: STE round, LSQ's gradient scale."""
    top = 2 ** bits - 1
    width = w.shape[1] // step.shape[1]
    g = 1.0 / math.sqrt(width * top)
    step = (step - step * g).detach() + step * g          # value s, gradient g·ds
    offset = (offset - offset * g).detach() + offset * g
    merged = (w + scale * b @ a).reshape(w.shape[0], -1, width)
    v = ((merged - offset[..., None]) / step[..., None]).clamp(0, top)
    v = (v.round() - v).detach() + v
    q = (v * step[..., None] + offset[..., None]).reshape(w.shape)
    return x @ (q - w).T


def test_the_layer_starts_at_the_min_max_quantized_base_and_disabled_is_the_base():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 16))
    w, bias = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    x = torch.randn(5, 128)
    adapters = lorakit.attach(model, config(l4q=lorakit.L4QOptions(bits=3, group_size=32)))
    v = adapters.layers["0"].variants["default"]
    assert v.l4q_step.shape == (16, 4) and v.bits == 3
    q = fake_quantize(w, v.l4q_step, v.l4q_offset, 3)
    assert (q - w).abs().max() <= v.l4q_step.max() / 2 + 1e-6      # round to nearest
    assert len(torch.unique(v.codes(w))) <= 8
    with torch.no_grad():
        assert (model(x) - F.linear(x, q, bias)).abs().max() <= 1e-5
        with adapters.disabled():
            assert torch.equal(model(x), F.linear(x, w, bias))


def test_the_memory_saving_backward_equals_plain_autograd_with_ste_and_lsq_scaling():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 12))
    adapters = lorakit.attach(model, config(l4q=lorakit.L4QOptions(bits=4, group_size=16)))
    v = adapters.layers["0"].variants["default"]
    with torch.no_grad():
        v.lora_B.normal_(0, 0.05)
        v.l4q_step.mul_(0.7)           # some weights now fall outside the range: clamped
    w = model[0].base.weight.detach()
    x = torch.randn(3, 7, 64, requires_grad=True)
    target = torch.randn(3, 7, 12)
    ((model(x) - target) ** 2).sum().backward()
    ours = [t.grad.clone() for t in (x, v.lora_A, v.lora_B, v.l4q_step, v.l4q_offset)]
    leaves = [t.detach().clone().requires_grad_(True)
              for t in (x, v.lora_A, v.lora_B, v.l4q_step, v.l4q_offset)]
    xr, ar, br, sr, orr = leaves
    y = F.linear(xr, w, model[0].base.bias) + reference(xr, w, ar, br, v.scale, sr, orr, 4)
    ((y - target) ** 2).sum().backward()
    for mine, theirs in zip(ours, leaves):
        assert torch.allclose(mine, theirs.grad, rtol=1e-4, atol=1e-5)
    assert ours[4].abs().sum() > 0             # clamped weights move the offsets


def test_training_moves_the_step_sizes_with_the_adapter_and_lowers_the_loss():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(64, 16))
    teacher = nn.Linear(64, 16)
    adapters = lorakit.attach(model, config(rank=4, l4q=lorakit.L4QOptions(bits=3,
                                                                           group_size=32)))
    assert set(adapters.param_groups()) == {"lora", "quant"}
    v = adapters.layers["0"].variants["default"]
    step0 = v.l4q_step.detach().clone()
    opt = torch.optim.Adam(adapters.parameters(), lr=5e-3)
    x = torch.randn(256, 64)
    with torch.no_grad():
        y = teacher(x)
    losses = []
    for _ in range(60):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (v.l4q_step - step0).abs().max() > 1e-4


def test_a_quantized_base_is_refused_by_name_and_so_are_dropout_and_a_misfit_group():
    from lorakit.layers.quantized import QuantizedLinear

    pytest.importorskip("hqq")
    quantized = nn.Sequential(QuantizedLinear.from_linear(nn.Linear(64, 8), "int4-g64"))
    with pytest.raises(lorakit.LoraKitError, match="QuantizedLinear"):
        lorakit.attach(quantized, config())
    with pytest.raises(lorakit.LoraKitError, match="dropout"):
        lorakit.attach(nn.Sequential(nn.Linear(64, 8)), config(dropout=0.1))
    with pytest.raises(lorakit.LoraKitError, match="in_features=96.*groups of 64"):
        lorakit.attach(nn.Sequential(nn.Linear(96, 8)), config())


def test_the_options_survive_the_adapter_file(tmp_path):
    model = nn.Sequential(nn.Linear(64, 8))
    cfg = config(l4q=lorakit.L4QOptions(bits=3, group_size=32))
    assert cfg.to_dict()["l4q_bits"] == 3
    adapters = lorakit.attach(model, cfg)
    adapters.save(tmp_path / "a.safetensors")
    loaded = lorakit.load_adapter(nn.Sequential(nn.Linear(64, 8)), tmp_path / "a.safetensors")
    assert loaded.config.l4q == lorakit.L4QOptions(bits=3, group_size=32)
    with pytest.raises(lorakit.LoraKitError, match="l4q.bits"):
        lorakit.L4QOptions(bits=9)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_codes_pack_and_unpack_exactly(bits):
    codes = torch.randint(0, 2 ** bits, (7, 3, 5))
    packed = pack_codes(codes, bits)
    assert packed.numel() == math.ceil(codes.numel() / (8 // {2: 2, 3: 4, 4: 4, 8: 8}[bits]))
    assert torch.equal(unpack_codes(packed, bits, codes.numel()).reshape(codes.shape),
                       codes.to(torch.uint8))


def test_the_exported_model_loads_without_lorakit_and_gives_the_training_logits(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = tiny_llama()
    ids = token_batch()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(
        method="l4q", rank=4, alpha=8.0, targets=LLAMA,
        l4q=lorakit.L4QOptions(bits=4, group_size=32)))
    opt = torch.optim.Adam(adapters.parameters(), lr=1e-2)
    for _ in range(3):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        trained = model(ids).logits
    path = export_l4q(model, adapters, tmp_path / "out")
    fresh = LlamaForCausalLM(LlamaConfig.from_pretrained(tmp_path / "out")).eval()
    fresh.load_state_dict(load_l4q_state(path), strict=True)
    with torch.no_grad():
        exported = fresh(ids).logits
    assert (exported - trained).abs().max() <= 1e-4
    with torch.no_grad(), adapters.disabled():          # quantization moved the logits
        assert (model(ids).logits - trained).abs().max() > 1e-3
    with torch.no_grad():
        adapters.merge()
        assert (model(ids).logits - trained).abs().max() <= 1e-4
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        codes = f.get_tensor("model.layers.0.self_attn.q_proj.weight.codes")
    assert codes.dtype == torch.uint8 and codes.numel() == 64 * 64 // 2     # two per byte


def test_the_loader_imports_nothing_of_lorakit():
    tree = ast.parse(Path(l4q_format.__file__).read_text())
    modules = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert modules <= {"__future__", "json", "torch", "safetensors"}


def test_the_update_from_file_tensors_alone_equals_the_live_one(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 8))
    adapters = lorakit.attach(model, config(l4q=lorakit.L4QOptions(bits=2, group_size=16)))
    v = adapters.layers["0"].variants["default"]
    with torch.no_grad():
        v.lora_B.normal_(0, 0.1)
    w = model[0].base.weight.detach()
    adapters.save(tmp_path / "a.safetensors")
    _, tensors = lorakit.read_adapter(tmp_path / "a.safetensors")
    from_file = lorakit.L4Q.file_delta(tensors, "0", lorakit.KINDS["linear"], tuple(w.shape),
                                       v.scale, weight=w)
    assert torch.equal(from_file, v.delta_weight(w))
    assert from_file.abs().max() > 0
    with pytest.raises(lorakit.LoraKitError, match="base weight was not given"):
        lorakit.L4Q.file_delta(tensors, "0", lorakit.KINDS["linear"], tuple(w.shape), v.scale)


def test_adapter_module_puts_the_step_sizes_in_their_own_group_without_weight_decay():
    from lorakit import AdapterModule

    class Tiny(AdapterModule):
        def __init__(self):
            super().__init__(lr=1e-3, weight_decay=0.1)
            self.model = nn.Sequential(nn.Linear(64, 8))
            self.attach_adapters(self.model, config())

    groups = {g["name"]: g for g in Tiny().param_groups()}
    assert set(groups) == {"lora", "quant"}
    assert groups["quant"]["weight_decay"] == 0.0 and groups["lora"]["weight_decay"] == 0.1
    assert sum(p.numel() for p in groups["quant"]["params"]) == 2 * 8
