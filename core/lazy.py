"""Public names imported on first use (PEP 562), for package `__init__`s whose names
live in modules that load torch: `lorakit --help` must not pay for them."""
from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, homes: dict[str, str]):
    """`__getattr__` and `__dir__` for `package`, which finds each name of `homes` (name ->
    home module) there on first use and keeps it in the package's namespace."""
    def __getattr__(name: str):
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *homes})

    return __getattr__, __dir__
