"""The track builder: a backbone's features of a data set -> fitted representations -> a grid :class:`Track`.

A *track* is what the scenario grid (:func:`hf_monosem.scenarios.grid.probe_records`) runs on: every
representation's feature matrix for every split and input-noise cell, with the clean labels. This module
builds one from the vectors a frozen backbone gave (:func:`build_track`): the post-hoc TopK SAE sweep
(:func:`sae_sweep`, :func:`fit_saes`), the SimCLR / NCL projectors of a named NCL recipe and TopK SAEs
on the SimCLR output, all fitted on the *training* vectors only and cached on disk (a rerun loads them),
then the monosemanticity of each representation on the test split. The track holds only what the grid
reads; what the builder measured (fit reports, monosemanticity) comes back beside it, in a
:class:`TrackFits`.

``hf-monosem report`` and both tracks of ``examples/robustness_benchmark.py`` call it: the text track
and the command on a frozen encoder's pooled vectors, the vision track on the outputs of its own
contrastively pretrained ResNets.

Example:
    >>> import torch, tempfile
    >>> from datasets import ClassLabel
    >>> g = torch.Generator().manual_seed(0)
    >>> vectors = {"train": torch.randn(64, 8, generator=g), "test": torch.randn(32, 8, generator=g)}
    >>> labels = {"train": torch.arange(64) % 2, "test": torch.arange(32) % 2}
    >>> plan = RepresentationPlan(sae_topk=(2,), sae_overcomplete=0, epochs=1, projector_width=None)
    >>> with tempfile.TemporaryDirectory() as cache:
    ...     track, fits = build_track("toy", "toy vectors", vectors, labels, ClassLabel(num_classes=2), plan,
    ...                               cache, progress=False)
    >>> track.pairs, sorted(track.features), track.features["sae_k2"]["test"].shape
    ([('raw', 'sae_k2')], ['raw', 'sae_k2'], torch.Size([32, 8]))
    >>> sorted(fits.fit_reports), fits.monosemanticity["sae_k2"]["l0"] <= 2
    (['sae_k2'], True)
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments, default_data_collator, set_seed

from ..cached import (
    feature_stats,
    fit_contrastive_projector,
    load_feature_layers,
    ncl_recipe,
    save_feature_layers,
    tensors_sha256,
    train_sae_layer,
)
from ..cached.data_parallel import all_processes
from ..cached.distributed import process_world
from ..data.backbones import small_resnet_config
from ..evaluation.features import monosemanticity_report
from ..models.configuration import MonoSemanticConfig
from ..models.feature_layers import build_feature_layer
from ..models.modeling import MonoSemanticModel
from ..scenarios.grid import TEST, TRAIN, Track
from ..training import (
    ContrastiveTrainer,
    ImageViews,
    IntensityJitterViews,
    MonoSemanticTrainer,
    UnlabeledDataCollator,
)

__all__ = [
    "RepresentationPlan",
    "TrackFits",
    "build_track",
    "fit_representations",
    "fit_projector",
    "fit_saes",
    "pretrain_small_resnet",
    "sae_layer",
    "sae_pairs",
    "sae_sweep",
]

#: the contrastive pair, each a feature-layer kind: SimCLR's linear projector, NCL's non-negative one
CONTRASTIVE_KINDS = {"simclr": "linear", "ncl": "nonneg"}


@dataclass(frozen=True)
class RepresentationPlan:
    """What :func:`build_track` fits on the training vectors.

    ``sae_topk``: one TopK SAE per k at width = input width (the paper's sweep), plus one
    ``sae_overcomplete`` times wider with k = 32 (0: none); ``epochs`` of every fit; ``projector_width``:
    the SimCLR / NCL projectors' width (``None``: no projectors), trained with NCL recipe ``ncl_recipe``
    (:data:`hf_monosem.cached.NCL_RECIPES`; SimCLR shares its views and positives); ``sae_on_projector``:
    also TopK SAEs on the SimCLR output (SAE vs CL on the same vector, as the authors compare them);
    ``sae_lr``: Adam's learning rate of every SAE fit (``None``: :func:`~hf_monosem.cached.fit_sae`'s
    default, which scales with the SAE's width, :meth:`~hf_monosem.cached.SaeFitConfig.resolved_lr`).

    Example:
        >>> RepresentationPlan(sae_lr=1e-3).sae_lr
        0.001
        >>> RepresentationPlan(sae_lr=0)
        Traceback (most recent call last):
        ...
        ValueError: sae_lr=0 is not valid; allowed: None (fit_sae's width-scaled default) or a number > 0
    """

    sae_topk: tuple[int, ...] = (16, 32, 64, 128)
    sae_overcomplete: int = 4
    epochs: int = 20
    projector_width: int | None = 1536
    ncl_recipe: str = "authors-nn"
    sae_on_projector: bool = True
    sae_lr: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # anything else the fits depend on (cache key)

    def __post_init__(self) -> None:
        lr = self.sae_lr
        number = isinstance(lr, (int, float)) and not isinstance(lr, bool)
        if lr is not None and (not number or not 0 < lr < math.inf):
            raise ValueError(
                f"sae_lr={lr!r} is not valid; allowed: None (fit_sae's width-scaled default) or a number > 0"
            )


@dataclass
class TrackFits:
    """What :func:`build_track` measured while building a track, kept apart from the track (the grid's
    inputs): ``fit_reports[layer]``, the final metrics of each representation it fitted (the SAEs' and
    projectors' ``final_*`` losses, written as ``"representation_fits"`` in ``results.json``), and
    ``monosemanticity[representation]``, :func:`~hf_monosem.evaluation.monosemanticity_report` of every
    representation of the track on its test rows (the reports' monosemanticity table).

    Example:
        >>> fits = TrackFits(fit_reports={"sae_k2": {"final_loss": 0.1}}, monosemanticity={})
        >>> fits.fit_reports["sae_k2"]["final_loss"]
        0.1
    """

    fit_reports: dict[str, dict[str, Any]]
    monosemanticity: dict[str, dict[str, float]]


def pretrain_small_resnet(
    train: torch.utils.data.Dataset,
    run_dir: str | os.PathLike,
    *,
    kind: str,
    width: int,
    epochs: int,
    seed: int = 0,
    layer_settings: dict[str, Any] | None = None,
    online_label_loss: bool = False,
    num_labels: int | None = None,
) -> MonoSemanticModel:
    """The vision track's encoder: the small ResNet (:func:`~hf_monosem.data.small_resnet_config`) pretrained
    end to end on ``train``'s ``pixel_values`` with image crops as views (SimCLR for ``kind="linear"``, NCL
    for ``"nonneg"``; ``layer_settings`` are the NCL layer's order, activation and activation weight, which
    is 0 otherwise). AdamW 2e-3 cosine, batch 256, temperature 0.2, projector width and hidden width
    ``width``. Saved under ``run_dir/model`` and loaded from there next time; an interrupted run resumes
    from its last epoch checkpoint. ``online_label_loss``: the authors' label leak (a non-detached online
    classifier over ``num_labels`` classes). Used by the benchmark's vision track and by P3's stage A.
    """
    final = os.path.join(run_dir, "model")
    if os.path.isfile(os.path.join(final, "config.json")):
        return MonoSemanticModel.from_pretrained(final)
    set_seed(seed)  # SimCLR and NCL of one seed start from the same weights and see the same views
    model = MonoSemanticModel(
        MonoSemanticConfig(
            backbone_config=small_resnet_config(),
            feature_layer=kind,
            feature_dim=width,
            projector_hidden_dim=width,
            temperature=0.2,
            **{"activation_loss_weight": 0.0, **(layer_settings or {})},
        )
    )
    training_args = TrainingArguments(
        output_dir=str(run_dir), num_train_epochs=epochs, learning_rate=2e-3, lr_scheduler_type="cosine",
        warmup_steps=20, weight_decay=1e-4, per_device_train_batch_size=256, dataloader_drop_last=True,
        save_strategy="epoch", save_total_limit=1, logging_steps=10, report_to="none", seed=seed,
        disable_tqdm=False,
    )  # fmt: skip
    trainer = ContrastiveTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=UnlabeledDataCollator(default_data_collator),
        image_views=IntensityJitterViews(ImageViews(crop_scale=(0.2, 1.0), hflip_p=0.5), strength=0.4),
        online_label_loss=online_label_loss,
        num_labels=num_labels if online_label_loss else None,
    )
    trainer.train(resume_from_checkpoint=MonoSemanticTrainer.last_checkpoint(str(run_dir)))
    trainer.save_model(final)
    return trainer.accelerator.unwrap_model(trainer.model)


def sae_sweep(topk: Sequence[int], overcomplete: int, input_dim: int) -> list[tuple[str, int, int]]:
    """``(name, width, k)`` of the post-hoc SAEs: every k (up to the width) at width = input width, plus one
    ``overcomplete`` times wider with k = 32.

    Example:
        >>> sae_sweep([16, 64], 4, 32)
        [('sae_k16', 32, 16), ('sae_x4_k32', 128, 32)]
    """
    sweep = [(f"sae_k{int(k)}", input_dim, int(k)) for k in topk if int(k) <= input_dim]
    if overcomplete:
        sweep.append((f"sae_x{overcomplete}_k32", overcomplete * input_dim, 32))
    return sweep


def sae_pairs(reference: str, sweep: Sequence[tuple[str, int, int]]) -> list[tuple[str, str]]:
    """``(reference, sae)`` for every SAE of ``sweep``: the pairs the tables compare."""
    return [(reference, name) for name, _, _ in sweep]


def fit_saes(
    train: torch.Tensor,
    sweep: Sequence[tuple[str, int, int]],
    epochs: int,
    progress: bool = True,
    lr: float | None = None,
    split_processes: bool = False,
) -> dict[str, tuple[torch.nn.Module, dict]]:
    """The paper's post-hoc SAE: TopK fitted on the L2-normalised input, normalised MSE, no L1 (one per sweep
    entry); its codes encode the *un-normalised* vector (``sae_normalize_input="fit"``), as the authors'
    probe does, so they live on the scale of the vector they encode. ``lr``: Adam's learning rate
    (``None``: :func:`~hf_monosem.cached.fit_sae`'s width-scaled default); each fit report holds the
    ``lr`` it used and its ``final_*`` values."""
    fitted = {}
    for name, width, k in sweep:
        set_seed(0)  # every SAE starts from the same draw, whatever was fitted before it
        sae = sae_layer(train.shape[1], width, k)
        report = train_sae_layer(
            sae, train, epochs=epochs, lr=lr, seed=0, progress=progress, split_processes=split_processes
        )
        summary = {key: v for key, v in report.items() if key.startswith("final_") or key == "lr"}
        fitted[name] = (sae.eval(), summary)
    return fitted


def sae_layer(input_dim: int, width: int, k: int) -> torch.nn.Module:
    """The post-hoc TopK SAE of :func:`fit_saes` (``width`` latents, ``k`` active) on ``input_dim`` inputs,
    freshly drawn from torch's global generator.

    Example:
        >>> sae_layer(16, 32, 4).kind
        'topk'
    """
    return build_feature_layer(
        MonoSemanticConfig(
            backbone_config=small_resnet_config(),  # the layer reads only its own settings
            feature_layer="topk",
            feature_dim=width,
            topk=k,
            sae_normalize_input="fit",
        ),
        input_dim=input_dim,
    )


def fit_projector(
    train: torch.Tensor,
    plan: RepresentationPlan,
    kind: str,
    views: torch.Tensor | None,
    *,
    epochs: int | None = None,
    progress: bool = True,
    split_processes: bool = False,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The SimCLR (``kind="simclr"``) or NCL (``"ncl"``) projector of ``plan`` fitted on ``train`` with the
    plan's NCL recipe (``views``: its encoder-level views, ``None`` for a recipe without them), for
    ``epochs`` (default the plan's): :func:`~hf_monosem.cached.fit_contrastive_projector`'s report.

    Example:
        >>> plan = RepresentationPlan(projector_width=8, ncl_recipe="p2")
        >>> layer, report = fit_projector(torch.randn(32, 4), plan, "ncl", None, epochs=1, progress=False)
        >>> len(report["loss"])
        1
    """
    if kind not in CONTRASTIVE_KINDS:
        raise ValueError(f"kind={kind!r} is not valid; allowed: {', '.join(map(repr, CONTRASTIVE_KINDS))}")
    feature_layer = CONTRASTIVE_KINDS[kind]
    _, recipe = ncl_recipe(plan.ncl_recipe, feature_layer)
    return fit_contrastive_projector(
        train,
        feature_layer=feature_layer,
        feature_dim=plan.projector_width,
        projector_hidden_dim=plan.projector_width,
        epochs=plan.epochs if epochs is None else epochs,
        seed=0,
        views=views,
        progress=progress,
        split_processes=split_processes,
        **recipe,
    )


def _projector_sweep(plan: RepresentationPlan, input_dim: int) -> list[tuple[str, int, int]]:
    """The SAEs on the SimCLR output: every k at width = projector width (no over-complete one: a 4x wider
    representation is 4x the probe cost)."""
    if plan.projector_width is None or not plan.sae_on_projector:
        return []
    width = plan.projector_width
    return [(f"simclr_{name}", w, k) for name, w, k in sae_sweep(plan.sae_topk, 0, width)]


def fit_representations(
    train: torch.Tensor,
    plan: RepresentationPlan,
    cache_dir: str | os.PathLike | None,
    *,
    views: torch.Tensor | None = None,
    progress: bool = True,
    split_processes: bool = False,
) -> dict[str, tuple[torch.nn.Module, dict]]:
    """``{name: (fitted layer, fit report)}`` of ``plan`` on the ``[N, F]`` training vectors ``train``.

    ``split_processes``: under ``accelerate launch``, every fit is data-parallel across the processes
    (every process must call this with the same vectors), the cached file is read or not by all of them
    together and written by process 0.

    ``views`` (``[K, N, F]`` encoder-level views of the training rows) feed the projectors of a recipe with
    ``"dropout"`` views. The layers are saved under ``cache_dir`` as safetensors keyed by a hash of the
    training vectors, the views and the plan, and loaded from there next time (a damaged or stale file is
    named in a warning and refitted). Order: the SAEs, SimCLR, NCL, the SAEs on the SimCLR output.
    """
    view_kind = ncl_recipe(plan.ncl_recipe, "nonneg")[0]  # a clear error for an unknown recipe
    used_views = views if view_kind == "dropout" and plan.projector_width is not None else None
    sweep = sae_sweep(plan.sae_topk, plan.sae_overcomplete, train.shape[1])
    tensors = {"train": train} if used_views is None else {"train": train, "views": used_views}
    key = hashlib.sha256(
        f"{tensors_sha256(tensors)}|{sorted(asdict(plan).items())}|sae_normalize_input=fit".encode()
    ).hexdigest()[:16]
    path = None if cache_dir is None else os.path.join(cache_dir, f"representations-{key}.safetensors")
    saved = path is not None and os.path.exists(path)
    if split_processes:  # decided by all processes together: the fits are collectives
        saved = all_processes(saved)
    fitted = load_feature_layers(path, key) if saved else None
    if fitted is not None:
        return fitted
    fitted = fit_saes(train, sweep, plan.epochs, progress, plan.sae_lr, split_processes)
    if plan.projector_width is not None:
        for name in CONTRASTIVE_KINDS:  # SimCLR and NCL on the recipe's views
            layer, report = fit_projector(
                train, plan, name, used_views, progress=progress, split_processes=split_processes
            )
            summary = {"final_loss": report["loss"][-1]}
            summary.update({k: report[k] for k in ("zero_fraction", "positive_accuracy")})
            fitted[name] = (layer, summary)
        with torch.no_grad():
            simclr_train = fitted["simclr"][0].eval()(train)[0]
        fitted.update(
            fit_saes(
                simclr_train,
                _projector_sweep(plan, simclr_train.shape[1]),
                plan.epochs,
                progress,
                plan.sae_lr,
                split_processes,
            )  # fmt: skip
        )
    if path is not None and not (split_processes and process_world()[1]):  # the same layers: one writes
        os.makedirs(cache_dir, exist_ok=True)
        save_feature_layers(path, fitted, key)  # atomic: a killed run leaves the old file or none
    return fitted


def build_track(
    name: str,
    description: str,
    vectors: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    label_feature: Any,
    plan: RepresentationPlan,
    cache_dir: str | os.PathLike | None,
    *,
    noise_cells: Sequence[tuple[str, float, str]] = (),
    source_name: str = "raw",
    standardize: bool = True,
    encoded: dict[str, dict[str, torch.Tensor]] | None = None,
    views: torch.Tensor | None = None,
    probe_views: dict[str, torch.Tensor] | None = None,
    views_for_probes: bool = False,
    pairs: list[tuple[str, str]] | None = None,
    domain_num_labels: int | None = None,
    fitted: dict[str, tuple[torch.nn.Module, dict]] | None = None,
    progress: bool = True,
) -> tuple[Track, TrackFits]:
    """A :class:`~hf_monosem.scenarios.grid.Track` of the representations ``plan`` fits on ``vectors``, and
    the :class:`TrackFits` of them (fit reports, monosemanticity on the test rows).

    ``vectors[key]`` are a backbone's ``[N, F]`` vectors for every key of the track (``train``, ``test``,
    the domain splits, one per input-noise cell) and ``labels[key]`` their clean class ids. The fitted
    layers read ``vectors``; the representation ``source_name`` is ``vectors`` itself, standardised with
    the training statistics when ``standardize`` (the text encoder's ``raw``). ``encoded`` adds
    representations the caller computed (the vision track's pretrained projectors), placed first.
    ``views`` are ``[K, N_train, F]`` encoder-level views of the training rows for the projectors;
    ``probe_views[representation]`` ``[K, N_train, F]`` augmented views for the probe protocols that use
    them (the SAEs fitted on ``source_name`` encode its views too); ``views_for_probes``: ``views`` are
    such views too (augmented images), and every fitted representation gets its ``probe_views`` from
    them. ``pairs`` default: SimCLR -> NCL, ``source_name`` -> each SAE, SimCLR -> each SAE on its
    output. ``fitted``: the layers
    :func:`fit_representations` returned for these vectors (fitted here when ``None``).
    """
    if TRAIN not in vectors or TEST not in vectors:
        raise ValueError(
            f"vectors has keys {sorted(vectors)}; allowed: a dict with at least {TRAIN!r}, {TEST!r}"
        )
    if fitted is None:
        fitted = fit_representations(vectors[TRAIN], plan, cache_dir, views=views, progress=progress)
    mean, std = feature_stats(vectors[TRAIN])

    def source_of(x: torch.Tensor) -> torch.Tensor:
        return (x - mean) / std if standardize else x

    source = {key: source_of(x) for key, x in vectors.items()}
    features = (
        {**(encoded or {}), source_name: source}
        if source_name not in (encoded or {})
        else dict(encoded or {})
    )
    train_views = dict(probe_views or {})
    if views_for_probes and views is not None:  # the encoder-level views, as every representation sees them
        train_views[source_name] = torch.stack([source_of(v) for v in views])
    with torch.no_grad():  # the backbone's representations first, then the SAEs on the SimCLR output
        for layer_name, (layer, _) in sorted(fitted.items(), key=lambda item: item[0].startswith("simclr_")):
            layer.eval()
            on = "simclr" if layer_name.startswith("simclr_") else None
            inputs = features[on] if on else vectors
            features[layer_name] = {key: layer(x)[0] for key, x in inputs.items()}
            if on in train_views:
                train_views[layer_name] = torch.stack([layer(v)[0] for v in train_views[on]])
            elif on is None and views_for_probes and views is not None:
                train_views[layer_name] = torch.stack([layer(v)[0] for v in views])
            elif on is None and source_name in train_views and not standardize:
                train_views[layer_name] = torch.stack([layer(v)[0] for v in train_views[source_name]])
    if pairs is None:
        sweep = sae_sweep(plan.sae_topk, plan.sae_overcomplete, vectors[TRAIN].shape[1])
        pairs = [
            *([("simclr", "ncl")] if plan.projector_width is not None else []),
            *sae_pairs(source_name, sweep),
            *sae_pairs("simclr", _projector_sweep(plan, plan.projector_width or 0)),
        ]
    track = Track(
        name=name,
        description=description,
        num_labels=int(label_feature.num_classes),
        label_feature=label_feature,
        pairs=pairs,
        features=features,
        labels=labels,
        noise_cells=list(noise_cells),
        train_views=train_views,
        scale_reference=source_name,
        domain_num_labels=domain_num_labels,
    )
    fits = TrackFits(
        fit_reports={layer_name: report for layer_name, (_, report) in fitted.items()},
        monosemanticity={rep: monosemanticity_report(f[TEST], labels[TEST]) for rep, f in features.items()},
    )
    return track, fits
