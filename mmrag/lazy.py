"""Lazy package exports (PEP 562): a name's module is imported when the name is first used.

Package `__init__` files list {name: module} and set `__getattr__ = lazy_exports(__name__,
exports)`, so importing a package does not import what its names need (torch, LangChain,
qdrant-client) until a caller asks for one of them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """The module `__getattr__` for `package`: imports `exports[name]` once, then caches the value."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
