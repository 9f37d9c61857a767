"""Loss functions: InfoNCE (SimCLR / NCL), robust classification losses, sparsity terms.

Pure functions of tensors; nothing here knows about models or trainers.

* :func:`info_nce_loss` — NT-Xent over two views, ``2N - 2`` negatives per anchor (gathered from every
  process, with gradients, when ``torch.distributed`` is initialised).
* :func:`generalized_cross_entropy`, :func:`symmetric_cross_entropy` — classification losses that
  resist label noise; :func:`robust_classification_loss` picks one by name (:data:`LOSS_TYPES`).
* :func:`l1_sparsity_loss`, :func:`nonnegativity_loss` — optional extra regularisers on features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "LOSS_TYPES",
    "gather_with_grad",
    "generalized_cross_entropy",
    "info_nce_loss",
    "l1_sparsity_loss",
    "nonnegativity_loss",
    "robust_classification_loss",
    "symmetric_cross_entropy",
]

#: task losses :class:`~hf_monosem.MonoSemanticTrainer` accepts as ``loss_type``.
LOSS_TYPES = ("ce", "gce", "sce")

_IGNORE_INDEX = -100


def _distributed_world() -> tuple[int, int]:
    """(world size, rank); (1, 0) when ``torch.distributed`` is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, keeping the autograd graph.

    Uses torch's functional collectives with autograd (``all_gather_single_autograd``), whose backward
    reduce-scatters the gradients: every process gets the sum, over processes, of the gradient computed for
    its own shard. With DDP's gradient averaging this gives exactly the gradient of the mean loss over all
    processes (the plain ``torch.distributed.all_gather`` would cut the graph: negatives from other
    processes would get no gradient). The functional form also traces under ``torch.compile`` (the
    deprecated ``torch.distributed.nn.functional.all_gather`` did not). Every process must pass the same
    shape (use ``dataloader_drop_last=True``). Without an initialised process group this returns ``tensor``
    unchanged.
    """
    world, _ = _distributed_world()
    if world == 1:
        return tensor
    from torch.distributed import _functional_collectives as collectives

    # torch 2.13 renamed all_gather_tensor_autograd (now deprecated) to all_gather_single_autograd
    gather = (
        getattr(collectives, "all_gather_single_autograd", None) or collectives.all_gather_tensor_autograd
    )
    return gather(tensor.contiguous(), gather_dim=0, group=torch.distributed.group.WORLD)


def info_nce_loss(
    features_a: torch.Tensor,
    features_b: torch.Tensor,
    temperature: float = 0.2,
    *,
    normalize: bool = True,
    gather: bool = True,
    return_accuracy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""NT-Xent (SimCLR's InfoNCE) between two views; NCL is the same loss on non-negative features.

    Row ``i`` of ``features_a`` and row ``i`` of ``features_b`` are two views of one example. Each of the
    ``2N`` embeddings is an anchor whose positive is its other view and whose negatives are the other
    ``2N - 2`` embeddings (``2NW - 2`` with ``W`` processes: negatives are gathered from every process).
    Embeddings are L2-normalised first (as in the authors' solo-learn code, after the non-negative
    projector for NCL) and the similarity is divided by ``temperature``. The loss is averaged over the
    local anchors; computed in float32, with autocast disabled (bf16 / fp16 mixed precision included).

    Args:
        features_a, features_b: ``[N, D]`` projector outputs of the two views.
        temperature: softmax temperature (0.2 in the paper).
        normalize: L2-normalise the embeddings (cosine similarity).
        gather: use negatives from all processes when ``torch.distributed`` is initialised.
        return_accuracy: also return the fraction of anchors whose most similar embedding is the positive.

    Example:
        >>> z = torch.randn(8, 16)
        >>> bool(info_nce_loss(z, z + 0.01 * torch.randn(8, 16)) < info_nce_loss(z, torch.randn(8, 16)))
        True
    """
    if features_a.shape != features_b.shape or features_a.dim() != 2:
        raise ValueError(
            f"info_nce_loss needs two [N, D] tensors of one shape, got {tuple(features_a.shape)} and "
            f"{tuple(features_b.shape)}"
        )
    # float32 even under autocast: bf16 similarities over thousands of negatives lose the positive's margin
    with torch.autocast(device_type=features_a.device.type, enabled=False):
        return _info_nce_fp32(features_a, features_b, temperature, normalize, gather, return_accuracy)


