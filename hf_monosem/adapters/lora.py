"""LoRA and MonoLoRA adapters on the backbone, with the feature layer and classifier trained fully.

:func:`add_lora` puts LoRA adapters on the backbone's attention projections (per-family defaults,
see :func:`default_target_modules`) and lists the feature layer and the classifier in peft's
``modules_to_save``, so they are trained in full and saved with the adapter. peft only
auto-detects heads named ``classifier``/``score``; our head is ``classifier`` and our feature
layer is ``feature_layer``, both matched by name suffix (``monosemantic.feature_layer``).

**MonoLoRA** (the paper's language method) is LoRA with a ReLU in the adapter branch, so the update
is sparse and non-negative. Two placements (the paper does not pin it down):

* ``monolora="output"``: ``h = W x + relu(s * B A x)``
* ``monolora="hidden"``: ``h = W x + s * B relu(A x)``

peft's ``PeftType`` is a closed enum, so MonoLoRA is a LoRA *variant*: :class:`MonoLoraConfig` is a
``LoraConfig`` with one more field, ``monolora``, and registers :class:`MonoLoraLinear` (a peft
``lora.Linear`` whose variant runs the ReLU) through LoRA's custom-module support
(``LoraConfig._register_custom_module``). Its adapters are ordinary LoRA weights
(``lora_A``/``lora_B``) with the same state-dict keys.

Saving and loading: a MonoLoRA ``adapter_config.json`` says ``"peft_type": "MONOLORA"`` and
``"monolora": "<placement>"``. Importing :mod:`hf_monosem` adds ``"MONOLORA"`` to peft's
config-type lookup, so ``PeftModel.from_pretrained(base, folder)`` rebuilds the ReLU layers;
without :mod:`hf_monosem` peft refuses the folder (``KeyError: 'MONOLORA'``) instead of silently
running it as plain LoRA (whose outputs would be different). :func:`load_lora` does the same
explicitly.

Merging: ``relu(B A x)`` and ``B relu(A x)`` are not linear in ``x``, so no matrix ``dW`` satisfies
``(W + dW) x = W x + update(x)`` for all ``x``: a MonoLoRA adapter *cannot* be folded into ``W``.
``merge_adapter()`` / ``merge_and_unload()`` raise :class:`MonoLoraMergeError` and leave the model
untouched; serve the model unmerged (``PeftModel``) or use ``unload()`` to drop the adapters.
Plain LoRA adapters merge as usual.

The ReLU is ``clamp(min=0)``, whose gradient at exactly 0 is 1: LoRA initialises ``B = 0``, so with
``placement="output"`` every pre-activation starts at exactly 0, where ``torch.relu`` has gradient
0 and the adapter would never train. Forward values are identical to ``relu``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import LoraVariant
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "MONOLORA_PEFT_TYPE",
    "MONOLORA_PLACEMENTS",
    "AdapterActivationMonitor",
    "MonoLoraConfig",
    "MonoLoraLinear",
    "MonoLoraMergeError",
    "MonoReLU",
    "adapter_sparsity",
    "add_lora",
    "default_target_modules",
    "is_monolora",
    "load_lora",
    "lora_config",
]

#: where MonoLoRA puts the ReLU: ``relu(B A x)`` or ``B relu(A x)``.
MONOLORA_PLACEMENTS = ("output", "hidden")

#: ``peft_type`` written to a MonoLoRA ``adapter_config.json`` (in memory the config is plain LoRA).
MONOLORA_PEFT_TYPE = "MONOLORA"

#: per-family LoRA targets (module-name suffixes inside the backbone) that peft's own table lacks or
#: that we choose differently; everything else falls back to peft's table, then to a name heuristic.
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "vit": [
        "query",
        "value",
    ],  # transformers < 5.24 names; 5.24 uses q_proj / v_proj (found by the heuristic)
    "deit": ["query", "value"],
    "dinov2": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "convnext": ["pwconv1", "pwconv2"],  # the pointwise convolutions are nn.Linear
    "resnet": ["convolution"],  # nn.Conv2d: plain LoRA only (MonoLoRA needs nn.Linear targets)
}

# name pairs the heuristic looks for, in order, among the backbone's nn.Linear leaves
_HEURISTIC_TARGETS = (("q_proj", "v_proj"), ("query", "value"), ("q_lin", "v_lin"), ("q", "v"))


class MonoLoraMergeError(RuntimeError):
    """Raised when asked to merge a MonoLoRA adapter into the base weights (impossible, see module doc)."""


# ----------------------------------------------------------------------------------------- config
@dataclass
class MonoLoraConfig(LoraConfig):
    """A ``LoraConfig`` plus ``monolora``: the ReLU placement (``"output"`` or ``"hidden"``).

    With ``monolora=None`` it is plain LoRA. Otherwise it registers :class:`MonoLoraLinear` for
    ``nn.Linear`` targets, and targets of other types fail loudly when the adapter is built.

    Example:
        >>> cfg = MonoLoraConfig(r=4, lora_alpha=8, target_modules=["query"], monolora="hidden")
        >>> cfg.peft_type.value, cfg.to_dict()["peft_type"], cfg.to_dict()["monolora"]
        ('LORA', 'MONOLORA', 'hidden')
    """

    monolora: str | None = field(
        default=None,
        metadata={
            "help": "MonoLoRA ReLU placement: 'output' = relu(B A x), 'hidden' = B relu(A x); None = plain LoRA.",
            "is_lora_variant": True,
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.monolora is None:
            return
        if self.monolora not in MONOLORA_PLACEMENTS:
            raise ValueError(f"monolora={self.monolora!r} is not valid; allowed: None, 'output', 'hidden'")
        others = [
            f.name
            for f in dataclasses.fields(self)
            if f.metadata.get("is_lora_variant") and f.name != "monolora" and getattr(self, f.name)
        ]
        init_variants = dataclasses.fields(LoraConfig)
        init_field = next(f for f in init_variants if f.name == "init_lora_weights")
        if self.init_lora_weights in init_field.metadata.get("lora_variants", ()):
            others.append(f"init_lora_weights={self.init_lora_weights!r}")
        if others:
            raise ValueError(f"MonoLoRA cannot be combined with other LoRA variants: {others}")
        if self.lora_bias:
            raise ValueError("MonoLoRA does not support lora_bias=True")
        self._register_custom_module({nn.Linear: MonoLoraLinear})

    def to_dict(self) -> dict:
        d = super().to_dict()
        if self.monolora is not None:
            d["peft_type"] = MONOLORA_PEFT_TYPE
        return d


def _register_with_peft() -> None:
    """Let ``PeftConfig``/``PeftModel.from_pretrained`` read MonoLoRA adapter folders.

    Adds the string key ``"MONOLORA"`` to peft's type -> config-class lookup (a key no peft adapter
    uses); the in-memory ``peft_type`` stays ``LORA``, so peft runs it with its LoRA tuner.
    """
    PEFT_TYPE_TO_CONFIG_MAPPING.setdefault(MONOLORA_PEFT_TYPE, MonoLoraConfig)


_register_with_peft()


# ----------------------------------------------------------------------------------------- layers
class MonoReLU(nn.Module):
    """``clamp(min=0)``: equal to ReLU, but with gradient 1 (not 0) at exactly 0.

    The intermediate MonoLoRA makes non-negative passes through this module, so forward hooks on it
    (see :class:`AdapterActivationMonitor`) see exactly the sparse values.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)


