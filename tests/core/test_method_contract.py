"""The method contract: every registered method on every layer kind it allows.

Derived from the registry alone (`lorakit.VARIANTS` x `lorakit.KINDS`), so a new method
is covered by registering it. For each pair:

- a kind the method refuses (`Variant.kind_refusal`) is refused by `attach` with the
  project's error, naming the kind;
- right after attach the output is the base's (B = 0, R = 0, DoRA's m = ‖W‖ ...), or, for
  a method that starts elsewhere by design (`starts_at_base` False: L4Q's quantized base),
  it moves and the disabled model is the base; for
  gradient-driven inits (`init_from_gradient`) the output after `init_from_gradients`
  is the base's where the method says so (`init_keeps_output`: LoRA-GA's offset) and
  moves where the init is itself a first step (LoRA-SB);
- with the trained tensors perturbed, merge equals the unmerged forward and unmerge
  restores the base (`mergeable`), or merge is refused with the project's error; on a
  quantized kind (`LayerKind.quantized`) a plain merge is refused (W + ΔW has no exact
  quantized form), and `merge(requantize=True)` leaves exactly the quantization of
  W + ΔW in the base (so its output is the unmerged one up to that quantization error)
  and cannot be unmerged;
- a file round-trips bit-exactly onto a fresh copy of the base;
- PEFT's own `PeftModel.from_pretrained` on the export gives the same outputs
  (`Variant.peft`), or the export is refused with the method's `peft_refusal` (a
  quantized base: PEFT's QLoRA layer on the same bitsandbytes module);
- a routed batch equals each row alone with its adapter (`Variant.routable`, on a
  routable kind), or the route is refused with the project's error.
"""
import pytest
import torch

import lorakit
from lorakit.variants import GradientInit, VariantFile, implements

from .test_layer_kinds import output
from .test_routing import one_by_one
from .variant_properties import ALL, check_merge_and_unmerge, check_save_and_load, peft_base

peft = pytest.importorskip("peft")

METHODS = sorted(lorakit.VARIANTS)
KINDS = sorted(lorakit.KINDS)


def pairs():
    """(method, kind) for every kind the method allows."""
    return [(m, k) for m in METHODS for k in KINDS
            if lorakit.VARIANTS[m].kind_refusal(lorakit.KINDS[k]) is None]


def refused():
    return [(m, k) for m in METHODS for k in KINDS
            if lorakit.VARIANTS[m].kind_refusal(lorakit.KINDS[k]) is not None]


def has_gradient_init(cls) -> bool:
    return implements(cls, GradientInit)


def settings(method, **over):
    """The config fields besides the targets: the method's defaults at a small rank."""
    return dict(method=method, rank=2, alpha=4.0) | over


