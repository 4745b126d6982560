"""Mixtures of LoRA experts (`method="mixture"`): routing, gradients, balance losses, MoLA
allocation, the file, inspect and the refusals."""
import json

import pytest
import torch
from torch import nn

import lorakit
from lorakit.analysis.inspect import describe
from lorakit.config import MixtureOptions
from lorakit.training.module import AdapterModule, routing_summary
from lorakit.variants.mixture import allocation, localized_balance, switch_balance


def moe(**kw):
    """A mixture's config: `MixtureOptions` fields into its group, the rest as they are."""
    options = {k: kw.pop(k) for k in list(kw) if k in MixtureOptions.__dataclass_fields__}
    return lorakit.LoRAConfig(method="mixture", mixture=MixtureOptions(**options), **kw)

def randomise_params(params, seed: int = 0, std: float = 0.2) -> None:
    """Give adapter tensors values (B starts at zero) so a test measures something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


def linear_with_mixture(experts=4, top_k=2, rank=2, seed=0, **options):
    """One Linear(6 -> 5) with a mixture; B random so every expert's output is non-zero."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5))
    adapters = lorakit.attach(model, moe(
        n_experts=experts, top_k=top_k, rank=rank, alpha=rank,
        targets=["0"], **options))
    variant = adapters.variants()["0"]
    randomise_params([variant.lora_B], seed=seed + 1)
    return model, adapters, variant


def expert_output(variant, x, e):
    """scale · B_e A_e x, one expert by hand."""
    return variant.scale * x @ variant.lora_A[e].T @ variant.lora_B[e].T


def test_topk_router_picks_the_k_most_probable_experts_and_renormalises_their_gates():
    model, adapters, v = linear_with_mixture(experts=4, top_k=2)
    x = torch.randn(7, 6)
    probs = torch.softmax(x @ v.moe_router.T, dim=-1)
    out = model(x) - model[0].base(x)
    for row in range(7):
        top = probs[row].argsort(descending=True)[:2]
        weights = probs[row, top] / probs[row, top].sum()
        want = sum(w * expert_output(v, x[row], int(e)) for w, e in zip(weights, top))
        assert torch.allclose(out[row], want, atol=1e-6)
    gates = v.routing_stats()["load"]           # each token: two experts, half each
    assert gates.sum().item() == pytest.approx(1.0)
    chosen = v._last[2]
    assert chosen.sum(-1).tolist() == [2] * 7
    assert torch.equal(chosen, torch.zeros_like(chosen).scatter(-1, probs.topk(2).indices, True))


def test_top1_gate_is_the_router_probability_so_the_router_learns():
    """LLaVA-MoLE's top-1: not renormalised (it would be 1), as in Switch Transformer."""
    model, adapters, v = linear_with_mixture(experts=3, top_k=1)
    x = torch.randn(4, 6)
    probs = torch.softmax(x @ v.moe_router.T, dim=-1)
    out = model(x) - model[0].base(x)
    best = probs.argmax(-1)
    for row in range(4):
        want = probs[row, best[row]] * expert_output(v, x[row], int(best[row]))
        assert torch.allclose(out[row], want, atol=1e-6)
    out.pow(2).sum().backward()
    assert v.moe_router.grad.abs().sum() > 0


def test_dense_router_weights_every_expert_by_the_softmax():
    """LoRAMoE: every expert, weighted by the router's softmax."""
    model, adapters, v = linear_with_mixture(experts=3, router="dense")
    x = torch.randn(4, 6)
    probs = torch.softmax(x @ v.moe_router.T, dim=-1)
    want = sum(probs[:, e:e + 1] * expert_output(v, x, e) for e in range(3))
    assert torch.allclose(model(x) - model[0].base(x), want, atol=1e-6)
    assert v.aux_losses() == {}      # no Switch loss on a dense router, no LBC unless asked


