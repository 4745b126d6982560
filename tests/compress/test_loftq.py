"""LoftQ: Q + scale·B A starts near W (Algorithm 1), through lorakit's QuantizedLinear and
through PEFT's own loftq_init."""
import pytest
import torch
import torch.nn.functional as F

import lorakit
from lorakit.compress.loftq import PEFT_SPEC, loftq, loftq_decompose, peft_loftq_decompose
from lorakit.layers.quantized import QuantizedLinear

from .tiny import linear_output, tiny_llama, token_batch

pytest.importorskip("bitsandbytes")
pytest.importorskip("hqq")


def weight(out=64, inp=128, seed=0):
    """A weight with a few strong directions on top of noise, as trained weights have."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(out, 4, generator=g) @ torch.randn(4, inp, generator=g)
    return (0.3 * low + torch.randn(out, inp, generator=g)) * 0.05


def plain_error(w, spec):
    q = QuantizedLinear(w, None, lorakit.layers.quantized.QuantSpec.parse(spec)).dequantize()
    return float(torch.linalg.norm(w - q) / torch.linalg.norm(w))


@pytest.mark.parametrize("spec", ["nf4", "int3-g64", "int2-g64"])
def test_loftq_starts_closer_to_w_than_plain_quantization_and_improves_with_iterations(spec):
    w = weight()
    one = loftq_decompose(w, spec, rank=8, iterations=1)
    five = loftq_decompose(w, spec, rank=8, iterations=5)
    plain = plain_error(w, spec)
    assert one.error < 0.9 * plain
    assert five.error <= one.error + 1e-6
    assert isinstance(five.quantized, QuantizedLinear) and five.quantized.spec.bits == (
        4 if spec == "nf4" else int(spec[3]))


def test_peft_backend_gives_the_same_decomposition_as_lorakit_over_bitsandbytes_nf4():
    w = weight(seed=1)
    ours = loftq_decompose(w, PEFT_SPEC, rank=8, iterations=3)
    theirs = peft_loftq_decompose(w, rank=8, iterations=3)
    assert (ours.quantized.dequantize() - theirs.quantized.dequantize()).abs().max() <= 1e-6
    assert (ours.l1 @ ours.l2 - theirs.l1 @ theirs.l2).abs().max() <= 1e-4
    assert abs(ours.error - theirs.error) <= 1e-4


def test_peft_q_is_reproduced_exactly_by_a_quantized_linear_of_its_settings():
    from peft.utils.loftq_utils import loftq_init

    w = weight(seed=2)
    q, _, _ = loftq_init(w.clone(), num_bits=4, reduced_rank=4, num_iter=2)
    assert torch.equal(QuantizedLinear(q.float(), None, PEFT_SPEC).dequantize(), q.float())


@pytest.mark.parametrize("backend", ["lorakit", "peft"])
def test_loftq_model_is_q_plus_scaled_ba_and_nearer_the_full_precision_model(backend):
    torch.manual_seed(0)
    base = tiny_llama()
    ids = token_batch()
    with torch.no_grad():
        full = base(ids).logits
    qlora = tiny_llama()
    targets = ["*.q_proj", "*.v_proj", "*.up_proj", "*.down_proj"]
    for path, m in list(qlora.named_modules()):
        if any(lorakit.adapters.matches(path, t) for t in targets):
            parent, _, child = path.rpartition(".")
            setattr(qlora.get_submodule(parent), child, QuantizedLinear.from_linear(m, "nf4-g64"))
    model = tiny_llama()
    adapters, parts = loftq(model, targets, rank=8, alpha=16.0, spec="nf4",
                            iterations=3, backend=backend)
    assert set(parts) == set(adapters.layers) and len(parts) == 8
    for path, layer in adapters.layers.items():
        x = torch.randn(3, layer.in_features)
        variant = layer.variants["default"]
        assert variant.scale == 2.0
        assert isinstance(layer.base, QuantizedLinear)
        part = parts[path]
        start = variant.scale * variant.lora_B @ variant.lora_A
        assert (start - part.l1 @ part.l2).abs().max() <= 1e-5
        expected = F.linear(x, layer.base.dequantize() + part.l1 @ part.l2, layer.base.bias)
        assert (linear_output(layer, x) - expected).abs().max() <= 1e-5
    with torch.no_grad():
        ours, theirs = model(ids).logits, qlora(ids).logits
    assert (ours - full).norm() < 0.8 * (theirs - full).norm()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".variants.default.lora_" in n for n in trained)


def test_peft_backend_refuses_a_spec_it_does_not_quantize_with():
    with pytest.raises(lorakit.LoraKitError, match="backend='lorakit'"):
        loftq(tiny_llama(), ["*.q_proj"], rank=4, spec="int3-g64", backend="peft")


def test_a_target_that_is_not_a_linear_is_refused_by_name():
    with pytest.raises(lorakit.LoraKitError, match="embed_tokens.*Embedding"):
        loftq(tiny_llama(), ["*.embed_tokens"], rank=4)