def _ensure_mono_relu(module: nn.Module) -> nn.ModuleDict:
    # created lazily: peft builds the first adapter from inside the layer's constructor
    if "mono_relu" not in module._modules:
        module.mono_relu = nn.ModuleDict()
    return module.mono_relu


class MonoLoraVariant(LoraVariant):
    """The forward pass of one MonoLoRA adapter; merging is refused (the update is non-linear)."""

    def __init__(self, placement: str):
        self.placement = placement

    def supports_lora_conversion(self) -> bool:
        return False

    @staticmethod
    def init(module: LoraLayer, adapter_name: str, **kwargs) -> None:
        _ensure_mono_relu(module)[adapter_name] = MonoReLU()

    @staticmethod
    def _refuse(module: LoraLayer, active_adapter: str, *args, **kwargs):
        placement = module.lora_variant[active_adapter].placement
        update = "relu(B A x)" if placement == "output" else "B relu(A x)"
        raise MonoLoraMergeError(
            f"cannot merge MonoLoRA adapter {active_adapter!r} ({update}) into the base weights: the update is "
            "not a linear function of x, so no weight matrix reproduces it. Keep the adapter unmerged (run the "
            "PeftModel), or call unload() to drop the adapters and keep the trained feature layer and classifier."
        )

    merge_safe = _refuse
    merge_unsafe = _refuse
    unmerge = _refuse

    def forward(
        self, module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs
    ):
        lora_a = module.lora_A[active_adapter]
        lora_b = module.lora_B[active_adapter]
        dropout = module.lora_dropout[active_adapter]
        scaling = module.scaling[active_adapter]
        relu = module.mono_relu[active_adapter]
        if self.placement == "output":
            update = relu(lora_b(lora_a(dropout(x))) * scaling)
        else:
            update = lora_b(relu(lora_a(dropout(x)))) * scaling
        return result + update