def backward_through(model, v, preferred: tuple[int, int]) -> torch.Tensor:
    """A backward pass on 8 tokens that the router sends to the `preferred` two experts;
    returns the tokens."""
    with torch.no_grad():            # every token's feature 0 > 1 picks those two rows
        v.moe_router.zero_()
        v.moe_router[preferred[0], 0] = v.moe_router[preferred[1], 0] = 5.0
    x = torch.randn(8, 6)
    x[:, 0] = x[:, 0].abs() + 1.0
    model(x).pow(2).sum().backward()
    return x


def test_gradients_reach_only_the_selected_experts():
    model, adapters, v = linear_with_mixture(experts=5, top_k=2)
    backward_through(model, v, (1, 3))
    for e in range(5):
        touched = v.lora_A.grad[e].abs().sum() > 0 and v.lora_B.grad[e].abs().sum() > 0
        assert touched == (e in (1, 3)), e
        if e not in (1, 3):
            assert v.lora_A.grad[e].abs().max() == 0 and v.lora_B.grad[e].abs().max() == 0


@pytest.mark.parametrize("top_k", [1, 2])
def test_gather_compute_gives_the_dense_outputs_and_gradients(top_k):
    """expert_compute='gather' (each token's k experts through the routed-batch kernel)
    is the same function as the dense E·r-wide path, gradients included."""
    runs = []
    for compute in ("dense", "gather"):
        model, adapters, v = linear_with_mixture(experts=5, top_k=top_k,
                                                 expert_compute=compute)
        x = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(2))
        model(x).pow(2).sum().backward()
        runs.append((model(x), v.lora_A.grad, v.lora_B.grad, v.moe_router.grad))
    for dense, gather in zip(*runs):
        assert torch.allclose(dense, gather, atol=1e-5)


def test_experts_hold_no_training_hook_that_stacking_would_skip():
    """EXPERTS lists only methods whose tensors are their own and that rely on no hook the
    mixture does not call; a method gaining one must leave the list (or the mixture must
    learn to call it)."""
    from lorakit.variants import VARIANTS, Variant
    from lorakit.variants.mixture import EXPERTS
    hooks = ("before_optimizer_step", "perturb", "restore", "output_terms", "penalty",
             "shrink", "init_from_gradient", "shared_key", "make_shared", "plan",
             "aux_losses", "fit_to_state", "prune")
    for method, cls in EXPERTS.items():
        assert VARIANTS[method] is cls
        # the defaults live on Variant and its optional-protocol bases (variants/optional.py)
        defaults = Variant.__mro__
        overridden = [h for h in hooks
                      if next(k for k in cls.__mro__ if h in vars(k)) not in defaults]
        assert not overridden, (method, overridden)
    refused = set(VARIANTS) - set(EXPERTS)
    assert {"allora", "ggpo", "balora", "s2lora", "lora_ga", "lora_sb", "mixture"} <= refused


def dora_mixture(experts=4, top_k=2, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5))
    adapters = lorakit.attach(model, moe(
        expert_method="dora", n_experts=experts, top_k=top_k, rank=2,
        alpha=2, targets=["0"]))
    v = adapters.variants()["0"]
    randomise_params([v.lora_B], seed=seed + 1)
    with torch.no_grad():
        v.lora_magnitude.mul_(torch.linspace(0.8, 1.2, experts)[:, None])
    return model, adapters, v


def test_dora_experts_start_at_the_base_weight_norms_and_mix_each_experts_dora_output():
    model, adapters, v = dora_mixture()
    w = model[0].base.weight
    fresh = lorakit.attach(nn.Sequential(nn.Linear(6, 5)), moe(
        expert_method="dora", n_experts=3, targets=["0"]))
    start = fresh.variants()["0"]
    want_norms = torch.linalg.vector_norm(fresh.model[0].base.weight, dim=1)
    assert torch.allclose(start.lora_magnitude, want_norms.expand(3, -1))   # m = ‖W‖ each
    assert {"lora_A", "lora_B", "lora_magnitude"} <= set(v.expert_tensors())
    x = torch.randn(9, 6)
    gates = v.gates(torch.softmax(x @ v.moe_router.T, dim=-1))
    want = model[0].base(x)
    for e in range(4):          # DoRA by hand: (g − 1) ⊙ W x + g ⊙ s B A x, g = m / ‖W + s B A‖
        low = v.scale * v.lora_B[e] @ v.lora_A[e]
        g = v.lora_magnitude[e] / torch.linalg.vector_norm(w + low, dim=1)
        want = want + gates[:, e:e + 1] * ((g - 1) * (x @ w.T) + g * (x @ low.T))
    assert torch.allclose(model(x), want, atol=1e-5)


