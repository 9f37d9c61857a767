"""Linear probing on cached features, trained by the same Trainer as the full model.

Design: a frozen-backbone classifier (``freeze_backbone=True``) computes
``classifier(dropout(feature_layer(pool(backbone(x)))))`` where only the last three parts learn.
With the backbone frozen (eval mode, no grad), ``pool(backbone(x))`` is a constant per example, so
training the model is *the same optimisation* as training :class:`FeatureProbe` — the trainable tail
``classifier(dropout(feature_layer(v)))`` — on the cached vectors ``v`` (:class:`CachedFeatureDataset`).
Both routes use :class:`~hf_monosem.MonoSemanticTrainer`: the same seeded sampler gives the same batch
order, the same trainable parameters get the same AdamW / schedule / clipping, and the loss is the
same (cross-entropy + the feature layer's weighted auxiliary terms), so the classifier weights agree
to float tolerance while the cached route skips every backbone forward pass. A sweep over label-noise
rates extracts features once (:func:`~hf_monosem.cached.feature_cache.extract_pooled_features`) and calls
:func:`probe_on_features` per rate.

Two ways to probe:

* features are the final features (e.g. a pretrained NCL projector's output, extracted with
  ``output="features"``): probe with a linear classifier only;
* features are pooled backbone vectors: pass the ``feature_layer`` (e.g. ``model.feature_layer``) to
  train it together with the classifier, exactly as the frozen-backbone model would.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers import PrinterCallback, TrainingArguments

from ..models.feature_layers import FeatureLayer
from ..models.modeling import MonoSemanticClassifierOutput, MonoSemanticPreTrainedModel
from ..training.trainer import MonoSemanticTrainer

__all__ = ["CachedFeatureDataset", "FeatureProbe", "probe_on_features"]


class CachedFeatureDataset(Dataset):
    """Rows ``{"features": features[i], "labels": labels[i]}`` of an in-memory feature matrix.

    A map-style torch dataset of tensors (``default_data_collator`` stacks rows without conversion),
    usable as ``train_dataset``/``eval_dataset`` of any Trainer.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor | Any):
        if not isinstance(labels, torch.Tensor):  # lists, numpy arrays, datasets columns
            labels = torch.as_tensor(labels if hasattr(labels, "__array__") else list(labels))
        if features.dim() != 2:
            raise ValueError(f"features must be a [N, width] matrix, got shape {tuple(features.shape)}")
        if labels.shape[0] != features.shape[0]:
            raise ValueError(f"{features.shape[0]} feature rows but {labels.shape[0]} labels")
        self.features = features.float()
        self.labels = labels.long() if not labels.dtype.is_floating_point else labels

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[index], "labels": self.labels[index]}


class FeatureProbe(nn.Module):
    """The trainable tail of a frozen-backbone classifier: ``[feature_layer ->] dropout -> classifier``.

    ``forward(features, labels)`` returns a :class:`~hf_monosem.MonoSemanticClassifierOutput` with the
    same loss as the full model (cross-entropy + the feature layer's weighted auxiliary terms), so
    :class:`~hf_monosem.MonoSemanticTrainer` trains and logs it like the full model.

    Example:
        >>> probe = FeatureProbe(nn.Linear(8, 3))
        >>> out = probe(torch.randn(4, 8), labels=torch.tensor([0, 1, 2, 0]))
        >>> out.logits.shape, out.loss.ndim
        (torch.Size([4, 3]), 0)
    """

    #: the loss is a mean inside forward: the Trainer must not rescale it for gradient accumulation
    accepts_loss_kwargs = False
    main_input_name = "features"

    def __init__(
        self, classifier: nn.Linear, feature_layer: FeatureLayer | None = None, dropout: float = 0.0
    ):
        super().__init__()
        self.feature_layer = feature_layer
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier

    @classmethod
    def from_model(cls, model: MonoSemanticPreTrainedModel, with_feature_layer: bool = True) -> FeatureProbe:
        """Copies of a classification model's feature layer (optional), dropout and classifier.

        Train it on ``extract_pooled_features(model, ...)`` (or, with ``with_feature_layer=False``, on
        ``extract_pooled_features(model, ..., output="features")``) to get what training the model with
        ``freeze_backbone=True`` gives.
        """
        if not hasattr(model, "classifier"):
            raise ValueError(
                f"{type(model).__name__} has no classifier; use a MonoSemanticFor*Classification model"
            )
        layer = copy.deepcopy(model.feature_layer) if with_feature_layer else None
        return cls(copy.deepcopy(model.classifier), layer, dropout=model.dropout.p)

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor | None = None
    ) -> MonoSemanticClassifierOutput:
        pooled = features
        aux_losses: dict[str, torch.Tensor] = {}
        if self.feature_layer is not None:
            features, aux_losses = self.feature_layer(features)
        logits = self.classifier(self.dropout(features).to(self.classifier.weight.dtype))
        loss = None
        if labels is not None:
            num_labels = logits.shape[-1]
            loss = F.cross_entropy(logits.float().view(-1, num_labels), labels.view(-1))
            if self.feature_layer is not None:
                weighted = self.feature_layer.weighted_aux_loss(aux_losses)
                if weighted is not None:
                    loss = loss + weighted
        return MonoSemanticClassifierOutput(
            loss=loss, logits=logits, features=features, pooled=pooled, aux_losses=aux_losses
        )