def _info_nce_fp32(features_a, features_b, temperature, normalize, gather, return_accuracy):
    n = features_a.shape[0]
    z = torch.cat([features_a, features_b], dim=0).float()
    if normalize:
        z = F.normalize(z, dim=-1)
    world, rank = _distributed_world() if gather else (1, 0)
    z_all = gather_with_grad(z) if world > 1 else z
    offset = rank * 2 * n  # where this process's rows sit in the gathered matrix

    logits = z @ z_all.t() / temperature  # [2N, 2NW]
    rows = torch.arange(2 * n, device=z.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, rows + offset] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = offset + (rows + n) % (2 * n)
    loss = F.cross_entropy(logits, positives)
    if not return_accuracy:
        return loss
    accuracy = (logits.argmax(dim=-1) == positives).float().mean()
    return loss, accuracy.detach()


def _valid_rows(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape [batch, num_classes], got {tuple(logits.shape)}")
    labels = labels.reshape(-1)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"robust losses need integer class ids as labels, got dtype {labels.dtype}")
    keep = labels != _IGNORE_INDEX
    labels, logits = labels[keep], logits[keep]
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[-1]):
        raise ValueError(
            f"labels must be class ids in [0, {logits.shape[-1] - 1}] (or -100 to ignore); "
            f"got min {int(labels.min())}, max {int(labels.max())}"
        )
    return logits.float(), labels


def generalized_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    r"""Generalized cross-entropy (Zhang & Sabuncu, 2018): mean of :math:`(1 - p_y^q) / q`.

    Interpolates between cross-entropy (``q -> 0``) and the noise-robust MAE (``q = 1``); ``q = 0.7``
    is the paper's default. Labels ``-100`` are ignored.

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
        >>> bool(generalized_cross_entropy(logits, torch.tensor([0, 1])) < 0.05)
        True
    """
    if not 0 < q <= 1:
        raise ValueError(f"q={q!r} must be in (0, 1]")
    logits, labels = _valid_rows(logits, labels)
    if labels.numel() == 0:
        return logits.sum() * 0.0
    log_p = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    return ((1.0 - torch.exp(q * log_p)) / q).mean()


def symmetric_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.1, beta: float = 1.0, log_clip: float = 1e-4
) -> torch.Tensor:
    r"""Symmetric cross-entropy (Wang et al., 2019): ``alpha * CE + beta * RCE``.

    The reverse cross-entropy swaps prediction and label, with ``log 0`` clipped to ``log(log_clip)``:
    :math:`RCE = -\log(\text{log\_clip}) \cdot (1 - p_y)`. ``alpha=0.1, beta=1.0`` are the paper's
    CIFAR-10 values (CIFAR-100: ``alpha=6.0, beta=0.1``). Labels ``-100`` are ignored.

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
        >>> bool(symmetric_cross_entropy(logits, torch.tensor([0, 1])) < symmetric_cross_entropy(logits, torch.tensor([1, 0])))
        True
    """
    logits, labels = _valid_rows(logits, labels)
    if labels.numel() == 0:
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits, labels)
    p_y = F.softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    rce = (-torch.log(torch.tensor(log_clip)) * (1.0 - p_y)).mean()
    return alpha * ce + beta * rce


def robust_classification_loss(
    loss_type: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    gce_q: float = 0.7,
    sce_alpha: float = 0.1,
    sce_beta: float = 1.0,
) -> torch.Tensor:
    """The task loss named by ``loss_type`` (one of :data:`LOSS_TYPES`) on class-id labels."""
    if loss_type == "ce":
        logits, labels = _valid_rows(logits, labels)
        return F.cross_entropy(logits, labels) if labels.numel() else logits.sum() * 0.0
    if loss_type == "gce":
        return generalized_cross_entropy(logits, labels, q=gce_q)
    if loss_type == "sce":
        return symmetric_cross_entropy(logits, labels, alpha=sce_alpha, beta=sce_beta)
    raise ValueError(
        f"loss_type={loss_type!r} is not valid; allowed: {', '.join(repr(t) for t in LOSS_TYPES)}"
    )


def l1_sparsity_loss(features: torch.Tensor) -> torch.Tensor:
    """Mean over examples of the L1 norm of the features (an extra sparsity pressure)."""
    return features.float().abs().sum(-1).mean()


def nonnegativity_loss(features: torch.Tensor) -> torch.Tensor:
    """Mean over examples of the summed negative parts: zero iff every feature is non-negative."""
    return F.relu(-features.float()).sum(-1).mean()
