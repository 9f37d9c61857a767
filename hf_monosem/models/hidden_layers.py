"""Where a feature layer reads: the output of one layer of the backbone, token by token.

With ``config.hidden_layer = N`` the feature layer reads the output of the backbone's layer ``N``
(0-based) at every token, and its codes are pooled over the tokens afterwards (:func:`pool_tokens`,
padding masked). That output is what the community SAEs were trained on: SAELens'
``blocks.N.hook_resid_post`` and sparsify's hookpoint ``layers.N`` (``encoder.layer.N`` for BERT) are
the output of the module ``layers[N]``. It is transformers' ``hidden_states[N + 1]``, except for the
last layer of a model whose final norm transformers folds into ``hidden_states[-1]`` (Llama, Gemma):
there the module's output is read, before that norm, as the SAE libraries read it.

The backbone stops after layer ``N`` (:func:`run_to_layer`): a forward hook on that layer keeps its
output and raises a private exception that ends the forward pass, as nnsight's and TransformerLens'
``stop_at_layer`` do. A probe on layer 6 of 32 then runs 7 layers. The backbone is not truncated:
its weights stay whole, so checkpoints keep the backbone's own config and layout (``from_pretrained``
sees neither missing nor unexpected keys), a backbone instance handed in is not changed, and the same
checkpoint can be read at another layer. The hook lives only for the duration of one forward call, so
gradient checkpointing's recomputation during backward never meets it.

Same-folder imports only (remote-code export copies this folder next to the weights).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

__all__ = ["TOKEN_POOLINGS", "find_layer_list", "layer_of_hook", "pool_tokens", "run_to_layer"]

#: how :func:`pool_tokens` turns ``[batch, tokens, width]`` into ``[batch, width]``
TOKEN_POOLINGS = ("cls", "mean", "max", "last")

# SAELens hook names of a layer's output (the residual stream after block N, or before block N + 1)
_SAELENS_RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_(post|pre)$")
# a module path that ends in a layer index: sparsify's hookpoints, SAELens' hook names on HF models
_MODULE_PATH = re.compile(r"^(?:(.*)\.)?(\d+)$")


class _StopForward(Exception):
    """Raised by the hook on the read layer to end the backbone's forward pass (never escapes)."""


