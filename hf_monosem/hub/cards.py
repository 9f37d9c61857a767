"""Model cards for hf_monosem checkpoints.

:func:`make_model_card` builds a :class:`huggingface_hub.ModelCard` from a model (or its config):
YAML metadata (``library_name: hf_monosem``, tags, base model, datasets, licence and a
``model-index`` with this model's numbers), a usage snippet, the training recipe and a
poly-vs-mono table (:func:`results_table`). The Jinja template is :data:`MODEL_CARD_TEMPLATE`
(package data, ``hub/templates/model_card.md``; ``model_cards/TEMPLATE.md`` is generated from it).

Results follow the package's one schema (:mod:`hf_monosem.evaluation.results`): result records
(mean ± std over seeds) or run records (one per seed, summarised the same way as the robustness
tables do). The ``model-index`` holds the records whose ``method`` is the model's own feature layer:
one result per dataset, split and scenario/level (the dataset ``config`` is ``"<scenario>=<level>"``, so
huggingface_hub never merges two scenarios into one result), its metrics with std and seeds under
``args``; the Markdown table shows every method side by side. The card's ``pipeline_tag`` is the
transformers pipeline the model works with (``text-classification``, ``image-classification``, and
``feature-extraction`` / ``image-feature-extraction`` for the base model).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import PreTrainedConfig, PreTrainedModel

from ..evaluation.results import POLY_METHODS, is_finite_number, load_results, scenario_label
from ..models.configuration import MonoSemanticConfig

__all__ = ["MODEL_CARD_TEMPLATE", "make_model_card", "results_table"]

_FEATURE_LAYER_TEXT = {
    "linear": "`linear`: a plain linear projection, the polysemantic baseline (same width and head as the "
    "monosemantic kinds)",
    "nonneg": "`nonneg`: a projection followed by a non-negativity, as in non-negative contrastive learning "
    "(NCL); sparse, close to one class per dimension",
    "sae": "`sae`: a ReLU sparse autoencoder (L1 + reconstruction loss) whose non-negative codes are the "
    "features",
    "topk": "`topk`: a TopK sparse autoencoder (at most `topk` active codes per input: the top k "
    "pre-activations, then ReLU) whose codes are the features",
}


#: the transformers pipeline each class works with: the card's ``pipeline_tag``. The base model's
#: depends on its inputs (``feature-extraction`` for text, ``image-feature-extraction`` for images);
#: both pipelines read ``outputs[0]``, which is ``features``.
_PIPELINE_TAG = {
    "MonoSemanticForSequenceClassification": "text-classification",
    "MonoSemanticForImageClassification": "image-classification",
    "MonoSemanticModel": "feature-extraction",
}
_IMAGE_PIPELINE_TAG = {"MonoSemanticModel": "image-feature-extraction"}


def _is_image_backbone(config: MonoSemanticConfig) -> bool:
    backbone = config.backbone_config
    return hasattr(backbone, "num_channels") and not hasattr(backbone, "vocab_size")


def _pipeline_tag(arch: str, config: MonoSemanticConfig) -> str:
    if _is_image_backbone(config) and arch in _IMAGE_PIPELINE_TAG:
        return _IMAGE_PIPELINE_TAG[arch]
    return _PIPELINE_TAG.get(arch, "text-classification")


_CITATION = """@inproceedings{zhang2025beyond,
  title     = {Beyond Interpretability: The Gains of Feature Monosemanticity on Model Robustness},
  author    = {Zhang, Qi and Wang, Yifei and Cui, Jingyi and Pan, Xiang and Lei, Qi and Jegelka, Stefanie and Wang, Yisen},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025},
  url       = {https://arxiv.org/abs/2410.21331}
}"""  # noqa: E501

#: The Jinja template of every card, shipped as package data (``hub/templates/model_card.md``;
#: ``model_cards/generate_cards.py`` writes ``model_cards/TEMPLATE.md`` from it). Variables are filled by
#: :func:`make_model_card`; ``card_data`` is the YAML metadata.
MODEL_CARD_TEMPLATE = (resources.files(__package__) / "templates" / "model_card.md").read_text(
    encoding="utf-8"
)


# ------------------------------------------------------------------------------------------ results
def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"


def _level_key(level: Any) -> tuple:
    return (0, level) if is_finite_number(level) else (1, str(level))


def results_table(records: Sequence[Mapping], method: str | None = None) -> str:
    """A Markdown table, one row per (dataset, split, scenario, level, metric), one column per method.

    Cells are ``mean ± std (n seeds)``; polysemantic baselines (:data:`POLY_METHODS`) come first; the
    column of ``method`` is marked "this model" and, when a baseline is present, a last column gives
    ``method - baseline``. ``records`` are read by :func:`~hf_monosem.evaluation.results.load_results`.

    Example:
        >>> records = [{"dataset": "tweets", "scenario": "label_noise", "level": 0.4, "method": m,
        ...             "metric": "accuracy", "value": v, "std": 0.01, "seeds": 3}
        ...            for m, v in (("linear", 0.70), ("nonneg", 0.75))]
        >>> print(results_table(records, method="nonneg").splitlines()[2])
        | tweets (test) | label_noise=0.4 | accuracy | 0.700 ± 0.010 (3 seeds) | 0.750 ± 0.010 (3 seeds) | +0.050 |
    """  # noqa: E501
    records = load_results(list(records))
    if not records:
        return "No results."
    methods = sorted({r["method"] for r in records}, key=lambda m: (m not in POLY_METHODS, m != method, m))
    baseline = next((m for m in methods if m in POLY_METHODS), None)
    show_delta = method in methods and baseline is not None and method != baseline
    cells: dict[tuple, dict[str, Mapping]] = {}
    for r in records:
        key = (r["dataset"], r["split"], r["scenario"], r["level"], r["metric"])
        cells.setdefault(key, {})[r["method"]] = r

    def header(m: str) -> str:
        kind = "poly" if m in POLY_METHODS else "mono"
        return f"`{m}` ({kind}{', this model' if m == method else ''})"

    head = ["dataset", "scenario", "metric"] + [header(m) for m in methods]
    if show_delta:
        head.append(f"Δ `{method}` − `{baseline}`")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(cells, key=lambda k: (k[0], k[1], k[2] != "clean", k[2], _level_key(k[3]), k[4]))
    for key in order:
        dataset, split, scenario, level, metric = key
        row = [f"{dataset} ({split})", scenario_label(scenario, level), metric]
        for m in methods:
            r = cells[key].get(m)
            if r is None:
                row.append("")
                continue
            cell = _fmt(r["value"])
            if r["std"] is not None:
                cell += f" ± {_fmt(r['std'])}"
            if r["seeds"] is not None:
                cell += f" ({r['seeds']} seed{'s' if r['seeds'] != 1 else ''})"
            row.append(cell)
        if show_delta:
            a, b = cells[key].get(method), cells[key].get(baseline)
            row.append(f"{a['value'] - b['value']:+.3f}" if a and b else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _eval_results(records: Sequence[Mapping], method: str, default_task: str) -> list[EvalResult]:
    """This model's records as ``model-index`` entries, one result per (dataset, split, scenario, level).

    huggingface_hub files metrics under one result when they share (task, dataset type, dataset config,
    split, revision); the scenario label (``label_noise=0.4``) is the dataset config, so two scenarios
    of one dataset never merge, and the metrics of one scenario (accuracy, macro-F1) stay together.
    """
    out = []
    for r in records:
        if r["method"] != method:
            continue
        label = scenario_label(r["scenario"], r["level"])
        extra = f", ± {_fmt(r['std'])}" if r["std"] is not None else ""
        seeds = f", {r['seeds']} seed{'s' if r['seeds'] != 1 else ''}" if r["seeds"] is not None else ""
        out.append(
            EvalResult(
                task_type=r["task"] or default_task,
                dataset_type=r["dataset"],
                dataset_name=f"{r['dataset']} ({label})",
                dataset_config=label,
                dataset_split=r["split"],
                metric_type=r["metric"],
                metric_value=r["value"],
                metric_name=f"{r['metric']} ({label}{extra}{seeds})",
                metric_config=label,
                metric_args={
                    "scenario": r["scenario"],
                    "level": r["level"],
                    "std": r["std"],
                    "seeds": r["seeds"],
                },
            )
        )
    return out


# --------------------------------------------------------------------------------------------- card
def config_of(model: PreTrainedModel | PreTrainedConfig) -> MonoSemanticConfig:
    """The :class:`MonoSemanticConfig` of an hf_monosem model (or the config itself).

    Raises :class:`TypeError` for peft models (merge or publish the adapter instead) and for models of
    other libraries; shared by the card, publishing and remote-code helpers of this folder."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        raise TypeError(
            "got a peft model: merge LoRA adapters first (peft_model.merge_and_unload()) to publish a plain "
            "checkpoint, or publish the adapter folder with peft_model.push_to_hub(...); MonoLoRA adapters "
            "cannot be merged (see hf_monosem.adapters.lora)"
        )
    config = model if isinstance(model, PreTrainedConfig) else getattr(model, "config", None)
    if getattr(config, "model_type", None) != MonoSemanticConfig.model_type:
        raise TypeError(f"expected an hf_monosem model or MonoSemanticConfig, got {type(model).__name__}")
    return config


