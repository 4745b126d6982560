"""DUSt3R models: the tiny architecture, checkpoints in the upstream format, a safe loader.

The network class is mini-dust3r's `AsymmetricCroCo3DStereo` (CC BY-NC-SA 4.0, an
optional extra); a user's own `dust3r` checkout is used instead when `mini_dust3r` is
not installed and `dust3r.model` imports.

Checkpoints are the upstream format, `{"args": Namespace(model="AsymmetricCroCo3DStereo(
...)"), "model": state_dict}`. They are read with `torch.load(weights_only=True)` (with
`argparse.Namespace` allowed, which is what the upstream files hold) and the model string
is parsed with `ast` into keyword literals, never `eval`-ed: a file that is not a
DUSt3R checkpoint gives a clear error instead of running code.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import math
from pathlib import Path

import torch
from torch import nn

from lorakit.errors import LoraKitError

INF = float("inf")

#: the tiny DUSt3R lora3d embeds (plugins/lora3d/assets/tiny_dust3r.pth): 64 px, patch 8,
#: RoPE, linear head, 4 encoder + 4 decoder blocks
TINY_ARGS: dict = dict(
    output_mode="pts3d", head_type="linear", patch_embed_cls="PatchEmbedDust3R",
    img_size=(64, 64), patch_size=8, enc_embed_dim=128, enc_depth=4, enc_num_heads=4,
    dec_embed_dim=128, dec_depth=4, dec_num_heads=4, pos_embed="RoPE100",
    landscape_only=False, depth_mode=("exp", -INF, INF), conf_mode=("exp", 1, INF),
)

def dust3r_class():
    """AsymmetricCroCo3DStereo from mini-dust3r, else from a `dust3r` checkout on the path."""
    errors = []
    for module in ("mini_dust3r.model", "dust3r.model"):
        try:
            return importlib.import_module(module).AsymmetricCroCo3DStereo
        except ImportError as err:
            errors.append(f"{module}: {err}")
    raise LoraKitError("lora3d needs DUSt3R's network: pip install 'lorakit[lora3d]' and "
                       "`pip install --no-deps mini-dust3r==0.1.2` (CC BY-NC-SA 4.0), or put a "
                       "dust3r checkout on PYTHONPATH (" + "; ".join(errors) + ")")


def model_string(args: dict) -> str:
    def lit(v):
        if isinstance(v, float) and math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if isinstance(v, tuple):
            return "(" + ", ".join(lit(x) for x in v) + ("," if len(v) == 1 else "") + ")"
        return repr(v)
    return "AsymmetricCroCo3DStereo(" + ", ".join(f"{k}={lit(v)}" for k, v in args.items()) + ")"


def parse_model_string(text: str) -> dict:
    """`AsymmetricCroCo3DStereo(k=v, ...)` to its keyword arguments, without eval."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise LoraKitError(f"checkpoint args.model is not a DUSt3R constructor call: {err}") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id == "AsymmetricCroCo3DStereo") or call.args:
        raise LoraKitError("checkpoint args.model is not `AsymmetricCroCo3DStereo(...)` with "
                           f"keyword arguments: {text[:120]!r}")

    def value(node):
        if isinstance(node, ast.Name) and node.id == "inf":
            return INF
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.Tuple):
            return tuple(value(e) for e in node.elts)
        if isinstance(node, ast.List):
            return [value(e) for e in node.elts]
        return ast.literal_eval(node)

    out = {}
    for kw in call.keywords:
        try:
            out[kw.arg] = value(kw.value)
        except ValueError:
            raise LoraKitError(f"checkpoint args.model: argument {kw.arg!r} is not a literal") \
                from None
    if out.get("patch_embed_cls") == "ManyAR_PatchEmbed":   # as upstream's load_model does
        out["patch_embed_cls"] = "PatchEmbedDust3R"
    out["landscape_only"] = False
    if isinstance(out.get("img_size"), list):
        out["img_size"] = tuple(out["img_size"])
    return out


def build_model(args: dict | None = None) -> nn.Module:
    args = dict(TINY_ARGS if args is None else args)
    cls = dust3r_class()
    return cls(**args)


def save_checkpoint(model: nn.Module, args: dict, path, extra: dict | None = None) -> None:
    """The upstream format: {"args": Namespace(model=...), "model": state_dict}."""
    ckpt = {"args": argparse.Namespace(model=model_string(args)),
            "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}}
    ckpt.update(extra or {})
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def read_checkpoint(path) -> tuple[dict, dict]:
    """(constructor kwargs, state_dict) of a DUSt3R checkpoint, or a clear LoraKitError."""
    path = Path(path)
    if not path.is_file():
        raise LoraKitError(f"DUSt3R checkpoint {str(path)!r} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise LoraKitError(f"{path} is not a DUSt3R checkpoint that loads safely "
                           f"(torch.load weights_only=True): {type(err).__name__}: "
                           f"{str(err).splitlines()[0][:200]}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "args" not in ckpt:
        keys = list(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise LoraKitError(f"{path} is not a DUSt3R checkpoint: expected keys 'args' and "
                           f"'model', found {keys}")
    args = ckpt["args"]
    text = getattr(args, "model", None) if not isinstance(args, dict) else args.get("model")
    if not isinstance(text, str):
        raise LoraKitError(f"{path}: checkpoint args carry no `model` constructor string")
    state = ckpt["model"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise LoraKitError(f"{path}: checkpoint 'model' is not a state dict of tensors")
    return parse_model_string(text), state


def load_checkpoint(path) -> tuple[nn.Module, dict]:
    """A DUSt3R model (eval mode) and its constructor kwargs, from a checkpoint file."""
    args, state = read_checkpoint(path)
    try:
        model = build_model(args)
    except LoraKitError:
        raise
    except Exception as err:
        raise LoraKitError(f"{path}: DUSt3R could not be built from its args: {err}") from None
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("mask_token")]
    if missing or result.unexpected_keys:
        raise LoraKitError(f"{path}: weights do not fit the network in its args (missing "
                           f"{missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    model.eval()
    return model, args


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