def test_dora_experts_outside_the_top_k_get_no_gradient_and_round_trip(tmp_path):
    model, adapters, v = dora_mixture(experts=5)
    x = backward_through(model, v, (0, 4))
    for e in range(5):
        grads = [v.lora_B.grad[e], v.lora_magnitude.grad[e]]
        assert all(g.abs().sum() > 0 for g in grads) == (e in (0, 4)), e
    path = adapters.save(tmp_path / "dora_mix.safetensors")
    again = nn.Sequential(nn.Linear(6, 5))
    again.load_state_dict({k.replace("base.", ""): t for k, t in model.state_dict().items()
                           if "lora" not in k and "moe" not in k})
    lorakit.load_adapter(again, path)
    assert torch.allclose(again(x), model(x), atol=1e-6)
    assert lorakit.read_adapter(path)[0]["config"]["expert_method"] == "dora"


FFN_ONLY = ["*.intermediate.dense", "bert.encoder.layer.?.output.dense"]


def block_routed(tiny_bert, layers=2, **options):
    model = tiny_bert(layers=layers)
    adapters = lorakit.attach(model, moe(
        router_scope="block", n_experts=4, top_k=2, rank=2,
        targets=FFN_ONLY, **options))
    randomise_params([v.lora_B for v in adapters.variants().values()])
    return model, adapters


def test_block_scope_routes_each_ffn_once_and_its_matrices_share_the_choice(tiny_bert,
                                                                            tmp_path):
    """MixLoRA: one router per FFN, from the FFN's input; expert e of the FFN is the e-th
    LoRA of both of its matrices; the router is one tensor per layer in the file."""
    model, adapters = block_routed(tiny_bert)
    v = adapters.variants()
    up, down = (v[f"bert.encoder.layer.0.{m}"] for m in ("intermediate.dense", "output.dense"))
    assert up.block is down.block and up.leads and not down.leads
    assert not hasattr(down, "moe_router") and "moe_router" not in up.own_tensors()
    keys = dict(adapters.named_parameters())
    routers = sorted(k for k in keys if k.endswith("moe_router"))
    assert routers == ["bert.encoder.layer.0.moe_router", "bert.encoder.layer.1.moe_router"]
    assert keys[routers[0]].shape == (4, 32)           # the FFN's input width
    ids = torch.randint(1, 60, (3, 5))
    model(input_ids=ids).logits.sum().backward()
    assert torch.equal(up._last[1], down._last[1])     # the same gates in both matrices
    ffn_input = up._last[0].shape[0]
    assert ffn_input == 15
    assert up.block.weight.grad.abs().sum() > 0
    terms = adapters.routing_terms()                    # balanced once per layer
    want = torch.stack([v[f"bert.encoder.layer.{i}.intermediate.dense"].aux_losses()["balance"]
                        for i in range(2)]).mean()
    assert torch.allclose(terms["default/balance"], want)
    path = adapters.save(tmp_path / "block.safetensors")
    fresh = tiny_bert(layers=2)
    lorakit.load_adapter(fresh, path)
    assert torch.allclose(fresh(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)


def test_block_scope_refuses_a_module_that_runs_before_its_layers_router(tiny_bert):
    model, adapters = block_routed(tiny_bert)
    down = model.bert.encoder.layer[1].output.dense
    with pytest.raises(lorakit.LoraKitError, match="layer 'bert.encoder.layer.1' got 4 tokens.*"
                                                   "no tokens"):
        down(torch.randn(4, 64))


def test_the_model_starts_at_the_base_and_the_base_stays_frozen(tiny_bert):
    model = tiny_bert()
    ids = torch.randint(0, 60, (2, 6))
    before = model(ids).logits
    adapters = lorakit.attach(model, moe(rank=2,
                                                        targets=["*.intermediate.dense"]))
    assert torch.allclose(model(ids).logits, before, atol=1e-6)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("variants.default" in n for n in trainable)
    # 2 layers x (8 experts x rank 2 x (32 + 64) + router 8 x 32)
    assert adapters.trainable_count() == 2 * (8 * 2 * (32 + 64) + 8 * 32)


def test_switch_balance_loss_on_a_hand_computed_case():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    chosen = torch.tensor([[True, False, False], [False, True, False]])
    # f = (1/2, 1/2, 0), P = (0.4, 0.4, 0.2): 3 · (0.2 + 0.2) = 1.2
    assert switch_balance(probs, chosen).item() == pytest.approx(1.2)
    even = torch.full((4, 4), 0.25)
    two_each = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]] * 2, dtype=torch.bool)
    assert switch_balance(even, two_each).item() == pytest.approx(2.0)   # k when balanced


