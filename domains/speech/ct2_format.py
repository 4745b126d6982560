"""A reader of CTranslate2's `model.bin`, the binary that faster-whisper models ship as.

The file is little-endian and flat (binary version 6, CTranslate2 >= 3):

    u32 binary_version
    str spec_name, u32 spec_revision              (version >= 2)
    u32 n_variables, then n times:
        str name   u8 rank   u32 dims[rank]   u8 dtype   u32 n_bytes   bytes data
    u32 n_aliases, then n times: str alias, str target    (version >= 3)

where `str` is a u16 length (counting a trailing NUL) followed by the UTF-8 bytes and
the NUL. dtype ids follow CTranslate2's `DataType` enum: 0 float32, 1 int8, 2 int16,
3 int32, 4 float16, 5 bfloat16. Scalars (rank 0) carry the model's options
(`num_heads`, `pre_norm`, ...). An alias names a tensor stored once under another
name (Whisper's output projection is its token embedding).

Only the layout is read here; what the names mean for one architecture is the
converter's business (`whisper_ct2.py`).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lorakit.errors import CheckpointError

# CTranslate2's DataType enum, in order; bfloat16 has no numpy type and is widened by torch
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
SUPPORTED_VERSIONS = range(3, 7)


@dataclass
class CT2Model:
    """The variables of a `model.bin`: tensors by name, plus the spec it was written for."""

    spec: str
    revision: int
    binary_version: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]

    def __getitem__(self, name: str) -> torch.Tensor:
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise KeyError(name)
        return self.variables[name]

    def scalar(self, name: str) -> int:
        return int(self[name].item())


class _Cursor:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CheckpointError(
                f"{self.path} ends after {len(self.data)} bytes while a CTranslate2 model.bin "
                f"needs {self.pos + n}: the file is truncated; download it again")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("H")
        raw = self.take(n)
        if n == 0 or raw[-1] != 0:
            raise CheckpointError(f"{self.path} is not a CTranslate2 model.bin: a name at byte "
                                  f"{self.pos - n} is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def _tensor(raw: bytes, dims: list[int], dtype_id: int, name: str, path: Path) -> torch.Tensor:
    if dtype_id not in DTYPES:
        raise CheckpointError(f"{path}: variable {name!r} has unknown CTranslate2 dtype id "
                              f"{dtype_id} (known: 0-5)")
    if DTYPES[dtype_id] == "bfloat16":
        bits = np.frombuffer(raw, dtype=np.int16).copy()
        return torch.from_numpy(bits).view(torch.bfloat16).reshape(dims)
    array = np.frombuffer(raw, dtype=DTYPES[dtype_id]).copy()
    if array.size != int(np.prod(dims)):
        raise CheckpointError(f"{path}: variable {name!r} holds {array.size} values for "
                              f"shape {dims}")
    return torch.from_numpy(array).reshape(dims)


def read_ct2(path) -> CT2Model:
    """Every variable of a CTranslate2 `model.bin`, or a `CheckpointError` that says why not."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"CTranslate2 model file {path} does not exist")
    cur = _Cursor(path.read_bytes(), path)
    version = cur.unpack("I")
    if version not in SUPPORTED_VERSIONS:
        raise CheckpointError(
            f"{path} is not a CTranslate2 model.bin this reader knows: binary version "
            f"{version}, expected one of {list(SUPPORTED_VERSIONS)}")
    spec, revision = cur.string(), cur.unpack("I")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(cur.unpack("I")):
        name = cur.string()
        dims = [cur.unpack("I") for _ in range(cur.unpack("B"))]
        dtype_id = cur.unpack("B")
        raw = cur.take(cur.unpack("I"))
        variables[name] = _tensor(raw, dims, dtype_id, name, path)
    aliases = {}
    for _ in range(cur.unpack("I")):
        alias = cur.string()
        aliases[alias] = cur.string()
    if cur.pos != len(cur.data):
        raise CheckpointError(f"{path} has {len(cur.data) - cur.pos} bytes after its last "
                              "record: not a CTranslate2 model.bin, or a damaged one")
    return CT2Model(spec, revision, version, variables, aliases)
