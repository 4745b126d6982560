"""The file an L4Q export writes, and how to read it with torch and safetensors alone.

`l4q_model.safetensors` holds the whole merged model's state dict, one tensor per name,
except that each quantized Linear's `<path>.weight` is three tensors:

    <path>.weight.codes    uint8, the integer codes q in [0, 2^bits − 1], row-major over
                           (out × in), packed 8 // c per byte, c = 2, 4 or 8 bits a code
                           (the smallest of those ≥ bits), lowest bits first
    <path>.weight.step     float32 (out, in / group_size): Δ per group of inputs
    <path>.weight.offset   float32 (out, in / group_size): b per group

and W = q · Δ + b group by group. The header's metadata says `format` ("lorakit-l4q/1")
and `modules` (JSON: path -> bits, group_size, shape). This module imports nothing of
lorakit, so a deployment can copy it: `load_l4q_state(path)` gives a plain state dict that
`model.load_state_dict` takes.
"""
from __future__ import annotations

import json

import torch

FORMAT = "lorakit-l4q/1"


def container_bits(bits: int) -> int:
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (any shape, values < 2^bits) -> a flat uint8 tensor, 8 // c codes per byte."""
    c = container_bits(bits)
    per = 8 // c
    flat = codes.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % per)]).reshape(-1, per)
    packed = torch.zeros(flat.shape[0], dtype=torch.uint8)
    for j in range(per):
        packed |= flat[:, j] << (c * j)
    return packed


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    c = container_bits(bits)
    per = 8 // c
    mask = (1 << c) - 1
    parts = [(packed >> (c * j)) & mask for j in range(per)]
    return torch.stack(parts, dim=1).reshape(-1)[:count]


def dequantize(codes: torch.Tensor, step: torch.Tensor, offset: torch.Tensor, bits: int,
               shape) -> torch.Tensor:
    """W (out × in) from packed codes and per-group Δ and b."""
    out, inp = (int(s) for s in shape)
    q = unpack_codes(codes, bits, out * inp).to(step.dtype).reshape(out, step.shape[1], -1)
    return (q * step[..., None] + offset[..., None]).reshape(out, inp)


def load_l4q_state(path) -> dict[str, torch.Tensor]:
    """The export's state dict with every quantized weight dequantized (float32)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not an L4Q export (format {meta.get('format')!r}, "
                             f"expected {FORMAT!r})")
        modules = json.loads(meta["modules"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for name, info in modules.items():
        key = f"{name}.weight"
        tensors[key] = dequantize(tensors.pop(f"{key}.codes"), tensors.pop(f"{key}.step"),
                                  tensors.pop(f"{key}.offset"), info["bits"], info["shape"])
    return tensors
