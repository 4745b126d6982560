"""Adapter layers: merge equals the unmerged forward, save/load round-trips bit-exactly."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lorakit

DTYPE_TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 5e-2}


def mlp(d_in, d_hidden, dtype, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_in)).to(dtype)


def randomise(adapters):
    """B starts at zero; give the update a value so the tests measure something."""
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(std=0.1)


@settings(max_examples=25, deadline=None)
@given(d_in=st.integers(1, 24), d_hidden=st.integers(1, 24), rank=st.integers(1, 6),
       method=st.sampled_from(["lora", "s2lora"]), rslora=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_merge_equals_unmerged_forward_and_unmerge_restores_base(d_in, d_hidden, rank, method,
                                                                 rslora, dtype):
    model = mlp(d_in, d_hidden, dtype)
    base_weights = [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]
    x = torch.randn(5, d_in, dtype=dtype)
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=rank, alpha=2 * rank, rslora=rslora,
                                                        targets=["0", "2"], method=method))
    randomise(adapters)
    with torch.no_grad():
        unmerged = model(x)
        adapters.merge()
        merged = model(x)
        adapters.unmerge()
    tol = DTYPE_TOL[dtype] * max(1.0, unmerged.abs().max().item())
    assert (merged - unmerged).abs().max().item() <= tol
    for w0, layer in zip(base_weights, adapters.layers.values()):
        assert (layer.base.weight - w0).abs().max().item() <= DTYPE_TOL[dtype] * 10


@settings(max_examples=20, deadline=None)
@given(d_in=st.integers(1, 16), d_hidden=st.integers(1, 16), rank=st.integers(1, 5),
       method=st.sampled_from(["lora", "s2lora"]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_save_load_round_trip_is_bit_exact(tmp_path_factory, d_in, d_hidden, rank, method, dtype):
    path = tmp_path_factory.mktemp("rt") / "a.safetensors"
    src = lorakit.attach(mlp(d_in, d_hidden, dtype, seed=1),
                         lorakit.LoRAConfig(rank=rank, targets=["0", "2"], method=method))
    randomise(src)
    src.save(path)
    dst = lorakit.load_adapter(mlp(d_in, d_hidden, dtype, seed=1), path)
    a, b = src.state_dict(), dst.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype
        assert torch.equal(a[k], b[k]), k
    x = torch.randn(3, d_in, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(src.model(x), dst.model(x))


def test_adapted_model_starts_equal_to_base_because_b_is_zero():
    model = mlp(8, 16, torch.float32)
    x = torch.randn(4, 8)
    before = model(x)
    lorakit.attach(model, lorakit.LoRAConfig(rank=4, targets=["0", "2"]))
    assert torch.equal(model(x), before)


def test_scale_is_alpha_over_r_or_over_sqrt_r_with_rslora():
    assert lorakit.LoRAConfig(rank=4, alpha=16).scale == 4.0
    assert lorakit.LoRAConfig(rank=4, alpha=16, rslora=True).scale == 8.0
    variant = lorakit.attach(mlp(4, 4, torch.float32),
                             lorakit.LoRAConfig(rank=4, alpha=16, rslora=True,
                                                targets=["0"])).variants()["0"]
    assert variant.scale == 8.0


def test_gaussian_init_has_std_one_over_rank():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512))
    layer = lorakit.attach(model, lorakit.LoRAConfig(rank=8, init="gaussian",
                                                     targets=["0"])).variants()["0"]
    assert abs(layer.lora_A.std().item() - 1 / 8) < 0.01
    assert torch.count_nonzero(layer.lora_B) == 0


def test_half_precision_base_gets_float32_adapters_and_keeps_output_dtype():
    model = mlp(8, 8, torch.bfloat16)
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=2, targets=["0", "2"]))
    assert all(p.dtype == torch.float32 for p in adapters.parameters())
    assert model(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_dropout_only_acts_on_the_adapter_path_in_training():
    torch.manual_seed(0)
    model = mlp(8, 8, torch.float32)
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=2, dropout=0.5, targets=["0"]))
    randomise(adapters)
    x = torch.randn(64, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