def test_the_handle_returns_the_weighted_balance_loss_averaged_over_modules(tiny_bert):
    model = tiny_bert()
    adapters = lorakit.attach(model, moe(
        rank=2, n_experts=4, top_k=2, router_aux_loss=0.05,
        targets=["*.intermediate.dense"]))
    model(torch.randint(0, 60, (3, 5)))
    per_module = [switch_balance(v._last[0], v._last[2]) for v in adapters.variants().values()]
    want = 0.05 * torch.stack(per_module).mean()
    assert adapters.routing_terms()["default/balance"].item() == pytest.approx(want.item())
    assert adapters.routing_loss().item() == pytest.approx(want.item())
    loss = adapters.routing_loss()
    loss.backward()
    assert all(v.moe_router.grad.abs().sum() > 0 for v in adapters.variants().values())


def test_loramoe_localized_balance_on_a_hand_computed_case():
    # two samples of one token, two experts: expert 0 the new-task group, expert 1 world
    gates = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    types = torch.tensor([1, 0])      # sample 0 new-task data, sample 1 world knowledge
    # I = [[1.1, 0.9], [0.9, 1.1]] -> Z = (0.88, 0.18, 0.27, 0.77): mean 0.525,
    # unbiased variance 0.3701 / 3; CV² = 0.123367 / 0.275625
    value = localized_balance(gates, batch=2, row_types=types, delta=0.1)
    assert value.item() == pytest.approx(0.3701 / 3 / 0.525 ** 2, rel=1e-5)
    # rows of unknown type count as new-task data
    assert localized_balance(gates, 2, None, 0.1).item() == pytest.approx(
        localized_balance(gates, 2, torch.tensor([1, 1]), 0.1).item())


def test_row_types_reach_the_loramoe_loss_through_the_handle(tiny_bert):
    model = tiny_bert()
    adapters = lorakit.attach(model, moe(
        rank=2, n_experts=4, router="dense", lbc_weight=0.1, lbc_delta=0.2,
        targets=["*.intermediate.dense"]))
    ids = torch.randint(0, 60, (2, 5))
    types = torch.tensor([0, 1])
    with adapters.row_types(types):
        model(ids)
        got = adapters.routing_terms()["default/lbc"]
    want = torch.stack([localized_balance(v._last[1], 2, types, 0.2)
                        for v in adapters.variants().values()]).mean() * 0.1
    assert got.item() == pytest.approx(want.item())
    assert set(adapters.routing_terms()) == {"default/lbc"}   # dense: no Switch term


def test_mola_schedule_spreads_counts_over_depth_segments():
    paths = [f"enc.layer.{i}.{m}" for i in range(8) for m in ("up", "down")]
    cfg = moe(expert_schedule="2,4,6,8", targets=["up"])
    counts = allocation(cfg, paths)
    assert [counts[f"enc.layer.{i}.up"] for i in range(8)] == [2, 2, 4, 4, 6, 6, 8, 8]
    assert counts["enc.layer.5.down"] == counts["enc.layer.5.up"] == 6
    explicit = moe(experts_per_layer=[2, 3, 4, 5, 6, 7, 8, 9],
                                  targets=["up"])
    assert allocation(explicit, paths)["enc.layer.7.down"] == 9


