"""Remote code: checkpoints that load with plain transformers (``trust_remote_code=True``).

With ``register_for_auto_class`` transformers copies the file that defines the model class *and
every file it imports relatively* (``from .configuration import ...``, recursively), so
``modeling.py``, ``configuration.py``, ``feature_layers.py`` and the modules those import land next
to the weights, and ``config.json`` gets an ``auto_map``. Loading then needs only torch and
transformers (``trust_remote_code=True``, works with ``HF_HUB_OFFLINE=1`` from a local folder).
Package modules under :mod:`hf_monosem.models` must therefore import each other relatively; an
absolute ``import hf_monosem...`` would make transformers demand hf_monosem at load time.

:func:`enable_remote_code` is the transformers way of making every later ``save_pretrained`` /
``push_to_hub`` of a model carry its code; ``save_for_hub(..., remote_code=True)`` does it for one
save and leaves no global state behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from transformers import PreTrainedModel

from ..models.configuration import MonoSemanticConfig
from ..models.modeling import (
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
)
from .cards import config_of

__all__ = ["enable_remote_code"]

_AUTO_CLASS = {
    MonoSemanticModel: "AutoModel",
    MonoSemanticForSequenceClassification: "AutoModelForSequenceClassification",
    MonoSemanticForImageClassification: "AutoModelForImageClassification",
}


def _auto_map(model: PreTrainedModel) -> dict[str, str]:
    config_module = MonoSemanticConfig.__module__.split(".")[-1]
    auto_map = {"AutoConfig": f"{config_module}.{MonoSemanticConfig.__name__}"}
    for cls, auto in _AUTO_CLASS.items():
        auto_map[auto] = f"{cls.__module__.split('.')[-1]}.{cls.__name__}"
    return auto_map


def _own_auto_class(model: PreTrainedModel) -> str:
    for cls, auto in _AUTO_CLASS.items():
        if type(model) is cls:
            return auto
    raise TypeError(
        f"remote code is supported for {[c.__name__ for c in _AUTO_CLASS]}, not {type(model).__name__}"
    )


def enable_remote_code(model: PreTrainedModel) -> PreTrainedModel:
    """Make every later ``save_pretrained``/``push_to_hub`` of ``model`` carry its modeling code.

    Calls ``register_for_auto_class`` on ``MonoSemanticConfig`` and on the model's class (a
    process-wide switch, the transformers way: other instances of the class will copy the code too)
    and sets ``model.config.auto_map`` for every Auto class, so the saved checkpoint loads with
    ``AutoConfig``/``AutoModel``/``AutoModelFor...Classification`` and ``trust_remote_code=True``
    where hf_monosem is not installed. For a one-off save use ``save_for_hub(..., remote_code=True)``,
    which leaves no global state behind.

    Example:
        >>> import os, tempfile
        >>> from hf_monosem.data import backbone_source, build_classifier
        >>> model = build_classifier("nonneg", ["cat", "dog"], "image", backbone_source(None, "image"),
        ...                          feature_dim=32)
        >>> model = enable_remote_code(model)
        >>> model.config.auto_map["AutoModelForImageClassification"]
        'modeling.MonoSemanticForImageClassification'
        >>> folder = tempfile.mkdtemp()
        >>> model.save_pretrained(folder)
        >>> {"configuration.py", "modeling.py"} <= set(os.listdir(folder))
        True
        >>> type(model)._auto_class = type(model.config)._auto_class = None  # undo the process-wide switch
    """
    config_of(model)
    type(model).register_for_auto_class(_own_auto_class(model))
    type(model.config).register_for_auto_class("AutoConfig")
    model.config.auto_map = _auto_map(model)
    return model


_MISSING = object()


@contextlib.contextmanager
def remote_code_enabled(model: PreTrainedModel) -> Iterator[None]:
    """Within the block, ``model`` saves with remote code (:func:`enable_remote_code`); afterwards its
    classes and config are as they were (so publishing one model does not change how others save)."""
    classes = (type(model), type(model.config))
    saved = [(cls, cls.__dict__.get("_auto_class", _MISSING)) for cls in classes]
    saved_map = model.config.__dict__.get("auto_map", _MISSING)
    enable_remote_code(model)
    try:
        yield
    finally:
        for cls, value in saved:
            if value is _MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(cls, "_auto_class")
            else:
                cls._auto_class = value
        if saved_map is _MISSING:
            model.config.__dict__.pop("auto_map", None)
        else:
            model.config.auto_map = saved_map
