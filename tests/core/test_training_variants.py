"""ALLoRA, LoRA-GGPO and BA-LoRA are plain LoRA factors at inference: merge equals the
unmerged forward, save/load is bit-exact, `adapter merge` and PEFT export keep the logits."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

import lorakit
from lorakit.compose.merge_file import merge_into_state_file

METHODS = ["allora", "ggpo", "balora"]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def mlp(d_in, d_hidden, dtype, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_in)).to(dtype)


def randomise(adapters, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@settings(max_examples=20, deadline=None)
@given(d_in=st.integers(1, 16), d_hidden=st.integers(1, 16), rank=st.integers(1, 4),
       method=st.sampled_from(METHODS), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_merge_equals_forward_and_save_load_is_bit_exact(tmp_path_factory, d_in, d_hidden, rank,
                                                         method, dtype):
    path = tmp_path_factory.mktemp("rt") / "a.safetensors"
    model = mlp(d_in, d_hidden, dtype)
    w0 = model[0].weight.detach().clone()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=rank, alpha=3.0, method=method,
                                                        targets=["0", "2"]))
    randomise(adapters)
    x = torch.randn(4, d_in, dtype=dtype)
    with torch.no_grad():
        unmerged = model(x)
        adapters.merge()
        merged = model(x)
        adapters.unmerge()
    assert (merged - unmerged).abs().max().item() <= TOL[dtype] * max(1, unmerged.abs().max())
    assert (adapters.layers["0"].base.weight - w0).abs().max().item() <= TOL[dtype] * 10
    adapters.save(path)
    loaded = lorakit.load_adapter(mlp(d_in, d_hidden, dtype), path)
    assert loaded.configs["default"] == adapters.configs["default"]
    with torch.no_grad():
        assert torch.equal(loaded.model(x), unmerged)


@pytest.mark.parametrize("method", METHODS)
def test_adapter_merge_and_peft_export_keep_the_logits(tiny_bert, tmp_path, method):
    peft = pytest.importorskip("peft")
    ids = torch.randint(0, 60, (3, 12))
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=4, alpha=8, method=method,
                                                        targets=["*.query", "*.value"]))
    randomise(adapters)
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    adapters.save(tmp_path / "a.safetensors")
    adapters.detach()
    save_file({k: t.contiguous() for k, t in model.state_dict().items()},
              str(tmp_path / "base.safetensors"))
    merge_into_state_file(tmp_path / "a.safetensors", tmp_path / "base.safetensors",
                          tmp_path / "merged.safetensors")
    plain = tiny_bert()
    plain.load_state_dict(load_file(str(tmp_path / "merged.safetensors")))
    out = lorakit.export_peft(tmp_path / "a.safetensors", tmp_path / "peft")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["lora_alpha"] == (4.0 if method == "allora" else 8.0)
    with torch.no_grad():
        assert (plain(input_ids=ids).logits - ours).abs().max().item() <= 1e-5
        theirs = peft.PeftModel.from_pretrained(tiny_bert(), str(out)).eval()(input_ids=ids)
    assert (theirs.logits - ours).abs().max().item() <= 1e-5
