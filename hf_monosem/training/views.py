"""Views for contrastive pretraining, made on the batch (batched, no per-sample Python loop).

* :class:`ImageViews`: batched ``kornia.augmentation`` (random resized crop, flip, colour jitter and
  random grayscale for 3-channel inputs), each image with its own random parameters;
* :class:`IntensityJitterViews`: :class:`ImageViews` plus a contrast / brightness jitter for
  1-channel images (where colour jitter does nothing);
* :class:`TextViews`: SimCSE-style, the same sentences twice through the model with dropout
  active, plus optional random token masking;
* :class:`UnlabeledDataCollator`: drops label keys (pretraining is label-free).

Every random draw comes from the ``torch.Generator`` passed in, never from the global RNG.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import default_data_collator

from ..data.validation import LABEL_KEYS  # the keys contrastive training drops

__all__ = ["LABEL_KEYS", "ImageViews", "IntensityJitterViews", "TextViews", "UnlabeledDataCollator"]


_SEED_HIGH = 2**62


def spawn_seed(generator: torch.Generator) -> int:
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
                    "ImageViews got pixel values outside [0, 1] and no mean/std: colour jitter clamps to [0, "
                    "1]. "
                    "Pass the image processor's image_mean/image_std.",
                    stacklevel=2,
                )
        pipeline = self._pipeline(channels, x.shape[2], x.shape[3], device)
        seed = spawn_seed(generator)
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


class IntensityJitterViews:
    """:class:`ImageViews`, then (1-channel images only) a random contrast / brightness jitter.

    Works on normalised tensors, per view: ``(x - mean(x)) * c + mean(x) + b`` with
    ``c ~ U[1 - s, 1 + s]`` and ``b ~ U[-s, s]`` (data-std units) for a fraction ``p`` of the views,
    drawn from the trainer's view generator (reproducible, independent of the global RNG).

    Example:
        >>> views = IntensityJitterViews(ImageViews(mean=[0.5], std=[0.5], size=(8, 8)), strength=0.4)
        >>> views(torch.randn(4, 1, 8, 8), torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1, 8, 8])
    """

    def __init__(self, views: ImageViews, strength: float, p: float = 0.8):
        self.views, self.strength, self.p = views, float(strength), float(p)

    def __call__(self, pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.views(pixel_values, generator)
        if self.strength == 0 or x.shape[1] != 1:
            return x
        u = torch.rand(x.shape[0], 3, generator=generator).to(x.device)
        on = u[:, 0] < self.p
        contrast = torch.where(on, 1 + self.strength * (2 * u[:, 1] - 1), torch.ones_like(u[:, 1]))
        shift = torch.where(on, self.strength * (2 * u[:, 2] - 1), torch.zeros_like(u[:, 2]))
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * contrast.view(-1, 1, 1, 1) + mean + shift.view(-1, 1, 1, 1)).to(x.dtype)