class MonoLoraLinear(LoraLinear):
    """peft's LoRA ``Linear`` whose MonoLoRA adapters run :class:`MonoLoraVariant`.

    Built by peft's custom-module dispatch (``custom_cls(target, adapter_name, config=..., **kwargs)``);
    adapters whose config has ``monolora=None`` behave exactly like plain LoRA.
    """

    other_param_names = LoraLayer.other_param_names + ("mono_relu",)

    def __init__(self, base_layer, adapter_name: str, config: LoraConfig, **kwargs) -> None:
        super().__init__(base_layer, adapter_name, config=config, **kwargs)
        _ensure_mono_relu(self)

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs) -> LoraVariant | None:
        placement = getattr(config, "monolora", None)
        if placement is None:
            return super().resolve_lora_variant(config=config, **kwargs)
        return MonoLoraVariant(placement)

    def __repr__(self) -> str:
        return "mono" + super().__repr__()


# --------------------------------------------------------------------------------- building adapters
def _backbone_of(model: nn.Module) -> tuple[nn.Module, str]:
    """The backbone module and its dotted name prefix inside ``model`` (e.g. ``monosemantic.backbone``)."""
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    for name, module in model.named_modules():
        if name.split(".")[-1] == "backbone" and hasattr(module, "config"):
            return module, name
    raise ValueError(
        f"{type(model).__name__} has no 'backbone' submodule: add_lora expects an hf_monosem model "
        "(MonoSemanticModel or a MonoSemantic*Classification head)"
    )


def default_target_modules(model: nn.Module) -> list[str]:
    """Per-family LoRA targets for the model's backbone (module-name suffixes).

    Candidates, first whose names all exist in the backbone wins: our table
    (:data:`DEFAULT_LORA_TARGETS`: BERT-family ``query``/``value``, Llama-family ``q_proj``/``v_proj``,
    ConvNeXt's pointwise ``nn.Linear`` layers, ResNet's convolutions), peft's per-model table, then
    the attention projections found by name (``q_proj``/``v_proj``, ``query``/``value``,
    ``q_lin``/``v_lin``, ``q``/``v``). Module names move between transformers versions (ViT's are
    ``query``/``value`` before 5.x and ``q_proj``/``v_proj`` in 5.24), hence the check.
    """
    backbone, _ = _backbone_of(model)
    model_type = getattr(backbone.config, "model_type", "")
    adaptable = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
    leaves = {
        name.split(".")[-1]
        for name, m in backbone.named_modules()
        if isinstance(m, adaptable) or type(m).__name__ == "Conv1D"
    }
    candidates = [
        DEFAULT_LORA_TARGETS.get(model_type),
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type),
        *(list(pair) for pair in _HEURISTIC_TARGETS),
    ]
    for names in candidates:
        if names and set(names) <= leaves:
            return list(names)
    raise ValueError(
        f"no default LoRA targets for backbone model_type={model_type!r}; pass target_modules=[...] "
        f"(its adaptable layers are named {sorted(leaves)})"
    )