def _architecture(model: PreTrainedModel | PreTrainedConfig) -> str:
    if isinstance(model, PreTrainedModel):
        return type(model).__name__
    archs = getattr(model, "architectures", None) or []
    if archs:
        return archs[0]
    return (
        "MonoSemanticForImageClassification"
        if _is_image_backbone(model)
        else "MonoSemanticForSequenceClassification"
    )


def looks_like_hub_id(name: str | None) -> bool:
    """Whether ``name`` reads as a Hub repo id (``namespace/name``) and is not a local path."""
    return bool(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not os.path.exists(name)


def _backbone_summary(config: MonoSemanticConfig) -> str:
    bc = config.backbone_config
    parts = [f"`{bc.model_type}`"]
    for name in ("num_hidden_layers", "hidden_size"):
        if isinstance(getattr(bc, name, None), int):
            parts.append(f"{name.replace('num_hidden_', '').replace('_', ' ')} {getattr(bc, name)}")
    if getattr(bc, "hidden_sizes", None):
        parts.append(f"stages {list(bc.hidden_sizes)}, depths {list(getattr(bc, 'depths', []))}")
    if isinstance(getattr(bc, "image_size", None), int):
        parts.append(f"{bc.image_size}px input")
    return ", ".join(parts)


def _usage_code(
    repo_id: str,
    arch: str,
    config: MonoSemanticConfig,
    has_preprocessor: bool,
    base_model: str | None,
    trust_remote_code: bool = False,
    image_size: int | None = None,
) -> str:
    auto_cls = {
        "text-classification": "AutoModelForSequenceClassification",
        "image-classification": "AutoModelForImageClassification",
    }.get(_PIPELINE_TAG.get(arch, ""), "AutoModel")
    remote = ", trust_remote_code=True" if trust_remote_code else ""
    is_text = hasattr(config.backbone_config, "vocab_size")
    head = (
        []
        if trust_remote_code
        else [
            'import hf_monosem  # noqa: F401  (registers the "monosemantic" model type with the Auto classes)'
        ]
    )
    head.append("import torch")
    body = [f'model = {auto_cls}.from_pretrained("{repo_id}"{remote}).eval()']
    if is_text:
        head.append(f"from transformers import AutoTokenizer, {auto_cls}")
        tok_source = repo_id if has_preprocessor else (base_model or "<the backbone's tokenizer>")
        body += [
            f'tokenizer = AutoTokenizer.from_pretrained("{tok_source}")',
            'inputs = tokenizer(["What a lovely flight!"], return_tensors="pt", padding=True)',
        ]
    else:
        bc = config.backbone_config
        size = image_size or getattr(bc, "image_size", None) or 32
        if has_preprocessor:
            head[-1:-1] = ["from PIL import Image"]
            head.append(f"from transformers import AutoImageProcessor, {auto_cls}")
            body += [
                f'processor = AutoImageProcessor.from_pretrained("{repo_id}")',
                f'image = Image.new("RGB", ({size}, {size}))  # your image here',
                'inputs = processor(images=[image], return_tensors="pt")',
            ]
        else:
            head.append(f"from transformers import {auto_cls}")
            channels = getattr(bc, "num_channels", 3)
            body.append(
                f'inputs = {{"pixel_values": torch.randn(1, {channels}, {size}, {size})}}  # your normalised '
                f"images"
            )
    body += ["with torch.no_grad():", "    out = model(**inputs)"]
    if auto_cls != "AutoModel":
        body.append("print(model.config.id2label[int(out.logits.argmax(-1)[0])])")
    body.append('print(f"{int((out.features[0] != 0).sum())} of {out.features.shape[-1]} features active")')
    return "\n".join(head + [""] + body)


def _default_recipe(config: MonoSemanticConfig) -> str:
    lines = [
        "Not recorded for this card (pass `recipe=` to `make_model_card`). From the configuration:",
        "",
        f"- feature layer: {_FEATURE_LAYER_TEXT.get(config.feature_layer, config.feature_layer)}",
        f"- backbone {'frozen (linear probing)' if config.freeze_backbone else 'fine-tuned with the head'}",
    ]
    if getattr(config, "freeze_feature_layer", False):
        lines.append(
            "- feature layer frozen: the backbone was trained through it (the paper's NCE fine-tuning)"
        )
    scale = getattr(config, "classifier_input_scale", 1.0)
    if scale != 1.0:
        lines.append(
            f"- the head reads the features multiplied by a fixed {scale:.4g} (`classifier_input_scale`)"
        )
    if config.feature_layer in ("sae", "topk"):
        lines.append(
            f"- reconstruction weight {config.reconstruction_weight}"
            + (
                f", L1 weight {config.sparsity_weight}"
                if config.feature_layer == "sae"
                else f", k = {config.topk}"
            )
        )
    return "\n".join(lines)


def _recipe_markdown(recipe: str | Mapping | None, config: MonoSemanticConfig) -> str:
    if recipe is None:
        return _default_recipe(config)
    if isinstance(recipe, Mapping):
        return "\n".join(f"- **{key}**: {value}" for key, value in recipe.items())
    return str(recipe).strip()


def make_model_card(
    model: PreTrainedModel | PreTrainedConfig,
    results: str | os.PathLike | Sequence[Mapping] | Mapping | None = None,
    *,
    base_model: str | None = None,
    datasets: str | Sequence[str] | None = None,
    license: str = "apache-2.0",
    recipe: str | Mapping | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    method: str | None = None,
    summary: str | None = None,
    planned_command: str | None = None,
    has_preprocessor: bool = False,
    remote_code: bool = False,
    language: str | Sequence[str] | None = None,
    tags: Sequence[str] = (),
    image_size: int | None = None,
    template: str | None = None,
) -> ModelCard:
    """Model card for an hf_monosem checkpoint.

    Args:
        model: the model, or its :class:`MonoSemanticConfig` (for cards of checkpoints not yet trained).
        results: benchmark results (path, list or ``{"results": [...]}``; see :func:`load_results`).
        base_model: Hub id of the backbone (default: ``config.backbone`` when it is a Hub id).
        datasets: Hub ids of the training datasets.
        license: the card's licence identifier.
        recipe: how the model was trained, as Markdown text or a dict rendered as a bullet list.
        repo_id: the repository the card is for (used by the usage snippet).
        model_name: name in the ``model-index`` (default: the last part of ``repo_id``).
        method: the results' method that is this model (default: ``config.feature_layer``).
        summary: a first paragraph (default: generated from the configuration).
        planned_command: marks the card as *planned*: says plainly that the checkpoint is not
            trained/published yet and which command will produce its numbers.
        has_preprocessor: the repository holds the tokenizer / image processor.
        remote_code: the repository holds its modeling code (see :func:`save_for_hub`).
        language, tags: extra metadata.
        image_size: side of the example image in the usage snippet (default: the backbone's
            ``image_size``, else 32).
        template: a Jinja template string (default :data:`MODEL_CARD_TEMPLATE`).

    Raises:
        ValueError: results are given but none is for ``method`` (the ``model-index`` would be empty).

    Example (``model.config`` gives the same card, for a checkpoint not trained yet):
        >>> from hf_monosem.data import backbone_source, build_classifier
        >>> model = build_classifier("nonneg", ["cat", "dog"], "image", backbone_source(None, "image"),
        ...                          feature_dim=32)
        >>> card = make_model_card(model, [{"dataset": "digits", "scenario": "clean", "method": "nonneg",
        ...                                 "metric": "accuracy", "value": 0.82}], repo_id="me/tiny-nonneg")
        >>> card.data.library_name, card.data.model_name, [e.metric_value for e in card.data.eval_results]
        ('hf_monosem', 'tiny-nonneg', [0.82])
    """
    config = config_of(model)
    arch = _architecture(model)
    pipeline_tag = _pipeline_tag(arch, config)
    method = method or config.feature_layer
    if base_model is None and looks_like_hub_id(config.backbone):
        base_model = config.backbone
    repo_id = repo_id or "<namespace>/<model-name>"
    model_name = model_name or repo_id.split("/")[-1]

    records = load_results(results) if results is not None else []
    eval_results = _eval_results(records, method, pipeline_tag) if records else None
    if records and not eval_results:
        raise ValueError(
            f"no result has method={method!r} (methods present: {sorted({r['method'] for r in records})}); "
            "pass method= to name this model's results"
        )
    metrics = sorted({r["metric"] for r in records if r["method"] == method}) or None
    kind = config.feature_layer
    card_tags = [
        "hf_monosem",
        "monosemantic",
        "polysemantic-baseline" if kind == "linear" else "monosemanticity",
        f"feature-layer-{kind}",
        config.backbone_config.model_type,
        *tags,
    ]
    card_data = ModelCardData(
        library_name="hf_monosem",
        license=license,
        base_model=base_model,
        datasets=[datasets] if isinstance(datasets, str) else (list(datasets) if datasets else None),
        language=language,
        metrics=metrics,
        pipeline_tag=pipeline_tag,
        tags=list(dict.fromkeys(card_tags)),
        model_name=model_name if eval_results else None,  # the model-index's name
        eval_results=eval_results,
    )

    labels = getattr(config, "id2label", None) or {}
    named = [f"{i}: {name}" for i, name in sorted(labels.items(), key=lambda kv: int(kv[0]))]
    label_text = ", ".join(named) if len(named) <= 12 else f"{len(named)} classes ({', '.join(named[:5])}, …)"
    architecture = [
        ("architecture", f"`{arch}`"),
        (
            "backbone",
            (f"[`{base_model}`](https://huggingface.co/{base_model}) – " if base_model else "")
            + _backbone_summary(config),
        ),
        ("pooling", f"`{config.pooling}`"),
        ("feature layer", _FEATURE_LAYER_TEXT.get(kind, f"`{kind}`")),
        (
            "feature width",
            str(config.feature_dim)
            + (
                f" (projector hidden width {config.projector_hidden_dim})"
                if config.projector_hidden_dim
                else ""
            ),
        ),
    ]
    if kind == "topk":
        architecture.append(("active features (k)", str(config.topk)))
    if arch != "MonoSemanticModel":
        architecture.append(("labels", label_text or str(config.num_labels)))
    if summary is None:
        summary = (
            f"A `{config.backbone_config.model_type}` backbone with "
            f"a{'' if kind == 'linear' else ' monosemantic'} `{kind}` feature layer ({config.feature_dim} "
            f"features) and a linear classifier, built with hf_monosem "
            "after *Beyond Interpretability: The Gains of Feature Monosemanticity on Model Robustness* "
            "(Zhang et al., ICLR 2025)."
        )
    status = ""
    if planned_command:
        status = (
            "**Not trained, not published yet.** This card describes a planned checkpoint: no weights exist "
            "and no number on this card has been measured. Its numbers will be produced by:\n\n"
            + "\n".join(f"    {line}" for line in planned_command.strip().splitlines())
        )
    if records:
        results_text = (
            "Means over seeds ± standard deviation; poly = the `linear` feature layer (same width and head). "
            "The `model-index` metadata holds this model's rows.\n\n" + results_table(records, method)
        )
    elif planned_command:
        results_text = (
            "None yet: this checkpoint has not been trained or evaluated (see the note at the top)."
        )
    else:
        results_text = "No evaluation results were supplied with this card."
    remote_snippet = (
        _usage_code(
            repo_id, arch, config, has_preprocessor, base_model, trust_remote_code=True, image_size=image_size
        )
        if remote_code
        else ""
    )
    return ModelCard.from_template(
        card_data,
        template_str=template or MODEL_CARD_TEMPLATE,
        title=model_name,
        summary=summary,
        status=status,
        architecture=architecture,
        usage_code=_usage_code(repo_id, arch, config, has_preprocessor, base_model, image_size=image_size),
        remote_code_snippet=remote_snippet,
        recipe=_recipe_markdown(recipe, config),
        results_text=results_text,
        citation=_CITATION,
    )
