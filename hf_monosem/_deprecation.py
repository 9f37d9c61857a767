"""The package's one deprecation mechanism: old import paths kept as module aliases for one release.

Every alias is a module whose ``__getattr__`` / ``__dir__`` / ``__all__`` come from :func:`alias_module`;
importing it warns once with :class:`HfMonosemDeprecationWarning` (a ``DeprecationWarning``), which the
test suite turns into an error (``pyproject.toml``), so neither the package, its examples nor its tests
can lean on an alias by accident. The aliases came with the layout change of 0.2.0 and go in 0.3.0.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib import import_module
from typing import Any

__all__ = ["REMOVED_IN", "HfMonosemDeprecationWarning", "alias_module"]

#: the release in which every alias below goes
REMOVED_IN = "0.3.0"


class HfMonosemDeprecationWarning(DeprecationWarning):
    """An old hf_monosem import path was used (our own warnings, told apart from other libraries')."""


def alias_module(
    old: str, new: str, *also: str
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for a module ``old`` that now lives at ``new``.

    Names resolve in ``new`` first, then in ``also`` (the modules that held private helpers), so code
    that reached into the old module keeps working until the alias goes.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     getattr_, _, names = alias_module("hf_monosem.old_name", "hf_monosem.cached")
        >>> getattr_("train_probe_grid").__module__, "fit_sae" in names
        ('hf_monosem.cached.probe_grid', True)
        >>> caught[0].category.__name__, str(caught[0].message)
        ('HfMonosemDeprecationWarning', 'hf_monosem.old_name moved to hf_monosem.cached in 0.2.0; the old path goes in 0.3.0')
    """  # noqa: E501
    warnings.warn(
        f"{old} moved to {new} in 0.2.0; the old path goes in {REMOVED_IN}",
        HfMonosemDeprecationWarning,
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
