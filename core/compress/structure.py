r"""Where a transformers model's prunable units are: heads and MLP channels, per block.

A structured unit is a set of weight rows and columns that only make sense together,
so removing it keeps every matrix product well shaped:

    attention head h (head_dim d)          MLP channel c
      q  rows  h·d … h·d+d-1                 gate, up (Llama) / intermediate.dense (BERT): row c
      k, v rows of its KV head g             down (Llama) / output.dense (BERT): column c
      o  columns h·d … h·d+d-1

    x ─► q,k,v (rows = heads) ─► attention per head ─► o (columns = heads) ─► + x
    x ─► gate, up (rows = channels) ─► act(gate)·up ─► down (columns = channels) ─► + x

Two families are known, found by their module names (not by class, so Mistral or
Qwen2 blocks with the same layout are found too):

    family  block                 attention (q, k, v, o)                      MLP (in…, out)
    llama   LlamaDecoderLayer     self_attn.{q,k,v,o}_proj                    mlp.{gate,up}_proj, mlp.down_proj
    bert    BertLayer             attention.self.{query,key,value},           intermediate.dense, output.dense
                                  attention.output.dense

In a grouped-query (GQA) model, `n_kv` key/value heads are each shared by
`n_heads / n_kv` consecutive query heads (transformers' `repeat_kv`): query head h
reads KV head h // group. A module wrapped by lorakit (`LoRALayer`) stands for its
base `nn.Linear` (`linear`).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import LoraKitError
from ..layers import LoRALayer


@dataclass(frozen=True)
class Block:
    """One transformer block's prunable modules, by their paths in the model."""

    index: int
    path: str
    family: str                  # "llama" or "bert"
    q: str
    k: str
    v: str
    o: str
    mlp_in: tuple[str, ...]      # modules whose output rows are the channels
    mlp_out: str                 # the module whose input columns are the channels
    attention: str               # the module holding the head counts as attributes
    mlp: str

    @property
    def head_modules(self) -> tuple[str, ...]:
        return (self.q, self.k, self.v, self.o)


def linear(model: nn.Module, path: str) -> nn.Linear:
    """The `nn.Linear` at `path`, the base of a lorakit `LoRALayer` there."""
    module = model.get_submodule(path)
    if isinstance(module, LoRALayer):
        module = module.base
    if not isinstance(module, nn.Linear):
        raise LoraKitError(f"prune: module {path!r} is {type(module).__name__}, not an "
                           "nn.Linear; structured pruning slices Linear weights only (a "
                           "quantized base is pruned before it is quantized)")
    return module


def _has(module: nn.Module, *names: str) -> bool:
    return all(hasattr(module, n) for n in names)


def blocks(model: nn.Module) -> list[Block]:
    """Every transformer block of `model`, in model order; an error when there is none."""
    found: list[Block] = []
    for path, module in model.named_modules():
        p = f"{path}." if path else ""
        attn, mlp = getattr(module, "self_attn", None), getattr(module, "mlp", None)
        if (isinstance(attn, nn.Module) and isinstance(mlp, nn.Module)
                and _has(attn, "q_proj", "k_proj", "v_proj", "o_proj")
                and _has(mlp, "gate_proj", "up_proj", "down_proj")):
            a, m = f"{p}self_attn", f"{p}mlp"
            found.append(Block(len(found), path, "llama", f"{a}.q_proj", f"{a}.k_proj",
                               f"{a}.v_proj", f"{a}.o_proj",
                               (f"{m}.gate_proj", f"{m}.up_proj"), f"{m}.down_proj", a, m))
            continue
        attention = getattr(module, "attention", None)
        if (isinstance(attention, nn.Module) and _has(module, "intermediate", "output")
                and isinstance(getattr(attention, "self", None), nn.Module)
                and _has(attention.self, "query", "key", "value")
                and _has(attention, "output") and _has(attention.output, "dense")
                and _has(module.intermediate, "dense") and _has(module.output, "dense")):
            if hasattr(module, "crossattention"):
                raise LoraKitError(f"prune: block {path!r} has cross-attention; pruning "
                                   "knows encoder-only and decoder-only blocks")
            s = f"{p}attention.self"
            found.append(Block(len(found), path, "bert", f"{s}.query", f"{s}.key",
                               f"{s}.value", f"{p}attention.output.dense",
                               (f"{p}intermediate.dense",), f"{p}output.dense", s,
                               f"{p}intermediate"))
    if not found:
        raise LoraKitError(f"prune: {type(model).__name__} has no transformer block that "
                           "pruning knows: a Llama-style block (self_attn.q_proj…o_proj, "
                           "mlp.gate_proj/up_proj/down_proj) or a BERT layer "
                           "(attention.self.query…, intermediate.dense, output.dense)")
    return found


def head_dim(model: nn.Module, block: Block) -> int:
    attn = model.get_submodule(block.attention)
    d = getattr(attn, "head_dim", None) or getattr(attn, "attention_head_size", None)
    if not d:
        raise LoraKitError(f"prune: attention module {block.attention!r} names no head size "
                           "(head_dim or attention_head_size)")
    return int(d)


def head_counts(model: nn.Module, block: Block) -> tuple[int, int, int]:
    """(query heads, KV heads, head_dim) of a block, read off its weight shapes."""
    d = head_dim(model, block)
    return (linear(model, block.q).out_features // d, linear(model, block.k).out_features // d,
            d)


def channel_count(model: nn.Module, block: Block) -> int:
    return linear(model, block.mlp_out).in_features