def _backbone_regex(prefix: str, names: Iterable[str]) -> str:
    """A peft ``target_modules`` regex matching ``names`` inside the backbone only (never the head)."""
    alternatives = "|".join(re.escape(n) for n in sorted(set(names)))
    return rf"^{re.escape(prefix)}\.(?:.*\.)?(?:{alternatives})$"


def _default_modules_to_save(model: nn.Module) -> list[str]:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    names = {name.split(".")[-1] for name, _ in base.named_modules()}
    # a frozen feature layer (config.freeze_feature_layer) must stay frozen: peft would train a copy of it
    frozen = bool(getattr(getattr(base, "config", None), "freeze_feature_layer", False))
    return [
        n for n in ("feature_layer", "classifier") if n in names and not (frozen and n == "feature_layer")
    ]


def lora_config(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16,
    target_modules: str | Sequence[str] | None = None,
    dropout: float = 0.0,
    monolora: str | None = None,
    modules_to_save: Sequence[str] | None = None,
    **lora_kwargs: Any,
) -> LoraConfig:
    """The ``LoraConfig`` (or :class:`MonoLoraConfig`) that :func:`add_lora` applies to ``model``.

    ``target_modules``: module-name suffixes, matched inside the backbone only (default
    :func:`default_target_modules`), or a regex string passed to peft unchanged.
    """
    if getattr(getattr(model, "config", None), "freeze_backbone", False):
        raise ValueError(
            "the model has freeze_backbone=True, so its backbone runs under torch.no_grad() and LoRA adapters on "
            "it would never train; build it with freeze_backbone=False (peft freezes the base weights itself)"
        )
    _, prefix = _backbone_of(model)
    if isinstance(target_modules, str):
        targets = target_modules
    else:
        names = list(target_modules) if target_modules is not None else default_target_modules(model)
        if not names:
            raise ValueError("target_modules is empty")
        targets = _backbone_regex(prefix, names)
    if modules_to_save is None:
        modules_to_save = _default_modules_to_save(model)
    task_type = lora_kwargs.pop(
        "task_type", "SEQ_CLS" if type(model).__name__.endswith("SequenceClassification") else None
    )
    kwargs = dict(
        r=r,
        lora_alpha=alpha,
        target_modules=targets,
        lora_dropout=dropout,
        modules_to_save=list(modules_to_save),
        task_type=task_type,
        **lora_kwargs,
    )
    if monolora is None:
        return LoraConfig(**kwargs)
    return MonoLoraConfig(monolora=monolora, **kwargs)


def _check_monolora_targets(model: nn.Module, config: LoraConfig) -> None:
    if getattr(config, "monolora", None) is None:
        return
    bad = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, LoraLayer)) or not list(module.parameters(recurse=False)):
            continue
        if isinstance(config.target_modules, str) and re.fullmatch(config.target_modules, name):
            bad.append(f"{name} ({type(module).__name__})")
    if bad:
        raise ValueError(f"MonoLoRA supports nn.Linear targets only; these targets are not: {bad[:5]}")