def test_mola_allocation_builds_that_many_experts_per_layer_and_saves_it(tiny_bert, tmp_path):
    model = tiny_bert(layers=4)
    adapters = lorakit.attach(model, moe(
        rank=2, top_k=1, expert_schedule="2,4",
        targets=["*.intermediate.dense", "*.output.dense"]))
    per_module = {p: v.n_experts for p, v in adapters.variants().items()}
    assert per_module["bert.encoder.layer.1.intermediate.dense"] == 2
    assert per_module["bert.encoder.layer.2.attention.output.dense"] == 4
    meta, _ = lorakit.read_adapter(adapters.save(tmp_path / "mola.safetensors"))
    assert meta["config"]["expert_schedule"] == "2,4"


@pytest.mark.parametrize("options, message", [
    ({"n_experts": 2, "top_k": 3}, "top_k=3 exceeds n_experts=2"),
    ({"experts_per_layer": [4, 4, 4]}, "has 3 entries but the targets .* adapt 2 layers"),
    ({"experts_per_layer": [4, 1]}, "top_k=2 but layer 'bert.encoder.layer.1' has only 1"),
    ({"expert_schedule": "2,4,8"}, "3 depth segments but the targets adapt only 2 layers"),
    ({"expert_schedule": "two"}, "give expert counts separated by commas"),
    ({"n_experts": 3, "router": "dense", "lbc_weight": 0.1}, "use even counts"),
    ({"router": "sparse"}, "router must be one of"),
    ({"expert_method": "allora"}, "expert_method 'allora': a mixture's experts can be lora"),
    ({"expert_method": "mixture"}, "or are mixtures themselves"),
    ({"expert_method": "dora", "expert_compute": "gather"}, "dora experts are not a product"),
    ({"router": "dense", "expert_compute": "gather"}, "router 'dense' uses every expert"),
    ({"router_scope": "layer"}, "router_scope must be one of"),
])
def test_bad_mixture_settings_are_refused_before_the_model_is_touched(tiny_bert, options,
                                                                      message):
    model = tiny_bert()
    before = [type(m) for m in model.modules()]
    with pytest.raises(lorakit.LoraKitError, match=message):
        lorakit.attach(model, moe(targets=["*.intermediate.dense"],
                                                 **options))
    assert [type(m) for m in model.modules()] == before
    assert lorakit.adapters_of(model) is None


def test_a_mixture_file_round_trips_bit_exactly_with_its_router_and_load(tiny_bert, tmp_path):
    model = tiny_bert()
    adapters = lorakit.attach(model, moe(
        rank=2, experts_per_layer=[2, 4], top_k=2,
        targets=["*.intermediate.dense"]))
    randomise_params(adapters.parameters())
    model.train()
    model(torch.randint(0, 60, (2, 5)))       # training forward: load statistics recorded
    model.eval()
    path = adapters.save(tmp_path / "moe.safetensors")
    ids = torch.randint(0, 60, (3, 6))
    want = model(ids).logits
    fresh = tiny_bert()
    loaded = lorakit.load_adapter(fresh, path)
    for key, value in adapters.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(fresh(ids).logits, want)
    assert loaded.variants()["bert.encoder.layer.1.intermediate.dense"].n_experts == 4
    with pytest.raises(lorakit.AdapterMismatchError, match="another base model"):
        lorakit.load_adapter(tiny_bert(hidden=16), path)


def test_export_peft_and_merging_refuse_a_mixture_with_the_reason(tiny_bert, tmp_path):
    model = tiny_bert()
    adapters = lorakit.attach(model, moe(rank=2,
                                                        targets=["*.intermediate.dense"]))
    path = adapters.save(tmp_path / "moe.safetensors")
    with pytest.raises(lorakit.AdapterFileError, match="no PEFT LoRA layout: .*router"):
        lorakit.export_peft(path, tmp_path / "peft")
    with pytest.raises(lorakit.LoraKitError, match="no fixed update"):
        adapters.merge()
    with pytest.raises(lorakit.LoraKitError, match="cannot be routed"):
        with adapters.route([0]):
            pass