@torch.no_grad()
def _evaluate(
    probe: FeatureProbe, features: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> dict[str, float]:
    probe.eval()
    device = probe.classifier.weight.device
    loss_sum, correct, active = 0.0, 0, 0.0
    for x, y in zip(features.split(batch_size), labels.split(batch_size)):
        x, y = x.to(device), y.to(device)
        out = probe(x)
        loss_sum += float(F.cross_entropy(out.logits.float(), y, reduction="sum"))
        correct += int((out.logits.argmax(-1) == y).sum())
        active += float((out.features != 0).float().mean(-1).sum())
    n = max(labels.shape[0], 1)
    return {"loss": loss_sum / n, "accuracy": correct / n, "active_fraction": active / n}


def probe_on_features(
    features: torch.Tensor,
    labels: torch.Tensor | Any,
    num_labels: int | None = None,
    *,
    epochs: float = 50,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    eval_features: torch.Tensor | None = None,
    eval_labels: torch.Tensor | Any = None,
    feature_layer: FeatureLayer | None = None,
    classifier: nn.Linear | None = None,
    dropout: float = 0.0,
    loss_type: str = "ce",
    output_dir: str | None = None,
    initializer_range: float = 0.02,
    **training_kwargs,
) -> tuple[nn.Linear, dict[str, float]]:
    """Train a linear classifier (optionally with a feature layer) on cached features.

    Args:
        features, labels: ``[N, width]`` cached features and ``N`` class ids.
        num_labels: number of classes (default ``max(labels) + 1``; ignored with ``classifier``).
        epochs, lr, weight_decay, batch_size, seed: the Trainer's ``num_train_epochs``,
            ``learning_rate``, ``weight_decay``, ``per_device_train_batch_size``, ``seed``.
        eval_features, eval_labels: an optional held-out set for the returned metrics.
        feature_layer: train this layer too (the features are then pooled backbone vectors). It is
            trained *in place*: pass ``copy.deepcopy(layer)`` to keep the original.
        classifier: start from this ``nn.Linear`` (trained in place), e.g. a model's ``classifier``
            to reproduce its frozen-backbone training; default a new one, initialised like the models'
            (normal(0, ``initializer_range``), zero bias) from ``seed``.
        dropout: dropout on the classifier input (the model's ``classifier_dropout``).
        loss_type: ``"ce"``, ``"gce"`` or ``"sce"`` (see :class:`~hf_monosem.MonoSemanticTrainer`).
        output_dir: the Trainer's folder (default a temporary one; nothing is saved).
        **training_kwargs: any other ``TrainingArguments`` field (``lr_scheduler_type``, ``optim``,
            ``use_cpu``, ...). Defaults here: ``report_to=[]``, ``save_strategy="no"``,
            ``disable_tqdm=True`` (and no printed logs), ``logging_strategy="epoch"``.

    Returns:
        ``(classifier, metrics)``: the trained ``nn.Linear`` and ``train_loss`` (the Trainer's mean
        training loss), ``train_accuracy``, ``train_active_fraction`` and, with an eval set,
        ``eval_loss``, ``eval_accuracy``, ``eval_active_fraction`` (measured after training, no
        dropout).

    Example:
        >>> x = torch.randn(64, 8); y = (x[:, 0] > 0).long()
        >>> clf, metrics = probe_on_features(x, y, epochs=20, lr=0.05, batch_size=16, use_cpu=True)
        >>> clf.weight.shape, metrics["train_accuracy"] > 0.9
        (torch.Size([2, 8]), True)
    """
    dataset = CachedFeatureDataset(features, labels)
    if classifier is None:
        in_dim = feature_layer.feature_dim if feature_layer is not None else dataset.features.shape[1]
        num_labels = num_labels or int(dataset.labels.max()) + 1
        generator = torch.Generator().manual_seed(seed)
        classifier = nn.Linear(in_dim, num_labels)
        with torch.no_grad():
            classifier.weight.copy_(
                torch.randn(classifier.weight.shape, generator=generator) * initializer_range
            )
            classifier.bias.zero_()
    probe = FeatureProbe(classifier, feature_layer, dropout=dropout)

    defaults = {"report_to": [], "save_strategy": "no", "disable_tqdm": True, "logging_strategy": "epoch"}
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        args = TrainingArguments(
            output_dir=output_dir or tmp,
            num_train_epochs=epochs,
            learning_rate=lr,
            weight_decay=weight_decay,
            per_device_train_batch_size=batch_size,
            seed=seed,
            **{**defaults, **training_kwargs},
        )
        trainer = MonoSemanticTrainer(model=probe, args=args, train_dataset=dataset, loss_type=loss_type)
        if args.disable_tqdm:  # quiet: a sweep runs many probes, and the metrics are returned anyway
            trainer.remove_callback(PrinterCallback)
        result = trainer.train()

    metrics: dict[str, float] = {"train_loss": float(result.training_loss)}
    eval_batch = max(batch_size, 1024)
    metrics.update(
        {
            f"train_{k}": v
            for k, v in _evaluate(probe, dataset.features, dataset.labels, eval_batch).items()
            if k != "loss"
        }
    )
    if eval_features is not None:
        held_out = CachedFeatureDataset(eval_features, eval_labels)
        metrics.update(
            {
                f"eval_{k}": v
                for k, v in _evaluate(probe, held_out.features, held_out.labels, eval_batch).items()
            }
        )
    return probe.classifier, metrics
