"""Contrastive pretraining of a :class:`~hf_monosem.MonoSemanticModel`: SimCLR vs NCL.

The model's feature layer *is* the projector: ``feature_layer="linear"`` gives SimCLR,
``feature_layer="nonneg"`` gives NCL (non-negative contrastive learning), and
``projector_hidden_dim`` turns either into the paper's two-layer MLP projector. Both are trained
with the same InfoNCE loss (:func:`~hf_monosem.losses.info_nce_loss`, temperature
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

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import default_data_collator

from .losses import info_nce_loss
from .trainer import MonoSemanticTrainer

__all__ = ["LABEL_KEYS", "ContrastiveTrainer", "ImageViews", "TextViews", "UnlabeledDataCollator"]

#: batch keys that carry labels; contrastive training drops them.
LABEL_KEYS = ("labels", "label", "label_ids")

_SEED_HIGH = 2**62


def _spawn_seed(generator: torch.Generator) -> int:
    return int(torch.randint(_SEED_HIGH, (1,), generator=generator).item())


class UnlabeledDataCollator:
    """Wrap a collator (default: ``default_data_collator``) and drop label keys from its batches.

    Contrastive pretraining needs no labels; datasets often still carry a ``label`` column (which the
    Trainer keeps, since ``label`` is always a "signature column"), so the collator removes it.
    """

    def __init__(self, collator: Callable | None = None, drop_keys: Iterable[str] = LABEL_KEYS):
        self.collator = collator or default_data_collator
        self.drop_keys = tuple(drop_keys)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        features = [{k: v for k, v in f.items() if k not in self.drop_keys} for f in features]
        batch = self.collator(features)
        return {k: v for k, v in batch.items() if k not in self.drop_keys}


class ImageViews:
    """SimCLR image views of a whole batch with ``kornia.augmentation``.

    Args:
        size: output ``(height, width)``; default: the input size.
        crop_scale: area range of ``RandomResizedCrop`` ((0.08, 1.0) as in SimCLR; use e.g. (0.2, 1.0)
            for tiny images).
        hflip_p: probability of a horizontal flip.
        color_jitter: brightness, contrast, saturation, hue strengths (3-channel inputs only).
        color_jitter_p: probability of colour jitter.
        grayscale_p: probability of grayscale (3-channel inputs only).
        mean, std: per-channel normalisation of the incoming ``pixel_values``. Colour jitter works on
            ``[0, 1]`` images, so normalised inputs are un-normalised, augmented and re-normalised.
            Without them the inputs are taken to be in ``[0, 1]`` (a warning is given once if not).

    Kornia samples parameters from torch's global generators, so :meth:`__call__` runs it under
    ``torch.random.fork_rng`` seeded from the given ``generator``: the global random state is left
    untouched and the views depend only on ``generator``.
    """

    def __init__(
        self,
        size: tuple[int, int] | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        hflip_p: float = 0.5,
        color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
        color_jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (the inputs' normalisation) or neither")
        self.size = tuple(size) if size is not None else None
        self.crop_scale = tuple(crop_scale)
        self.hflip_p = float(hflip_p)
        self.color_jitter = tuple(color_jitter)
        self.color_jitter_p = float(color_jitter_p)
        self.grayscale_p = float(grayscale_p)
        self.mean = None if mean is None else torch.tensor(list(mean), dtype=torch.float32)
        self.std = None if std is None else torch.tensor(list(std), dtype=torch.float32)
        self._pipelines: dict[tuple, nn.Module] = {}
        self._range_checked = False

    def _pipeline(self, channels: int, height: int, width: int, device: torch.device) -> nn.Module:
        key = (channels, height, width, str(device))
        if key not in self._pipelines:
            import kornia.augmentation as K

            size = self.size or (height, width)
            ops: list[nn.Module] = [
                K.RandomResizedCrop(size, scale=self.crop_scale),
                K.RandomHorizontalFlip(p=self.hflip_p),
            ]
            if channels == 3:
                ops.append(K.ColorJitter(*self.color_jitter, p=self.color_jitter_p))
                ops.append(K.RandomGrayscale(p=self.grayscale_p))
            self._pipelines[key] = nn.Sequential(*ops).to(device)
        return self._pipelines[key]

    def __call__(self, pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if pixel_values.dim() != 4:
            raise ValueError(
                f"ImageViews needs a [batch, channels, height, width] tensor, got {tuple(pixel_values.shape)}"
            )
        dtype, device = pixel_values.dtype, pixel_values.device
        x = pixel_values.float()
        channels = x.shape[1]
        if self.mean is not None:
            mean = self.mean.to(device).view(1, -1, 1, 1)
            std = self.std.to(device).view(1, -1, 1, 1)
            x = x * std + mean
        elif not self._range_checked and channels == 3:
            self._range_checked = True
            if bool((x.min() < -1e-3) | (x.max() > 1 + 1e-3)):
                warnings.warn(
                    "ImageViews got pixel values outside [0, 1] and no mean/std: colour jitter clamps to [0, 1]. "
                    "Pass the image processor's image_mean/image_std.",
                    stacklevel=2,
                )
        pipeline = self._pipeline(channels, x.shape[2], x.shape[3], device)
        seed = _spawn_seed(generator)
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda, device_type="cuda"):
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
            x = pipeline(x)
        if self.mean is not None:
            x = (x - mean) / std
        return x.to(dtype)


class TextViews:
    """SimCSE-style text views: the token ids, optionally with random tokens replaced by a mask token.

    The two views of a sentence differ by the model's dropout (the forward pass is in training mode)
    and, if ``mask_rate > 0``, by independently masked tokens. Padding (``attention_mask == 0``) and
    ``special_token_ids`` are never masked.
    """

    def __init__(
        self, mask_token_id: int | None = None, mask_rate: float = 0.0, special_token_ids: Iterable[int] = ()
    ):
        if not 0 <= mask_rate < 1:
            raise ValueError(f"mask_rate={mask_rate!r} is not valid; allowed: a number in [0, 1)")
        if mask_rate > 0 and mask_token_id is None:
            raise ValueError("mask_rate > 0 needs mask_token_id (e.g. tokenizer.mask_token_id)")
        self.mask_token_id = mask_token_id
        self.mask_rate = float(mask_rate)
        self.special_token_ids = torch.tensor(sorted({int(t) for t in special_token_ids}), dtype=torch.long)

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, generator: torch.Generator
    ) -> torch.Tensor:
        if self.mask_rate == 0:
            return input_ids
        draw = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
        maskable = draw < self.mask_rate
        if attention_mask is not None:
            maskable &= attention_mask.bool()
        if self.special_token_ids.numel():
            maskable &= ~torch.isin(input_ids, self.special_token_ids.to(input_ids.device))
        return input_ids.masked_fill(maskable, self.mask_token_id)


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

    Args:
        temperature: InfoNCE temperature; default ``model.config.temperature`` (0.2).
        image_views: an :class:`ImageViews`; by default built from ``processing_class``'s
            ``image_mean``/``image_std`` when it is an image processor.
        mask_rate, mask_token_id, special_token_ids: token masking for text views; the token ids
            default to ``processing_class``'s when it is a tokenizer.
        **kwargs: everything :class:`MonoSemanticTrainer` / ``transformers.Trainer`` takes.
    """

    def __init__(
        self,
        *args,
        temperature: float | None = None,
        image_views: ImageViews | None = None,
        mask_rate: float = 0.0,
        mask_token_id: int | None = None,
        special_token_ids: Iterable[int] | None = None,
        **kwargs,
    ):
        if kwargs.get("loss_type", "ce") != "ce":
            raise ValueError(
                "ContrastiveTrainer trains with InfoNCE; loss_type applies to MonoSemanticTrainer only"
            )
        user_collator = kwargs.get("data_collator")
        kwargs.setdefault("validate_datasets", False)  # label-free: no class ids to check
        super().__init__(*args, **kwargs)
        self.label_names = []  # label-free: evaluation must not look for labels
        if user_collator is None:
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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {k: v for k, v in inputs.items() if k not in LABEL_KEYS}
        generator = self._view_generator if model.training else self._eval_view_generator
        outputs = model(**self.make_views(inputs, generator))
        features = outputs["features"] if isinstance(outputs, dict) else outputs.features
        z1, z2 = features.chunk(2, dim=0)
        contrastive, accuracy = info_nce_loss(z1, z2, self.temperature, return_accuracy=True)
        aux_losses = outputs.get("aux_losses") or {}
        weighted_aux = self.weighted_aux_loss(model, aux_losses)
        loss = contrastive if weighted_aux is None else contrastive + weighted_aux
        self.check_finite_loss(model, loss, {"contrastive_loss": contrastive, **aux_losses}, inputs)
        self.record_terms(
            model,
            {"contrastive_loss": contrastive, "contrastive_accuracy": accuracy, **aux_losses},
            features=features,
        )
        return (loss, outputs) if return_outputs else loss

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
