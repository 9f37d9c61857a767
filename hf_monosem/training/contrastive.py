"""Contrastive pretraining of a :class:`~hf_monosem.MonoSemanticModel`: SimCLR vs NCL.

The model's feature layer *is* the projector: ``feature_layer="linear"`` gives SimCLR,
``feature_layer="nonneg"`` gives NCL (non-negative contrastive learning), and
``projector_hidden_dim`` turns either into the paper's two-layer MLP projector. Both are trained
with the same InfoNCE loss (:func:`~hf_monosem.training.losses.info_nce_loss`, temperature
``config.temperature``) on L2-normalised projector outputs, so SimCLR and NCL differ in one value.

Views are made on the batch, on the model's device, inside ``compute_loss``:

* images: :class:`ImageViews`, batched ``kornia.augmentation`` (random resized crop, horizontal
  flip, colour jitter and random grayscale for 3-channel inputs), each image getting its own random
  parameters; no per-sample Python loop;
* text: :class:`TextViews`, SimCSE-style, the same sentences twice through the model with dropout
  active, plus optional random token masking.

Both views go through the model as one concatenated batch (one forward pass; dropout masks are
independent per row). Random views are drawn from a ``torch.Generator`` seeded with
``args.seed + process_index``, so a run is reproducible and processes see different views.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .losses import info_nce_loss
from .trainer import MonoSemanticTrainer
from .views import LABEL_KEYS, ImageViews, TextViews, UnlabeledDataCollator

__all__ = [
    "CONTRASTIVE_METHODS",
    "LABEL_KEYS",
    "ContrastiveTrainer",
    "ImageViews",
    "TextViews",
    "UnlabeledDataCollator",
]

#: per-process file in a checkpoint folder holding the training view generator's state.
VIEW_GENERATOR_FILE = "view_generator_state_{process}.pt"
#: file in a checkpoint folder holding the online classifier of ``online_label_loss`` (not part of the model)
ONLINE_CLASSIFIER_FILE = "online_classifier.pt"

#: pretraining method -> the feature layer that makes it (the projector): SimCLR vs NCL differ in one value.
CONTRASTIVE_METHODS = {"simclr": "linear", "ncl": "nonneg"}


class ContrastiveTrainer(MonoSemanticTrainer):
    """InfoNCE pretraining of a ``MonoSemanticModel``: SimCLR (``linear`` projector) or NCL (``nonneg``).

    The loss is ``info_nce_loss(z1, z2, temperature)`` over the two views' features (L2-normalised
    after the possibly non-negative projector; ``2N - 2`` negatives per anchor, gathered with gradients
    across processes under ``accelerate launch``/``torchrun``), plus the feature layer's weighted
    auxiliary terms if it has any. Logged: ``loss``, ``contrastive_loss``, ``contrastive_accuracy``
    (positive ranked first), ``active_fraction``, ``dead_fraction`` and any auxiliary term.

    Training is label-free: label keys are dropped from batches (:class:`UnlabeledDataCollator` is the
    default collator), ``label_names`` is empty, and evaluation returns only the contrastive loss
    (there are no predictions). Keep ``remove_unused_columns=True`` (the default) to drop raw columns
    (text, PIL images) the model cannot take. Under several processes set ``dataloader_drop_last=True``
    so every process gathers equally many negatives.

    **The label leak, as a named variant** (``online_label_loss=True``, off by default): the
    Beyond-Interpretability authors' solo-learn base trains an online linear classifier on the backbone's
    pooled vector during pretraining *without detaching it*, and adds its cross-entropy (averaged over
    the views) to the contrastive loss (``solo/methods/base.py`` training step, ``simclr.py``:
    ``nce_loss + class_loss``), so labels reach the backbone during "self-supervised" pretraining (the
    NCL paper's own ``PKU-ML/non_neg`` detaches it). With the flag this trainer does the same: a
    ``Linear(hidden, num_labels)`` on ``outputs.pooled`` of both views, trained by the same optimiser
    (its own parameter group, no weight decay, as solo-learn's classifier group), its loss added with
    weight 1 and logged as ``online_class_loss`` / ``online_class_accuracy``. Batches must then carry
    labels (an :class:`UnlabeledDataCollator` is unwrapped for that); the classifier is saved with each
    checkpoint (``online_classifier.pt``) and is not part of the saved model.

    Args:
        temperature: InfoNCE temperature; default ``model.config.temperature`` (0.2).
        image_views: an :class:`ImageViews`; by default built from ``processing_class``'s
            ``image_mean``/``image_std`` when it is an image processor.
        mask_rate, mask_token_id, special_token_ids: token masking for text views; the token ids
            default to ``processing_class``'s when it is a tokenizer.
        online_label_loss: add the authors' non-detached online classifier's cross-entropy (see above).
        num_labels: classes of that classifier (required with ``online_label_loss``).
        **kwargs: everything :class:`MonoSemanticTrainer` / ``transformers.Trainer`` takes.

    Example (NCL on a tiny ResNet; ``feature_layer="linear"`` would be SimCLR):
        >>> import contextlib, io, tempfile, torch
        >>> from datasets import Dataset
        >>> from transformers import ResNetConfig, TrainingArguments
        >>> from hf_monosem import MonoSemanticConfig, MonoSemanticModel
        >>> model = MonoSemanticModel(MonoSemanticConfig(backbone_config=ResNetConfig(num_channels=1,
        ...     embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]), feature_layer="nonneg", feature_dim=32))
        >>> images = Dataset.from_dict({"pixel_values": torch.rand(8, 1, 16, 16).tolist()}).with_format("torch")
        >>> args = TrainingArguments(tempfile.mkdtemp(), max_steps=2, logging_steps=1, per_device_train_batch_size=4,
        ...                          report_to=[], use_cpu=True, save_strategy="no")
        >>> trainer = ContrastiveTrainer(model=model, args=args, train_dataset=images,
        ...                              image_views=ImageViews(size=(16, 16)))
        >>> with contextlib.redirect_stdout(io.StringIO()):
        ...     _ = trainer.train()
        >>> sorted(k for k in trainer.state.log_history[0] if k.startswith("contrastive"))
        ['contrastive_accuracy', 'contrastive_loss']
    """

    def __init__(
        self,
        *args,
        temperature: float | None = None,
        image_views: ImageViews | None = None,
        mask_rate: float = 0.0,
        mask_token_id: int | None = None,
        special_token_ids: Iterable[int] | None = None,
        online_label_loss: bool = False,
        num_labels: int | None = None,
        **kwargs,
    ):
        if online_label_loss and (
            not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 2
        ):
            raise ValueError(
                f"num_labels={num_labels!r} is not valid with online_label_loss=True; allowed: an integer >= 2 "
                "(the classes of the online classifier)"
            )
        if kwargs.get("loss_type", "ce") != "ce":
            raise ValueError(
                "ContrastiveTrainer trains with InfoNCE; loss_type applies to MonoSemanticTrainer only"
            )
        user_collator = kwargs.get("data_collator")
        kwargs.setdefault("validate_datasets", False)  # label-free: no class ids to check
        super().__init__(*args, **kwargs)
        self.label_names = []  # label-free: evaluation must not look for labels
        self.online_classifier: nn.Linear | None = None
        if online_label_loss:  # the label leak: batches keep their labels
            if isinstance(self.data_collator, UnlabeledDataCollator):
                self.data_collator = self.data_collator.collator
            layer = getattr(self.accelerator.unwrap_model(self.model), "feature_layer", None)
            hidden = getattr(layer, "input_dim", None)
            if hidden is None:
                raise ValueError(
                    "online_label_loss=True needs a MonoSemanticModel (its pooled vector's width)"
                )
            self.online_classifier = nn.Linear(hidden, num_labels).to(self.args.device)
        elif user_collator is None:
            self.data_collator = UnlabeledDataCollator(self.data_collator)

        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        self.temperature = float(
            temperature if temperature is not None else getattr(config, "temperature", 0.2)
        )
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature!r} is not valid; allowed: a number > 0")

        processor = self.processing_class
        if image_views is None:
            mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
            normalizes = getattr(processor, "do_normalize", True) and mean is not None and std is not None
            image_views = ImageViews(mean=mean, std=std) if normalizes else ImageViews()
        self.image_views = image_views
        if mask_token_id is None:
            mask_token_id = getattr(processor, "mask_token_id", None)
        if special_token_ids is None:
            special_token_ids = getattr(processor, "all_special_ids", None) or ()
        self.text_views = TextViews(
            mask_token_id=mask_token_id, mask_rate=mask_rate, special_token_ids=special_token_ids
        )

        if self.args.world_size > 1 and not self.args.dataloader_drop_last:
            warnings.warn(
                "ContrastiveTrainer gathers negatives from every process, which needs equal batch sizes: "
                "set dataloader_drop_last=True, or a smaller last batch will fail to gather",
                stacklevel=2,
            )
        seed = self.args.seed + 1_000_003 * self.args.process_index
        self._view_generator = torch.Generator().manual_seed(seed)
        self._eval_view_seed = seed + 7919
        self._eval_view_generator = torch.Generator().manual_seed(self._eval_view_seed)

    def make_views(self, inputs: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """Both views of the batch, concatenated along the batch dimension (view 1 first)."""
        if inputs.get("pixel_values") is not None:
            pixels = inputs["pixel_values"]
            views = torch.cat([self.image_views(pixels, generator), self.image_views(pixels, generator)])
            batch = _repeat_batch(inputs, pixels.shape[0])
            batch["pixel_values"] = views
            return batch
        if inputs.get("input_ids") is not None:
            ids, mask = inputs["input_ids"], inputs.get("attention_mask")
            batch = _repeat_batch(inputs, ids.shape[0])
            batch["input_ids"] = torch.cat(
                [self.text_views(ids, mask, generator), self.text_views(ids, mask, generator)]
            )
            return batch
        raise ValueError(
            f"ContrastiveTrainer needs pixel_values or input_ids in the batch, got {sorted(inputs)}"
        )

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.online_classifier is not None and not any(
            p is q for group in optimizer.param_groups for p in group["params"]
            for q in self.online_classifier.parameters()
        ):  # fmt: skip
            optimizer.add_param_group(
                {"params": list(self.online_classifier.parameters()), "weight_decay": 0.0}
            )
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = next((inputs[k] for k in LABEL_KEYS if inputs.get(k) is not None), None)
        inputs = {k: v for k, v in inputs.items() if k not in LABEL_KEYS}
        generator = self._view_generator if model.training else self._eval_view_generator
        # the feature layer's terms belong to the loss at evaluation too (models return them only when training)
        outputs = model(**self.make_views(inputs, generator), output_aux_losses=True)
        features = outputs["features"] if isinstance(outputs, dict) else outputs.features
        z1, z2 = features.chunk(2, dim=0)
        contrastive, accuracy = info_nce_loss(z1, z2, self.temperature, return_accuracy=True)
        aux_losses = outputs.get("aux_losses") or {}
        weighted_aux = self.weighted_aux_loss(model, aux_losses)
        loss = contrastive if weighted_aux is None else contrastive + weighted_aux
        terms = {"contrastive_loss": contrastive, "contrastive_accuracy": accuracy, **aux_losses}
        if self.online_classifier is not None:
            if labels is None:
                raise ValueError(
                    "online_label_loss=True needs labels in every batch (a 'label' or 'labels' column); "
                    f"this batch has {sorted(inputs)}"
                )
            # not detached: the labels' gradient reaches the backbone (the authors' leak)
            logits = self.online_classifier(outputs["pooled"].float())
            targets = labels.to(logits.device).repeat(2)  # both views, averaged as solo-learn's crops
            class_loss = F.cross_entropy(logits, targets)
            loss = loss + class_loss
            terms["online_class_loss"] = class_loss
            terms["online_class_accuracy"] = (logits.argmax(-1) == targets).float().mean()
        self.check_finite_loss(model, loss, terms, inputs)
        self.record_terms(model, terms, features=features)
        return (loss, outputs) if return_outputs else loss

    # ---- resume: the view generator is part of the run's random state ---------------------------
    def _view_state_file(self, folder: str) -> str:
        return os.path.join(folder, VIEW_GENERATOR_FILE.format(process=self.args.process_index))

    def _save_rng_state(self, output_dir: str) -> None:
        # The Trainer saves python/numpy/torch RNGs per process; the views come from our own generator,
        # so without this a resumed run would redraw the views of the first steps again.
        super()._save_rng_state(output_dir)
        torch.save(self._view_generator.get_state(), self._view_state_file(output_dir))
        if self.online_classifier is not None and self.args.should_save:
            torch.save(self.online_classifier.state_dict(), os.path.join(output_dir, ONLINE_CLASSIFIER_FILE))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        classifier = os.path.join(checkpoint, ONLINE_CLASSIFIER_FILE)
        if self.online_classifier is not None and os.path.isfile(classifier):
            self.online_classifier.load_state_dict(torch.load(classifier, weights_only=True))
        path = self._view_state_file(checkpoint)
        if not os.path.isfile(path):
            warnings.warn(
                f"{checkpoint} has no {os.path.basename(path)} (saved before hf_monosem kept the view generator): "
                "the resumed run draws its views from the start of the sequence, so it will not match an "
                "uninterrupted run",
                stacklevel=2,
            )
            return
        self._view_generator.set_state(torch.load(path, weights_only=True))

    def evaluation_loop(self, *args, **kwargs):
        # the same views at every evaluation, independent of how far training has gone
        self._eval_view_generator.manual_seed(self._eval_view_seed)
        return super().evaluation_loop(*args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The contrastive loss only: there are no labels and no predictions to gather."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def _repeat_batch(inputs: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """Every per-example tensor twice along dim 0; everything else as it is."""
    return {
        k: torch.cat([v, v])
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch_size
        else v
        for k, v in inputs.items()
    }
