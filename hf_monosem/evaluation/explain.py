"""Look at what a feature means: its top-activating examples as an image grid or text snippets.

Example:
    >>> import torch
    >>> feats = torch.tensor([[0.0, 1.0], [3.0, 0.0], [2.0, 0.5]])
    >>> top_activating_examples(feats, 0, 2).indices.tolist()
    [1, 2]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .features import as_feature_matrix  # the same [N, F] input check as the feature metrics

__all__ = ["TopExamples", "image_grid_for_feature", "text_snippets_for_feature", "top_activating_examples"]


class TopExamples(NamedTuple):
    """Row indices of the top-activating examples of one feature and their activations (descending).

    Example:
        >>> TopExamples(indices=[3, 1], values=[0.9, 0.4]).indices
        [3, 1]
    """

    indices: torch.Tensor
    values: torch.Tensor


def top_activating_examples(features: Any, feature_index: int, k: int = 10) -> TopExamples:
    """The ``k`` examples (rows) where feature ``feature_index`` is largest (``k`` capped at N).

    Example:
        >>> top_activating_examples([[0.1], [0.7], [0.3]], 0, 2)
        TopExamples(indices=tensor([1, 2]), values=tensor([0.7000, 0.3000]))
    """
    x = as_feature_matrix(features)
    if (
        isinstance(feature_index, bool)
        or not isinstance(feature_index, (int, np.integer))
        or not 0 <= feature_index < x.shape[1]
    ):
        raise ValueError(
            f"feature_index={feature_index!r} is out of range; allowed: an integer in [0, {x.shape[1]})"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r} is not allowed; allowed: an integer >= 1")
    values, indices = torch.topk(x[:, int(feature_index)], min(int(k), x.shape[0]))
    return TopExamples(indices=indices, values=values)


def _image_array(image: Any, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """One image as an [H, W] or [H, W, 3] array in [0, 1] for display."""
    a = (
        image.detach().cpu().float().numpy()
        if isinstance(image, torch.Tensor)
        else np.asarray(image, dtype=np.float32)
    )
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)  # CHW -> HWC
    if a.ndim not in (2, 3):
        raise ValueError(
            f"image with shape {a.shape} is not supported; allowed: [C, H, W], [H, W, C] or [H, W]"
        )
    if mean is not None and std is not None:  # undo the normalisation
        a = a * np.asarray(std, dtype=np.float32) + np.asarray(mean, dtype=np.float32)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    low, high = float(a.min()), float(a.max())
    return (a - low) / (high - low) if high > low else np.zeros_like(a)


def image_grid_for_feature(
    features: Any,
    images: Any,
    feature_index: int,
    k: int = 16,
    path: str | Path = "feature_grid.png",
    *,
    labels: Sequence[Any] | None = None,
    ncols: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Path:
    """Write a PNG grid of the ``k`` images that activate feature ``feature_index`` most.

    ``images`` is a tensor/array ``[N, C, H, W]`` (or ``[N, H, W]``) or any indexable of images
    (e.g. a dataset column of arrays or PIL images); only the top-k are read. Each image is
    un-normalised with ``mean``/``std`` when given, then min-max scaled for display. Titles show
    the row index, the activation and the label when ``labels`` is given. Returns the path.

    Example:
        >>> import tempfile, torch
        >>> path = image_grid_for_feature(torch.rand(8, 2), torch.rand(8, 3, 8, 8), 0, k=4,
        ...                               path=tempfile.mkdtemp() + "/grid.png")
        >>> path.stat().st_size > 0
        True
    """
    from matplotlib.figure import Figure

    x = as_feature_matrix(features)
    if len(images) != x.shape[0]:
        raise ValueError(
            f"images has {len(images)} items but features has {x.shape[0]} rows; allowed: one image per row"
        )
    top = top_activating_examples(x, feature_index, k)
    count = top.indices.numel()
    cols = ncols or min(count, max(1, math.ceil(math.sqrt(count))))
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(1.8 * cols, 2.0 * rows), dpi=100)
    for slot, (row, value) in enumerate(zip(top.indices.tolist(), top.values.tolist())):
        ax = fig.add_subplot(rows, cols, slot + 1)
        picture = _image_array(images[row], mean, std)
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0.0, vmax=1.0)
        title = f"#{row} {value:.2f}" + (f"\n{labels[row]}" if labels is not None else "")
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.suptitle(f"feature {feature_index}: top {count}", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def _detokenize(tokens: Sequence[str]) -> str:
    """Join tokens, undoing WordPiece (``##``), GPT-2 (``Ġ``) and SentencePiece (``▁``) markers.

    With word-start markers (``Ġ``/``▁``) in the sequence, unmarked tokens continue the previous
    word; otherwise tokens are words separated by spaces, except WordPiece ``##`` continuations.
    """
    cores = [t.removeprefix("«").removesuffix("»") for t in tokens]
    start_markers = any(c[:1] in ("Ġ", "▁") for c in cores)
    text = ""
    for token, core in zip(tokens, cores):
        marked = core != token
        if core.startswith("##"):
            piece, space = core[2:], False
        elif core[:1] in ("Ġ", "▁"):
            piece, space = core[1:], True
        else:
            piece, space = core, not start_markers
        piece = f"«{piece}»" if marked else piece
        text += (" " if space and text else "") + piece
    return text


def text_snippets_for_feature(
    features: Any,
    texts: Sequence[str],
    feature_index: int,
    k: int = 5,
    *,
    token_activations: Any = None,
    tokens: Sequence[Sequence[str]] | None = None,
    threshold: float = 0.0,
    window: int = 12,
    max_chars: int = 200,
) -> list[dict[str, Any]]:
    """Snippets of the ``k`` texts that activate feature ``feature_index`` most.

    Returns one dict per example: ``index``, ``activation`` and ``snippet``. Without token-level
    activations the snippet is the text cut at ``max_chars``. With ``token_activations`` (``[N, T]``
    for this feature or ``[N, T, F]``) and the matching ``tokens`` (lists of token strings), the
    snippet is the ``window`` tokens either side of the strongest token, and every token with
    activation ``> threshold`` is marked ``«like this»``.

    Example:
        >>> import torch
        >>> out = text_snippets_for_feature(torch.tensor([[0.2], [0.9]]), ["a cat", "a dog"], 0, k=1,
        ...                                 token_activations=torch.tensor([[0.0, 0.2], [0.0, 0.9]]),
        ...                                 tokens=[["a", "cat"], ["a", "dog"]])
        >>> out[0]["snippet"]
        'a «dog»'
    """
    x = as_feature_matrix(features)
    if len(texts) != x.shape[0]:
        raise ValueError(
            f"texts has {len(texts)} items but features has {x.shape[0]} rows; allowed: one text per row"
        )
    if (token_activations is None) != (tokens is None):
        raise ValueError("token_activations and tokens go together; allowed: both or neither")
    acts = None
    if token_activations is not None:
        acts = (
            token_activations
            if isinstance(token_activations, torch.Tensor)
            else torch.as_tensor(np.asarray(token_activations))
        )
        if acts.dim() == 3:
            acts = acts[..., feature_index]
        if acts.dim() != 2 or acts.shape[0] != x.shape[0] or len(tokens) != x.shape[0]:
            raise ValueError(
                f"token_activations with shape {tuple(acts.shape)} does not fit {x.shape[0]} texts; "
                "allowed: [N, T] or [N, T, F] with one token list per text"
            )
        acts = acts.detach().cpu().float()
    top = top_activating_examples(x, feature_index, k)
    snippets = []
    for row, value in zip(top.indices.tolist(), top.values.tolist()):  # k examples only
        if acts is None:
            text = str(texts[row])
            snippet = text if len(text) <= max_chars else text[:max_chars].rstrip() + "…"
        else:
            toks = list(tokens[row])
            a = acts[row, : len(toks)]
            centre = int(a.argmax()) if len(toks) else 0
            lo, hi = max(0, centre - window), min(len(toks), centre + window + 1)
            shown = [f"«{t}»" if float(a[i]) > threshold else t for i, t in zip(range(lo, hi), toks[lo:hi])]
            snippet = ("… " if lo > 0 else "") + _detokenize(shown) + (" …" if hi < len(toks) else "")
        snippets.append({"index": row, "activation": value, "snippet": snippet})
    return snippets