def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16,
    target_modules: str | Sequence[str] | None = None,
    dropout: float = 0.0,
    monolora: str | None = None,
    modules_to_save: Sequence[str] | None = None,
    adapter_name: str = "default",
    **lora_kwargs: Any,
) -> PeftModel:
    """Wrap ``model`` in a ``PeftModel``: LoRA (or MonoLoRA) on the backbone, head trained fully.

    Args:
        model: an hf_monosem model (``MonoSemanticModel`` or a classification head) with
            ``freeze_backbone=False``. Modified in place, as ``peft.get_peft_model`` does.
        r, alpha, dropout: LoRA rank, ``lora_alpha`` (scaling ``alpha / r``) and adapter dropout.
        target_modules: backbone module-name suffixes (default: per family, see
            :func:`default_target_modules`) or a peft regex string.
        monolora: ``None`` (plain LoRA), ``"output"`` (``relu(B A x)``) or ``"hidden"`` (``B relu(A x)``).
        modules_to_save: trained in full and saved with the adapter (default: ``feature_layer`` and
            ``classifier``, whichever exist).
        **lora_kwargs: any other ``LoraConfig`` field (``use_rslora``, ``task_type``, ...).

    Example:
        >>> import torch
        >>> from transformers import BertConfig
        >>> from hf_monosem import MonoSemanticConfig, MonoSemanticForSequenceClassification, add_lora
        >>> cfg = MonoSemanticConfig(backbone_config=BertConfig(vocab_size=100, hidden_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, intermediate_size=37), feature_dim=64, num_labels=2)
        >>> peft_model = add_lora(MonoSemanticForSequenceClassification(cfg), r=4, monolora="hidden")
        >>> sorted({n.split(".")[-1] for n, m in peft_model.named_modules() if isinstance(m, MonoLoraLinear)})
        ['query', 'value']
    """
    config = lora_config(
        model,
        r=r,
        alpha=alpha,
        target_modules=target_modules,
        dropout=dropout,
        monolora=monolora,
        modules_to_save=modules_to_save,
        **lora_kwargs,
    )
    _check_monolora_targets(model, config)
    return get_peft_model(model, config, adapter_name=adapter_name)


