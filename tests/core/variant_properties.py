"""Properties every adapter method has, checked by the methods' own test files: the
adapted model starts at the base, merge equals the unmerged forward, unmerge and
detach restore the base, a file round-trips bit-exactly onto a fresh base, and PEFT
loads the export with the same logits."""
import pytest
import torch
from torch import nn

import lorakit

from .test_layer_kinds import CASES, output


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def quantized_mlp(seed=0):
    """Two Linears held in NF4 (bitsandbytes), in_features a multiple of the group size."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 8))
    lorakit.quantize(model, "nf4", keep=[])
    return model


# layer kind -> (model maker, target patterns, input maker)
ALL = {"linear": (mlp, ["0", "2"], lambda: torch.randn(4, 6)),
       "quantized_linear": (quantized_mlp, ["0", "2"], lambda: torch.randn(4, 64)), **CASES}


def peft_base(kind):
    """A fresh base of `kind` as PEFT's `from_pretrained` takes it: a quantized one with
    each QuantizedLinear's bitsandbytes Linear4bit in its place (PEFT's QLoRA layer)."""
    model = ALL[kind][0]()
    if lorakit.KINDS[kind].quantized:
        for path, module in list(model.named_modules()):
            if isinstance(module, lorakit.QuantizedLinear):
                model.set_submodule(path, module.inner)
    return model


def randomise_trained(adapters, seed=0):
    """Every trained tensor random (the fixed ones keep their init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def check_merge_and_unmerge(case, prepare=randomise_trained, **config):
    """`config`: the LoRAConfig fields besides the targets, which the case gives. A
    quantized kind: `check_requantized_merge`."""
    if lorakit.KINDS[case].quantized:
        check_requantized_merge(case, prepare, **config)
        return
    make, targets, inputs = ALL[case]
    model = make()
    x = inputs()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    base_out = output(model, x)
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=targets, **config))
    assert case in {layer.kind.name for layer in adapters.layers.values()}
    if lorakit.VARIANTS[config.get("method", "lora")].starts_at_base:
        assert (output(model, x) - base_out).abs().max() <= 1e-6    # starts at the base
    prepare(adapters)
    with torch.no_grad():
        unmerged = output(model, x)
        adapters.merge()
        merged = output(model, x)
        adapters.unmerge()
        restored = output(model, x)
    assert (unmerged - base_out).abs().max() > 1e-3                   # the adapter acts
    assert (merged - unmerged).abs().max() <= 1e-5
    assert (restored - unmerged).abs().max() <= 1e-5
    adapters.detach()
    for n, p in model.named_parameters():
        assert (p - before[n]).abs().max() <= 1e-5, n


def check_requantized_merge(case, prepare=randomise_trained, **config):
    """A quantized base: a plain merge is refused (W + ΔW has no exact quantized form);
    `merge(requantize=True)` leaves exactly the quantization of W + ΔW in each base, so the
    output moves by about one more quantization error, and it cannot be unmerged."""
    make, targets, inputs = ALL[case]
    model = make()
    x = inputs()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=targets, **config))
    prepare(adapters)
    with torch.no_grad():
        unmerged = output(model, x)
        with pytest.raises(lorakit.LoraKitError, match="requantize=True"):
            adapters.merge()
        assert not adapters.merged
        expected = {}
        for path, layer in adapters.layers.items():   # Q(W + ΔW), from the layer's own parts
            weight = layer.base.dequantize()
            layer.variants["default"].merge_into(weight, layer.kind, 1.0)
            expected[path] = lorakit.QuantizedLinear(weight, layer.base.bias,
                                                     layer.base.spec).dequantize()
        adapters.merge(requantize=True)
        merged = output(model, x)
    for path, layer in adapters.layers.items():
        assert torch.equal(layer.base.dequantize(), expected[path]), path
    # NF4's error on W + ΔW, ΔW about as large as W, through two layers: measured 13-18 %
    # of the output (a fresh NF4 matrix: 9 % of the weight, tests/core/test_quantized.py)
    assert (merged - unmerged).norm() / unmerged.norm() < 0.3
    with pytest.raises(lorakit.LoraKitError, match="cannot be unmerged"):
        adapters.unmerge()
    adapters.detach(merge=True, requantize=True)
    with torch.no_grad():
        assert torch.equal(output(model, x), merged)


def check_save_and_load(case, tmp_path, prepare=randomise_trained, **config):
    make, targets, inputs = ALL[case]
    x = inputs()
    src = make()
    adapters = lorakit.attach(src, lorakit.LoRAConfig(targets=targets, **config))
    prepare(adapters)
    adapters.save(tmp_path / "a.safetensors")
    dst = make()
    loaded = lorakit.load_adapter(dst, tmp_path / "a.safetensors")
    ours, theirs = adapters.state_dict(), loaded.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert torch.equal(output(src, x), output(dst, x))


def peft_logits(peft, tiny_bert, adapters, ids, tmp_path):
    """The logits of PEFT's own BERT with the adapter exported into it."""
    out = lorakit.export_peft(adapters, tmp_path / "peft")
    model = peft.PeftModel.from_pretrained(tiny_bert(), str(out)).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def batches(n=3, seed=0):
    """(token ids, labels) batches for tiny_bert."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 60, (4, 12), generator=g), torch.randint(0, 2, (4,), generator=g))
            for _ in range(n)]


def loss(model, batch):
    ids, labels = batch
    return model(input_ids=ids, labels=labels).loss


def step(model, adapters, ids, labels, lr=1e-2):
    """One AdamW step over the handle's param groups, as AdapterModule builds them."""
    groups = [{"params": ps} for ps in adapters.param_groups().values()]
    opt = torch.optim.AdamW(groups, lr=lr)
    model(input_ids=ids, labels=labels).loss.backward()
    opt.step()
    opt.zero_grad()
