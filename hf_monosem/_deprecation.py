"""Old flat-layout import paths kept as aliases for one release (0.2), each with a DeprecationWarning."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib import import_module
from typing import Any


def alias_module(
    old: str, new: str, *also: str
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for a module ``old`` that now lives at ``new``.

    Names resolve in ``new`` first, then in ``also`` (the modules that held private helpers), so code
    that reached into the old module keeps working until the alias goes.

    Example:
        >>> getattr_, _, names = alias_module("hf_monosem.old_name", "hf_monosem.cached")
        >>> getattr_("train_probe_grid").__module__, "fit_sae" in names
        ('hf_monosem.cached.probe_grid', True)
    """
    warnings.warn(
        f"{old} moved to {new}; the old path is an alias kept for one release",
        DeprecationWarning,
        stacklevel=3,
    )
    modules = [import_module(name) for name in (new, *also)]

    def __getattr__(name: str) -> Any:
        for module in modules:
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {old!r} (now {new!r}) has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set().union(*(dir(m) for m in modules)))

    return __getattr__, __dir__, list(modules[0].__all__)
