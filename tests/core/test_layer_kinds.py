"""Layer kinds beyond nn.Linear: GPT-2's Conv1D, nn.Conv2d, nn.Embedding.

Each: merge equals the unmerged forward and unmerge restores the base, save/load
round-trips bit-exactly, and PEFT loads lorakit's export (and lorakit PEFT's) with
equal outputs.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lorakit

peft = pytest.importorskip("peft")



def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2Model
    torch.manual_seed(seed)
    return GPT2Model(GPT2Config(vocab_size=60, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)).eval()


class ConvNet(nn.Module):
    def __init__(self, c_in=3, c_mid=6, kernel=3, stride=1, padding=1, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(c_in, c_mid, kernel, stride=stride, padding=padding)
        self.conv2 = nn.Conv2d(c_mid, 4, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


class Tagger(nn.Module):
    """An embedding table and a linear read-out: the smallest model with an Embedding."""

    def __init__(self, vocab=30, dim=12, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.out = nn.Linear(dim, 5)

    def forward(self, ids):
        return self.out(self.embed(ids))


CASES = {
    "conv1d": (tiny_gpt2, ["*.c_attn", "*.c_proj"], lambda: torch.randint(0, 60, (2, 7))),
    "conv2d": (ConvNet, ["conv1", "conv2"], lambda: torch.randn(2, 3, 9, 9)),
    "embedding": (Tagger, ["embed", "out"], lambda: torch.randint(0, 30, (3, 5))),
}


def output(model, x):
    y = model(x)
    return y.last_hidden_state if hasattr(y, "last_hidden_state") else y


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", ["lora", "s2lora"])
def test_merge_equals_unmerged_forward_and_unmerge_restores_the_base(randomise, case, method):
    make, targets, inputs = CASES[case]
    model = make()
    x = inputs()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    base_out = output(model, x)
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=3, alpha=6, targets=targets,
                                                        method=method))
    assert {layer.kind.name for layer in adapters.layers.values()} >= {case}
    assert torch.equal(output(model, x), base_out)        # B = 0: starts at the base
    randomise(adapters.parameters())
    with torch.no_grad():
        unmerged = output(model, x)
        adapters.merge()
        merged = output(model, x)
        adapters.unmerge()
        restored = output(model, x)
    assert (unmerged - base_out).abs().max() > 1e-3       # the adapter does something
    assert (merged - unmerged).abs().max() <= 1e-5
    assert (restored - unmerged).abs().max() <= 1e-5
    adapters.detach()
    for n, p in model.named_parameters():
        assert (p - before[n]).abs().max() <= 1e-6, n


@settings(max_examples=12, deadline=None)
@given(c_in=st.integers(1, 4), c_mid=st.integers(1, 5), kernel=st.sampled_from([1, 2, 3]),
       stride=st.integers(1, 2), padding=st.integers(0, 1), rank=st.integers(1, 4))
def test_conv2d_merge_matches_the_two_convolutions_for_any_shape(randomise, c_in, c_mid, kernel,
                                                                 stride, padding, rank):
    model = ConvNet(c_in, c_mid, kernel, stride, padding)
    x = torch.randn(2, c_in, 7, 7)
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=rank, targets=["conv1"]))
    randomise(adapters.parameters())
    with torch.no_grad():
        unmerged = model(x)
        adapters.merge()
        assert (model(x) - unmerged).abs().max() <= 1e-5


@pytest.mark.parametrize("case", CASES)
def test_save_and_load_round_trip_bit_exactly(randomise, case, tmp_path):
    make, targets, inputs = CASES[case]
    x = inputs()
    src = make()
    adapters = lorakit.attach(src, lorakit.LoRAConfig(rank=2, targets=targets))
    randomise(adapters.parameters())
    adapters.save(tmp_path / "a.safetensors")
    meta, _ = lorakit.read_adapter(tmp_path / "a.safetensors")
    assert case in meta["kinds"].values()
    dst = make()
    loaded = lorakit.load_adapter(dst, tmp_path / "a.safetensors")
    for (k1, a), (k2, b) in zip(adapters.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(a, b)
    assert torch.equal(output(src, x), output(dst, x))


def test_an_embedding_adapter_refuses_a_table_of_another_size(tmp_path):
    adapters = lorakit.attach(Tagger(), lorakit.LoRAConfig(rank=2, targets=["embed"]))
    adapters.save(tmp_path / "a.safetensors")
    with pytest.raises(lorakit.AdapterMismatchError,
                       match=r"'embed' is Embedding\(num=30, dim=12\) there but "
                             r"Embedding\(num=40, dim=12\)"):
        lorakit.load_adapter(Tagger(vocab=40), tmp_path / "a.safetensors")


@pytest.mark.parametrize("case", CASES)
def test_lorakit_export_loads_in_peft_with_equal_outputs(randomise, case, tmp_path):
    make, targets, inputs = CASES[case]
    x = inputs()
    model = make()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=3, alpha=5, targets=targets))
    randomise(adapters.parameters())
    ours = output(model, x)
    out = lorakit.export_peft(adapters, tmp_path / "peft")
    theirs = output(peft.PeftModel.from_pretrained(make(), str(out)).eval(), x)
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("case", CASES)
def test_peft_adapter_imports_into_lorakit_with_equal_outputs(case, tmp_path):
    make, targets, inputs = CASES[case]
    x = inputs()
    names = [n for n, m in make().named_modules()
             if any(lorakit.adapters.matches(n, t) for t in targets) and n]
    peft_model = peft.get_peft_model(make(), peft.LoraConfig(r=3, lora_alpha=7,
                                                             target_modules=names,
                                                             init_lora_weights=False))
    peft_model.eval()
    theirs = output(peft_model, x)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    model = make()
    lorakit.import_peft(tmp_path / "peft", model)
    assert (output(model, x) - theirs).abs().max() <= 1e-5