def test_a_mixture_refuses_an_embedding():
    model = nn.Sequential(nn.Embedding(10, 4))
    with pytest.raises(lorakit.LoraKitError, match="Linear and Conv1D layers, not a Embedding"):
        lorakit.attach(model, moe(targets=["0"]))


def test_mixlora_is_a_mixture_on_the_ffn_beside_its_own_attention_lora(tiny_bert):
    model = tiny_bert()
    ids = torch.randint(0, 60, (2, 5))
    lorakit.attach(model, moe(rank=2, n_experts=8, top_k=2,
                                             targets=["*.intermediate.dense"]), name="ffn")
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=4, targets=["*.query", "*.value"]),
                              name="attn")
    adapters.set_active(["ffn", "attn"])
    randomise_params(adapters.parameters())
    both = model(ids).logits
    with adapters.activated("ffn"):
        ffn_only = model(ids).logits
    assert not torch.allclose(both, ffn_only)
    assert set(adapters.routing_terms()) == {"ffn/balance"}


def test_inspect_shows_experts_allocation_load_and_entropy(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 5))
    adapters = lorakit.attach(model, moe(
        rank=2, experts_per_layer=[2, 4], top_k=1, targets=["0", "2"]))
    with torch.no_grad():        # positive inputs: every token of layer 0 goes to expert 1
        v = adapters.variants()["0"]
        v.moe_router.zero_()
        v.moe_router[0] = -50.0
    model.train()
    model(torch.rand(10, 6) + 0.1)
    meta, tensors = lorakit.read_adapter(adapters.save(tmp_path / "moe.safetensors"))
    info = describe(meta, tensors)
    rows = {m["module"]: m for m in info["modules"]}
    first = rows["0"]
    assert first["experts"] == 2 and first["rank"] == 2 and first["routed_tokens"] == 10
    assert first["expert_load"] == [0.0, 1.0]
    assert first["router_entropy"] == pytest.approx(0.0, abs=1e-3)
    assert first["router_entropy_max"] == pytest.approx(0.6931, abs=1e-4)
    assert rows["2"]["experts"] == 4 and sum(rows["2"]["expert_load"]) == pytest.approx(1.0)
    assert info["options"]["top_k"] == 1 and info["options"]["experts_per_layer"] == [2, 4]
    json.dumps(info)


def test_inspect_cli_prints_the_experts_column(tiny_bert, tmp_path, capsys):
    from lorakit.cli import main
    model = tiny_bert()
    adapters = lorakit.attach(model, moe(rank=2, n_experts=4,
                                                        targets=["*.intermediate.dense"]))
    path = adapters.save(tmp_path / "moe.safetensors")
    assert main(["adapter", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "experts" in out and "options.top_k" in out and "options.router" in out


class _Toy(AdapterModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        self.attach_adapters(self.model, moe(
            n_experts=4, top_k=2, rank=2, targets=["0", "2"]))


def test_the_lightning_module_adds_and_logs_the_routing_losses():
    module = _Toy()
    out = module.model(torch.randn(6, 4))
    assert module.routing_losses().item() == pytest.approx(
        module.adapters.routing_loss().item())
    logged = {}
    module._trainer = object()          # stands in for a Trainer: capture self.log
    module.log = lambda key, value, **kw: logged.__setitem__(key, float(value))
    module.routing_losses()
    assert {"moe/default/balance", "moe/default/entropy", "moe/default/load_e0",
            "moe/default/load_e3"} <= set(logged)
    assert sum(logged[f"moe/default/load_e{i}"] for i in range(4)) == pytest.approx(1.0)
    assert out.shape == (6, 2)
    summary = routing_summary(module.adapters.routing_stats())
    assert summary["entropy"] <= torch.log(torch.tensor(4.0)).item() + 1e-6
