"""Mixed-adapter batches: each row of one forward uses its own adapter (or none), and the
result equals running that row alone with its adapter active."""
import pytest
import torch
from torch import nn

import lorakit


def bert_with_three(randomise, tiny_bert):
    """Adapters of ranks 2, 8 and 4 and two methods, on overlapping targets."""
    model = tiny_bert()
    specs = {"r2": dict(rank=2, targets=["*.query", "*.value"]),
             "r8": dict(rank=8, targets=["*.query", "*.key", "*.dense"]),
             "s2": dict(rank=4, method="s2lora", targets=["*.value"])}
    for i, (name, spec) in enumerate(specs.items()):
        adapters = lorakit.attach(model, lorakit.LoRAConfig(**spec), name=name)
        randomise(adapters.parameters(name), seed=i)
    return model, adapters


def one_by_one(model, adapters, x, ids, forward):
    rows = []
    for row, i in zip(x, ids.tolist()):
        adapters.set_active(None if i == -1 else adapters.names[i])
        rows.append(forward(model, row[None]))
    return torch.cat(rows)


def test_routed_bert_batch_equals_each_row_alone_with_its_adapter(randomise, tiny_bert):
    model, adapters = bert_with_three(randomise, tiny_bert)
    x = torch.randint(0, 60, (7, 11))
    ids = torch.tensor([0, 1, 2, -1, 1, 0, 2])

    def forward(m, batch):
        return m(input_ids=batch).logits
    with torch.no_grad():
        with adapters.route(ids):
            routed = forward(model, x)
        alone = one_by_one(model, adapters, x, ids, forward)
    assert (routed - alone).abs().max() <= 1e-5
    assert (alone[0] - alone[3]).abs().max() > 1e-3      # the adapters do differ


def test_routing_accepts_names_and_none_and_restores_the_active_set(randomise, tiny_bert):
    model, adapters = bert_with_three(randomise, tiny_bert)
    adapters.set_active("r8")
    x = torch.randint(0, 60, (3, 5))
    with torch.no_grad():
        with adapters.route(torch.tensor([1, 2, -1])):
            by_index = model(input_ids=x).logits
        with adapters.route(["r8", "s2", None]):
            by_name = model(input_ids=x).logits
        assert torch.equal(by_index, by_name)
        assert all(layer.routing is None for layer in adapters.layers.values())
        assert adapters.active == {"r8": 1.0}


def test_routed_gradients_equal_those_of_each_row_alone(randomise, tiny_bert):
    model, adapters = bert_with_three(randomise, tiny_bert)
    x = torch.randint(0, 60, (4, 6))
    ids = torch.tensor([0, 1, 1, 2])
    with adapters.route(ids):
        model(input_ids=x).logits.sum().backward()
    routed = [p.grad.clone() for p in adapters.parameters()]
    for p in adapters.parameters():
        p.grad = None
    one_by_one(model, adapters, x, ids, lambda m, b: m(input_ids=b).logits).sum().backward()
    for g, p in zip(routed, adapters.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)


@pytest.mark.parametrize("kind", ["embedding", "conv1d"])
def test_routing_works_on_embedding_and_gpt2_conv1d(randomise, kind):
    from transformers import GPT2Config, GPT2Model
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                 resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)).eval()
    targets = ["wte"] if kind == "embedding" else ["*.c_attn", "*.c_fc"]
    for i, rank in enumerate((2, 5)):
        adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=rank, targets=targets),
                                  name=f"n{i}")
        randomise(adapters.parameters(f"n{i}"), seed=i)
    x = torch.randint(0, 50, (5, 7))
    ids = torch.tensor([1, -1, 0, 1, 0])

    def forward(m, batch):
        return m(input_ids=batch).last_hidden_state
    with torch.no_grad():
        with adapters.route(ids):
            routed = forward(model, x)
        alone = one_by_one(model, adapters, x, ids, forward)
    assert (routed - alone).abs().max() <= 1e-5


def test_routing_refuses_bad_ids_merged_adapters_and_conv2d(randomise, tiny_bert):
    model, adapters = bert_with_three(randomise, tiny_bert)
    x = torch.randint(0, 60, (2, 5))
    with pytest.raises(lorakit.LoraKitError, match="adapter id 3 is out of range"):
        with adapters.route(torch.tensor([0, 3])):
            pass
    with pytest.raises(lorakit.LoraKitError, match="no adapter named 'zz'"):
        with adapters.route(["zz", None]):
            pass
    with pytest.raises(lorakit.LoraKitError, match="the batch has 2 rows but 3 adapter ids"):
        with torch.no_grad(), adapters.route([0, 1, 2]):
            model(input_ids=x)
    adapters.merge()
    with pytest.raises(lorakit.LoraKitError, match="unmerge"):
        with adapters.route([0, 1]):
            pass
    conv = nn.Sequential(nn.Conv2d(2, 3, 3))
    lorakit.attach(conv, lorakit.LoRAConfig(rank=2, targets=["0"]))
    with pytest.raises(lorakit.LoraKitError, match="'0' is a Conv2d.*Linear, Conv1D and "
                                                   "Embedding"):
        with lorakit.adapters_of(conv).route([0]):
            pass


def test_cached_stacks_follow_an_in_place_update_of_an_adapter(randomise, tiny_bert):
    model, adapters = bert_with_three(randomise, tiny_bert)
    x = torch.randint(0, 60, (2, 5))
    with torch.no_grad():
        with adapters.route([0, 1]):
            first = model(input_ids=x).logits
        for p in adapters.parameters("r8"):
            p.mul_(2.0)
        with adapters.route([0, 1]):
            second = model(input_ids=x).logits
        alone = one_by_one(model, adapters, x, torch.tensor([0, 1]),
                           lambda m, b: m(input_ids=b).logits)
    assert torch.equal(first[0], second[0])            # adapter 0 unchanged
    assert (first[1] - second[1]).abs().max() > 1e-4   # adapter 1 changed: restacked
    assert (second - alone).abs().max() <= 1e-5