def _read_adapter_config(folder: str | os.PathLike) -> dict:
    path = os.path.join(os.fspath(folder), "adapter_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: not a peft adapter folder (save one with peft_model.save_pretrained)"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_lora(
    model: nn.Module,
    folder: str | os.PathLike,
    is_trainable: bool = False,
    adapter_name: str = "default",
    **kwargs,
) -> PeftModel:
    """Load a LoRA or MonoLoRA adapter (+ its trained feature layer and classifier) onto ``model``.

    ``model`` must be the base the adapter was trained on (same backbone weights). Equivalent to
    ``PeftModel.from_pretrained(model, folder)`` once :mod:`hf_monosem` is imported; the config is
    read here explicitly so a MonoLoRA folder always gets its ReLU layers back.
    """
    saved = _read_adapter_config(folder)
    if saved.get("peft_type") == MONOLORA_PEFT_TYPE:
        config = MonoLoraConfig.from_pretrained(os.fspath(folder))
    else:
        config = LoraConfig.from_pretrained(os.fspath(folder))
    return PeftModel.from_pretrained(
        model,
        os.fspath(folder),
        adapter_name=adapter_name,
        is_trainable=is_trainable,
        config=config,
        **kwargs,
    )


def is_monolora(model: nn.Module) -> bool:
    """Whether any adapter of ``model`` is a MonoLoRA adapter."""
    configs = getattr(model, "peft_config", {}) or {}
    return any(getattr(c, "monolora", None) is not None for c in configs.values())


# ----------------------------------------------------------------------------------------- sparsity
class AdapterActivationMonitor:
    """Context manager counting exact zeros of each adapter's intermediate, via forward hooks.

    For MonoLoRA layers it watches the ReLU'd intermediate (``relu(s B A x)`` of width ``out`` for
    ``"output"``, ``relu(A x)`` of width ``r`` for ``"hidden"``); for plain LoRA layers, where there is
    no ReLU, the update ``B A x`` (normally no exact zeros), so the two can be compared.

    Example:
        >>> import torch
        >>> from transformers import BertConfig
        >>> from hf_monosem import MonoSemanticConfig, MonoSemanticForSequenceClassification, add_lora
        >>> cfg = MonoSemanticConfig(backbone_config=BertConfig(vocab_size=100, hidden_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, intermediate_size=37), feature_dim=64, num_labels=2)
        >>> peft_model = add_lora(MonoSemanticForSequenceClassification(cfg), r=4, monolora="output")
        >>> with AdapterActivationMonitor(peft_model) as monitor:
        ...     _ = peft_model(input_ids=torch.randint(0, 100, (2, 7)))
        >>> 0.0 <= monitor.sparsity <= 1.0, sorted(monitor.per_layer())[:1]
        (True, ['base_model.model.monosemantic.backbone.encoder.layer.0.attention.self.query[default]'])
    """

    def __init__(self, model: nn.Module, adapter_name: str | None = None):
        self.model = model
        self.adapter_name = adapter_name
        self.zeros: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self._handles: list[Any] = []

    def _watch(self, name: str, module: nn.Module) -> None:
        def hook(_module, _inputs, output):
            self.zeros[name] = self.zeros.get(name, 0) + int((output == 0).sum())
            self.total[name] = self.total.get(name, 0) + output.numel()

        self._handles.append(module.register_forward_hook(hook))

    def __enter__(self) -> AdapterActivationMonitor:
        for name, layer in self.model.named_modules():
            if not isinstance(layer, LoraLayer):
                continue
            adapters = [self.adapter_name] if self.adapter_name else list(layer.lora_A.keys())
            for adapter in adapters:
                if adapter not in layer.lora_A:
                    continue
                relu = getattr(layer, "mono_relu", {})
                if adapter in relu:
                    self._watch(f"{name}[{adapter}]", relu[adapter])
                else:
                    self._watch(f"{name}[{adapter}]", layer.lora_B[adapter])
        if not self._handles:
            raise ValueError("the model has no LoRA layers to watch")
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def sparsity(self) -> float:
        """Fraction of exact zeros over every watched value seen so far (NaN before any forward)."""
        total = sum(self.total.values())
        return sum(self.zeros.values()) / total if total else float("nan")

    def per_layer(self) -> dict[str, float]:
        return {name: self.zeros[name] / self.total[name] for name in self.total if self.total[name]}


@torch.no_grad()
def adapter_sparsity(
    model: nn.Module,
    batches: Mapping[str, torch.Tensor] | Iterable[Mapping[str, torch.Tensor]],
    adapter_name: str | None = None,
) -> float:
    """Fraction of zeros in the adapters' intermediate over one batch (a dict) or several (an iterable).

    MonoLoRA: zeros of the ReLU'd intermediate; plain LoRA: zeros of ``B A x`` (see
    :class:`AdapterActivationMonitor`). Runs the model in eval mode and restores its mode.

    Example:
        >>> import torch
        >>> from transformers import BertConfig
        >>> from hf_monosem import MonoSemanticConfig, MonoSemanticForSequenceClassification, add_lora
        >>> cfg = MonoSemanticConfig(backbone_config=BertConfig(vocab_size=100, hidden_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, intermediate_size=37), feature_dim=64, num_labels=2)
        >>> batch = {"input_ids": torch.randint(0, 100, (2, 7))}
        >>> lora = add_lora(MonoSemanticForSequenceClassification(cfg), r=4)
        >>> adapter_sparsity(lora, batch)  # plain LoRA: B A x has no exact zeros (B starts at 0: all zero)
        1.0
    """
    if isinstance(batches, Mapping):
        batches = [batches]
    was_training = model.training
    model.eval()
    try:
        with AdapterActivationMonitor(model, adapter_name) as monitor:
            for batch in batches:
                model(**batch)
    finally:
        model.train(was_training)
    return monitor.sparsity
