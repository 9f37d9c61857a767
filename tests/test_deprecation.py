"""The one deprecation mechanism: each old import path warns with our own warning class and still
resolves every name (and the private helpers code reached for) in its new home."""

from __future__ import annotations

import importlib
import sys

import pytest

from hf_monosem._deprecation import REMOVED_IN, HfMonosemDeprecationWarning

#: old path -> (new home, a private helper the old module had)
OLD_PATHS = {
    "hf_monosem.assets": ("hf_monosem.data", "minilm_path"),
    "hf_monosem.metrics": ("hf_monosem.evaluation", "_labels"),
    "hf_monosem.evaluation.metrics": ("hf_monosem.evaluation", "_features"),
    "hf_monosem.probe_grid": ("hf_monosem.cached", "train_probe_grid"),
    "hf_monosem.projector_fitting": ("hf_monosem.cached", "fit_contrastive_projector"),
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_an_old_path_warns_and_keeps_every_name(old, monkeypatch):
    new, helper = OLD_PATHS[old]
    monkeypatch.delitem(sys.modules, old, raising=False)  # the warning comes with the first import
    with pytest.warns(HfMonosemDeprecationWarning, match=f"{old} moved to {new} in 0.2.0; .* {REMOVED_IN}"):
        module = importlib.import_module(old)
    home = importlib.import_module(new)
    assert module.__all__ == home.__all__
    for name in home.__all__:
        assert getattr(module, name) is getattr(home, name)
    assert callable(getattr(module, helper))
    with pytest.raises(AttributeError, match=f"module '{old}' .* has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


def test_our_warning_is_an_error_in_the_suite():
    # pyproject.toml's filterwarnings: a test or example that still imports an alias fails
    # (matched by the message alias_module writes, so that pytest need not import hf_monosem to read it)
    import warnings

    with pytest.raises(HfMonosemDeprecationWarning):
        warnings.warn(
            "hf_monosem.metrics moved to hf_monosem.evaluation in 0.2.0; the old path goes in 0.3.0",
            HfMonosemDeprecationWarning,
            stacklevel=1,
        )
    warnings.warn("another library's deprecation", DeprecationWarning, stacklevel=1)  # not an error