def perturb(adapters, seed=0):
    """Every trained tensor moved and none of its signs flipped: a tensor at zero (B, R)
    becomes random, a non-zero one (A, DoRA's magnitude, S2-LoRA's λ, a router) is scaled
    entry by entry by a factor in [0.5, 1.5], so DoRA's m / ‖W + ΔW‖ stays far from 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.parameters():
            if p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:
                p.mul_(0.5 + torch.rand(p.shape, generator=g))


def attached(method, kind, **over):
    make, targets, inputs = ALL[kind]
    model = make()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=targets,
                                                        **settings(method, **over)))
    return model, adapters, inputs


def owner(cls, name):
    return next(k for k in cls.__mro__ if name in vars(k))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_implements_the_required_verbs(method):
    """Its name, its live maths (`factors`, or `forward` for an update that is not B A) and
    its file side (`file_keys`, and `file_factors` or `file_delta`)."""
    cls = lorakit.VARIANTS[method]
    assert cls.method == method
    assert {owner(cls, "factors"), owner(cls, "forward")} != {lorakit.Variant}
    assert owner(cls, "file_keys") is not VariantFile
    assert {owner(cls, "file_factors"), owner(cls, "file_delta")} != {VariantFile}


def test_every_layer_kind_has_a_case_here():
    assert set(lorakit.KINDS) <= set(ALL), "add a tiny model of the new kind to ALL"


@pytest.mark.parametrize(("method", "kind"), refused())
def test_a_refused_kind_is_refused_at_attach_naming_the_kind(method, kind):
    make, targets, _ = ALL[kind]
    with pytest.raises(lorakit.LoraKitError, match=lorakit.KINDS[kind].label):
        lorakit.attach(make(), lorakit.LoRAConfig(targets=targets, **settings(method)))


@pytest.mark.parametrize(("method", "kind"), pairs())
def test_the_adapted_model_starts_at_the_base(method, kind):
    make, targets, inputs = ALL[kind]
    x = inputs()
    with torch.no_grad():
        base = output(make(), x)
        model, adapters, _ = attached(method, kind)
        assert kind in {layer.kind.name for layer in adapters.layers.values()}
        moved = (output(model, x) - base).abs().max()
        if lorakit.VARIANTS[method].starts_at_base:
            assert moved <= 1e-6
        else:       # a start of its own by design (L4Q: the quantized base); off is the base
            assert moved > 1e-6
            with adapters.disabled():
                assert (output(model, x) - base).abs().max() <= 1e-6


@pytest.mark.parametrize(("method", "kind"),
                         [p for p in pairs() if has_gradient_init(lorakit.VARIANTS[p[0]])])
def test_a_gradient_init_keeps_the_output_where_the_method_says_so(method, kind):
    # rank 1: LoRA-GA takes 2r singular vectors and the smallest matrix here is 8 x 3
    model, adapters, inputs = attached(method, kind, rank=1)
    x = inputs()
    with torch.no_grad():
        before = output(model, x)
    lorakit.init_from_gradients(model, adapters, [x, inputs()],
                                lambda m, b: output(m, b).pow(2).mean())
    with torch.no_grad():
        moved = (output(model, x) - before).abs().max()
    if lorakit.VARIANTS[method].init_keeps_output:
        assert moved <= 1e-5
    else:
        assert moved > 1e-6


@pytest.mark.parametrize(("method", "kind"),
                         [p for p in pairs() if not lorakit.KINDS[p[1]].quantized])
def test_merge_equals_the_unmerged_forward_and_unmerge_restores_the_base(method, kind):
    if lorakit.VARIANTS[method].mergeable:
        check_merge_and_unmerge(kind, prepare=perturb, **settings(method))
        return
    model, adapters, _ = attached(method, kind)
    perturb(adapters)
    with pytest.raises(lorakit.LoraKitError):
        adapters.merge()
    assert not adapters.merged


@pytest.mark.parametrize(("method", "kind"),
                         [p for p in pairs() if lorakit.KINDS[p[1]].quantized])
def test_merge_into_a_quantized_base_is_refused_or_quantizes_w_plus_dw_for_good(method, kind):
    if lorakit.VARIANTS[method].mergeable:
        check_merge_and_unmerge(kind, prepare=perturb, **settings(method))
        return
    model, adapters, _ = attached(method, kind)
    perturb(adapters)
    for requantize in (False, True):
        with pytest.raises(lorakit.LoraKitError):
            adapters.merge(requantize=requantize)
    assert not adapters.merged


@pytest.mark.parametrize(("method", "kind"), pairs())
def test_save_and_load_round_trip_bit_exactly_onto_a_fresh_base(method, kind, tmp_path):
    check_save_and_load(kind, tmp_path, prepare=perturb, **settings(method))


@pytest.mark.parametrize(("method", "kind"), pairs())
def test_peft_loads_the_export_with_equal_outputs_or_the_export_is_refused(method, kind,
                                                                          tmp_path):
    cls = lorakit.VARIANTS[method]
    model, adapters, inputs = attached(method, kind)
    perturb(adapters)
    if not cls.peft:
        assert cls.peft_refusal, "a method without PEFT's layout says why"
        with pytest.raises(lorakit.AdapterFileError, match=f"method {method!r} has no PEFT"):
            lorakit.export_peft(adapters, tmp_path / "peft")
        return
    x = inputs()
    with torch.no_grad():
        ours = output(model, x)
        out = lorakit.export_peft(adapters, tmp_path / "peft")
        theirs = output(peft.PeftModel.from_pretrained(peft_base(kind), str(out)).eval(), x)
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize(("method", "kind"), pairs())
def test_a_routed_batch_equals_each_row_alone_or_the_route_is_refused(method, kind):
    make, targets, inputs = ALL[kind]
    model = make()
    for i, rank in enumerate((2, 3)):
        adapters = lorakit.attach(model, lorakit.LoRAConfig(
            targets=targets, **settings(method, rank=rank)), name=f"n{i}")
        perturb(adapters, seed=i)
    x = torch.cat([inputs(), inputs()])[:5]
    ids = torch.tensor([1, -1, 0, 1, 0])[:len(x)]
    routable = lorakit.VARIANTS[method].routable and lorakit.KINDS[kind].routable
    with torch.no_grad():
        if not routable:
            with pytest.raises(lorakit.LoraKitError, match="cannot be routed|mixed-adapter"):
                with adapters.route(ids):
                    output(model, x)
            return
        with adapters.route(ids):
            routed = output(model, x)
        alone = one_by_one(model, adapters, x, ids, output)
    assert (routed - alone).abs().max() <= 1e-5
