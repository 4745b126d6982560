"""X-LoRA: frozen trained adapters, a scaling head, the dual pass."""
import pytest
import torch

import lorakit
from lorakit import XLoRA

NAMES = ("a", "b", "c")


def bert(seed=0, hidden=32):
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=60, hidden_size=hidden, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=2 * hidden,
                                max_position_embeddings=32, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)).eval()


@pytest.fixture
def files(tmp_path):
    """Three 'trained' adapters of different ranks, each in its own file."""
    out = {}
    for i, name in enumerate(NAMES):
        model = bert()
        adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=2 + i,
                                                            targets=["*.query", "*.value"]))
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in adapters.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        out[name] = adapters.save(tmp_path / f"{name}.safetensors")
    return out


def hidden(model, ids):
    return lambda: model(ids).last_hidden_state


def test_first_scalings_are_the_plain_average_and_only_the_head_trains(files):
    model = bert()
    xlora = XLoRA.from_files(model, files, hidden_size=32, xlora_depth=2, xlora_size=8)
    assert xlora.n_layers == 4 and xlora.adapters.active == {}
    ids = torch.randint(0, 60, (2, 6))
    out = xlora(hidden(model, ids))
    with xlora.adapters.activated({n: 1 / 3 for n in NAMES}):
        average = model(ids).last_hidden_state
    assert torch.allclose(out, average, atol=1e-5)
    assert xlora.last_scalings.shape == (2, 6, 4, 3)
    out.pow(2).sum().backward()
    assert all(p.grad is not None for p in xlora.head.parameters())
    assert not [p for p in model.parameters() if p.requires_grad]


def test_the_first_pass_is_the_base_without_gradients_and_feeds_the_head(files):
    model = bert()
    xlora = XLoRA.from_files(model, files, hidden_size=32)
    ids = torch.randint(0, 60, (2, 5))
    with xlora.adapters.disabled():
        base_hidden = model(ids).last_hidden_state
    seen = []
    xlora.hidden_of = lambda out: seen.append((out.detach().clone(), torch.is_grad_enabled())) or out
    xlora(hidden(model, ids))
    assert torch.equal(seen[0][0], base_hidden) and seen[0][1] is False


def test_per_layer_per_token_scalings_reach_each_layer(files):
    """One-hot scalings per batch row make the second pass a routed batch: each row with
    its own adapter (checked against `Adapters.route`); a layer's own slice is what it uses."""
    model = bert()
    xlora = XLoRA.from_files(model, files, hidden_size=32)
    ids = torch.randint(0, 60, (3, 5))
    pick = torch.tensor([2, 0, 1])
    one_hot = torch.nn.functional.one_hot(pick, 3).float()
    scalings = one_hot[:, None, None, :].expand(3, 5, xlora.n_layers, 3)
    with xlora.scaled(scalings):
        scaled = model(ids).last_hidden_state
    with torch.no_grad(), xlora.adapters.route(pick):
        routed = model(ids).last_hidden_state
    assert torch.allclose(scaled, routed, atol=1e-5)
    only_first = torch.zeros(3, 5, xlora.n_layers, 3)
    only_first[:, :, 0, 0] = 1.0               # adapter "a" on the first adapted layer alone
    with xlora.scaled(only_first):
        one_layer = model(ids).last_hidden_state
    layer = xlora.adapters.layers[xlora.paths[0]]
    layer.active, saved = {"a": 1.0}, dict(layer.active)
    try:
        want = model(ids).last_hidden_state
    finally:
        layer.active = saved
    assert torch.allclose(one_layer, want, atol=1e-5)


def test_the_head_learns_to_prefer_the_adapter_that_fits(files):
    model = bert()
    xlora = XLoRA.from_files(model, files, hidden_size=32)
    ids = torch.randint(0, 60, (4, 5))
    with xlora.adapters.activated("b"):
        target = model(ids).last_hidden_state.detach()
    opt = torch.optim.Adam(xlora.head.parameters(), lr=0.1)
    for _ in range(30):
        opt.zero_grad()
        loss = (xlora(hidden(model, ids)) - target).pow(2).mean()
        loss.backward()
        opt.step()
    assert xlora.last_scalings[..., 1].mean() > 0.8


def test_a_head_saves_and_loads_onto_the_same_adapters(files, tmp_path):
    model = bert()
    xlora = XLoRA.from_files(model, files, hidden_size=32, xlora_depth=2, xlora_size=8,
                             softmax_temperature=0.5, top_k_lora=2)
    torch.nn.init.normal_(xlora.head[-1].weight)
    ids = torch.randint(0, 60, (2, 5))
    want = xlora(hidden(model, ids))
    path = xlora.save(tmp_path / "head.safetensors")
    other = bert()
    again = XLoRA.load(XLoRA.from_files(other, files, hidden_size=32).adapters, path)
    assert torch.equal(again(hidden(other, ids)), want)
    assert (again.last_scalings > 0).sum(-1).max() == 2        # top_k_lora kept two
    lone = bert()
    lorakit.load_adapter(lone, files["a"], name="a")
    with pytest.raises(lorakit.AdapterMismatchError, match=r"this model lacks \['b', 'c'\]"):
        XLoRA.load(lorakit.adapters_of(lone), path)


def test_adapters_made_for_another_base_are_refused_before_training(files, tmp_path):
    stranger = bert(hidden=16)
    adapters = lorakit.attach(stranger, lorakit.LoRAConfig(targets=["*.query", "*.value"]))
    odd = adapters.save(tmp_path / "odd.safetensors")
    model = bert()
    with pytest.raises(lorakit.AdapterMismatchError,
                       match="X-LoRA adapter 'odd': adapter .* was made for another base"):
        XLoRA.from_files(model, {**files, "odd": odd}, hidden_size=32)
    assert lorakit.adapters_of(model) is None         # the adapters loaded so far are gone


def test_adapters_trained_elsewhere_in_peft_format_are_imported(files, tmp_path):
    peft_dir = lorakit.export_peft(files["b"], tmp_path / "b_peft")
    model = bert()
    xlora = XLoRA.from_files(model, {"a": files["a"], "b": peft_dir, "c": files["c"]},
                             hidden_size=32)
    ids = torch.randint(0, 60, (2, 5))
    reference = bert()
    ref = XLoRA.from_files(reference, files, hidden_size=32)
    assert torch.allclose(xlora(hidden(model, ids)), ref(hidden(reference, ids)), atol=1e-5)


def test_bad_x_lora_settings_are_refused(files):
    model = bert()
    xlora = XLoRA.from_files(model, files, hidden_size=32)
    with pytest.raises(lorakit.LoraKitError, match="mixes several adapters"):
        XLoRA(xlora.adapters, ["a"], hidden_size=32)
    with pytest.raises(lorakit.LoraKitError, match="top_k_lora=4 must be in 1..3"):
        XLoRA(xlora.adapters, NAMES, hidden_size=32, top_k_lora=4)
    with pytest.raises(lorakit.LoraKitError, match="no adapter named 'z'"):
        XLoRA(xlora.adapters, ["a", "z"], hidden_size=32)
    with pytest.raises(lorakit.LoraKitError, match="the same tokens"):
        with xlora.scaled(torch.ones(1, 2, xlora.n_layers, 3)):
            model(torch.randint(0, 60, (2, 5)))