def find_layer_list(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """The path and the module of the backbone's list of layers: its one ``nn.ModuleList`` with
    ``num_hidden_layers`` entries (how sparsify's ``get_layer_list`` finds it).

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                             intermediate_size=37))
        >>> path, layers = find_layer_list(bert)
        >>> path, len(layers)
        ('encoder.layer', 2)
    """
    config = getattr(backbone, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    count = getattr(text_config, "num_hidden_layers", None)
    found = [
        (name, module)
        for name, module in backbone.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == count
    ]
    if len(found) != 1:
        raise ValueError(
            f"cannot tell the list of layers of {type(backbone).__name__}: hidden_layer needs exactly one "
            f"nn.ModuleList of num_hidden_layers={count} layers, found "
            f"{[name for name, _ in found] or 'none'}"
        )
    return found[0]


def layer_of_hook(hook_name: str | None, layer_list_path: str) -> int | None:
    """The layer whose output ``hook_name`` names, for a backbone whose layers are at
    ``layer_list_path``; ``None`` for a pooled vector (``"pooled"``, ``"pooled.mean"``: the hook names
    ``save_sae`` writes for a feature layer on the pooled output) or no hook.

    Read: SAELens' ``blocks.N.hook_resid_post`` (layer ``N``) and ``blocks.N.hook_resid_pre`` (the
    input of block ``N``: layer ``N - 1``), and module paths ending in the layer list and an index:
    sparsify's hookpoints (``layers.N``, ``encoder.layer.N``) and SAELens' hook names on transformers
    models (``model.layers.N``).

    Example:
        >>> layer_of_hook("blocks.3.hook_resid_post", "layers"), layer_of_hook("model.layers.3", "layers")
        (3, 3)
        >>> layer_of_hook("blocks.3.hook_resid_pre", "encoder.layer"), layer_of_hook("pooled.mean", "layers")
        (2, None)
        >>> layer_of_hook("blocks.3.hook_mlp_out", "layers")
        Traceback (most recent call last):
        ...
        ValueError: hook 'blocks.3.hook_mlp_out' is not the output of a layer; allowed: 'blocks.N.hook_resid_post', 'blocks.N.hook_resid_pre' (N >= 1), 'layers.N' (this backbone's layers, optionally with a prefix such as 'model.'), 'pooled' or 'pooled.<pooling>'
    """  # noqa: E501
    if hook_name is None or hook_name == "pooled" or hook_name.startswith("pooled."):
        return None
    allowed = (
        "'blocks.N.hook_resid_post', 'blocks.N.hook_resid_pre' (N >= 1), "
        f"'{layer_list_path}.N' (this backbone's layers, optionally with a prefix such as 'model.'), "
        "'pooled' or 'pooled.<pooling>'"
    )
    match = _SAELENS_RESID.match(hook_name)
    if match:
        index = int(match.group(1)) - (match.group(2) == "pre")
        if index < 0:
            raise ValueError(
                f"hook {hook_name!r} reads the embeddings, not the output of a layer; allowed: {allowed}"
            )
        return index
    match = _MODULE_PATH.match(hook_name)
    path = match.group(1) or "" if match else ""
    if match and (path == layer_list_path or path.endswith("." + layer_list_path)):
        return int(match.group(2))
    raise ValueError(f"hook {hook_name!r} is not the output of a layer; allowed: {allowed}")


def run_to_layer(
    backbone: nn.Module, layers: nn.ModuleList, index: int, inputs: dict[str, Any], stop: bool = True
) -> tuple[torch.Tensor, Any]:
    """Run ``backbone(**inputs)`` and return ``(output of layers[index], backbone output)``.

    With ``stop`` the forward pass ends after that layer and the backbone output is ``None``; without,
    the whole backbone runs (for callers who asked for its ``hidden_states`` or ``attentions``).

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
        ...                             intermediate_size=37)).eval()
        >>> ids = torch.tensor([[5, 6, 7]])
        >>> hidden, _ = run_to_layer(bert, find_layer_list(bert)[1], 0, {"input_ids": ids})
        >>> torch.equal(hidden, bert(ids, output_hidden_states=True).hidden_states[1])
        True
    """
    kept: list[torch.Tensor] = []

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        kept.append(output[0] if isinstance(output, (tuple, list)) else output)
        if stop:
            raise _StopForward

    handle = layers[index].register_forward_hook(keep)
    try:
        result = backbone(**inputs)
    except _StopForward:
        result = None
    finally:
        handle.remove()
    if not kept:
        raise RuntimeError(
            f"layer {index} of {type(backbone).__name__} did not run in its forward pass; hidden_layer "
            "needs a backbone that runs every layer of its layer list"
        )
    return kept[0], result


def pool_tokens(tokens: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """``[batch, tokens, width] -> [batch, width]``: the first token (``"cls"``), the mean or the
    maximum over the non-pad tokens, or the last non-pad token (left or right padding alike).

    A row with no token left (all padding) pools to zeros.

    Example:
        >>> x = torch.tensor([[[1.0], [3.0], [9.0]], [[2.0], [4.0], [6.0]]])
        >>> mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
        >>> [pool_tokens(x, mask, p).flatten().tolist() for p in TOKEN_POOLINGS]
        [[1.0, 2.0], [2.0, 5.0], [3.0, 6.0], [3.0, 6.0]]
    """
    if pooling not in TOKEN_POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not valid; allowed: {', '.join(map(repr, TOKEN_POOLINGS))}")
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "last":
        if attention_mask is None:
            return tokens[:, -1]
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        last = (attention_mask.to(torch.long) * positions).argmax(dim=1)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]
    if attention_mask is None:
        return tokens.mean(dim=1) if pooling == "mean" else tokens.amax(dim=1)
    mask = attention_mask.to(torch.bool).unsqueeze(-1)
    if pooling == "mean":
        weights = mask.to(tokens.dtype)
        return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    lowest = torch.finfo(tokens.dtype).min
    pooled = tokens.masked_fill(~mask, lowest).amax(dim=1)
    return torch.where(mask.any(1), pooled, torch.zeros_like(pooled))
