"""SAEs to and from SAELens and sparsify checkpoints: the weight and config mapping, nothing else.

:func:`save_sae` writes an ``sae`` / ``topk`` / ``jumprelu`` / ``gated`` feature layer (or the one of a
MonoSemantic model) as a folder that SAELens' ``SAE.load_from_disk`` or (``topk``) sparsify's
``SparseCoder.load_from_disk`` reads; :func:`load_sae` reads such a folder, or Gemma Scope's
``params.npz`` (or a Hub repository holding one), back into a feature layer, which
:meth:`MonoSemanticModel.from_sae <hf_monosem.MonoSemanticModel.from_sae>` puts on a backbone, on the
layer its hook names (``hidden_layer``; :func:`~.hidden_layers.layer_of_hook`). Neither
library is imported here (the files are plain ``cfg.json`` + safetensors), so this module works, and
travels with remote code, without them; ``tests/models/test_sae_formats.py`` checks the mapping against
the real libraries (sae-lens 6.54.12, eai-sparsify 1.3.3: the ``interop`` extra).

The mapping, ``W`` our encoder weight ``[M, D]``, ``b`` its bias, ``V`` our decoder weight ``[D, M]``,
``p`` our pre-bias:

* SAELens ``topk`` (our ``topk``) or ``standard`` (our ``sae``, ReLU): ``W_enc = W.T``, ``b_enc = b``,
  ``W_dec = V.T``, ``b_dec = p``, ``apply_b_dec_to_input = True``. Our L2 input normalisation is
  SAELens' ``normalize_activations="constant_norm_rescale"`` (each input rescaled to norm
  ``sqrt(D)``, the output scaled back): the same normalisation up to the constant ``sqrt(D)``, folded
  into the weights (``W_enc / sqrt(D)``, ``W_dec * sqrt(D)``, ``b_dec * sqrt(D)``), so the codes are
  equal and SAELens' reconstruction is ours times the input's norm (in the input's scale). SAELens'
  other normalisations have no counterpart (``layer_norm`` centres the input, ``expected_average_only_in``
  is a dataset constant applied outside the SAE): a layer without normalisation is written with
  ``"none"``. A layer normalised only while fitting (``sae_normalize_input="fit"``: its codes encode the
  raw vector) is written with ``"none"`` and unscaled weights, so SAELens' codes are its inference codes;
  SAELens has no per-example normalisation of training inputs alone (its ``expected_average_only_in``
  is one dataset-wide constant, folded into the weights when a pretrained SAE is loaded), so the
  ``hf_monosem`` block keeps ``"normalize_input": "fit"`` for the way back. Read back:
  ``constant_norm_rescale`` -> normalised input, ``none`` and ``expected_average_only_in`` (which
  SAELens' inference also leaves to the caller) -> not, unless the ``hf_monosem`` block says ``"fit"``;
  ``apply_b_dec_to_input=False`` and ``rescale_acts_by_decoder_norm=True`` are folded into the weights.
* SAELens ``jumprelu`` (our ``jumprelu``) and ``gated`` (our ``gated``): as ``standard``, plus
  ``threshold`` (jumprelu) or ``r_mag`` / ``b_mag`` with ``b_gate`` for ``b_enc`` (gated), unchanged by
  the folded scale (they act on pre-activations, which it leaves alone). Gemma Scope's ``params.npz``
  is SAELens' ``jumprelu`` with ``apply_b_dec_to_input=False`` (folded into the encoder bias, and into
  ``b_mag`` for gated), as SAELens' Gemma Scope loader reads it.
* sparsify ``SparseCoder`` (``topk`` only: its codes are ReLU then top-k, the same nonzero codes):
  ``encoder.weight = W``, ``encoder.bias = b``, ``W_dec = V.T``, ``b_dec = p``. sparsify has no input
  normalisation: a layer that normalises its input is written as is, and ``cfg.json`` records
  ``"hf_monosem": {"normalize_input": true}`` (sparsify ignores unknown keys): feed it the
  L2-normalised vector. ``"normalize_input": "fit"`` (normalised while fitting only): feed it the raw
  vector, as our layer's codes do.

The metadata names where the SAE reads: SAELens' ``metadata.model_name`` is the backbone's Hub id or
folder and ``metadata.hook_name`` the pooled vector (``"pooled.<pooling>"``, e.g. ``"pooled.mean"``);
both formats carry an ``hf_monosem`` block (kind, pooling, normalisation, loss weights) that makes
export then import the identity.

Example:
    >>> import tempfile
    >>> from hf_monosem.models import FeatureLayerSettings, TopKSparseAutoencoderFeatures
    >>> layer = TopKSparseAutoencoderFeatures(16, FeatureLayerSettings(feature_dim=64, topk=8))
    >>> folder = save_sae(layer, tempfile.mkdtemp(), format="saelens", backbone="org/encoder", pooling="mean")
    >>> sorted(os.listdir(folder))
    ['cfg.json', 'sae_weights.safetensors']
    >>> loaded, info = load_sae(folder)
    >>> x = torch.randn(4, 16)
    >>> torch.allclose(loaded(x)[0], layer(x)[0], atol=1e-6), info["format"], info["hook_name"]
    (True, 'saelens', 'pooled.mean')

Same-folder imports only (remote-code export copies this folder next to the weights).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .configuration import public_name, scrub_local_paths
from .feature_layers import FeatureLayerSettings, feature_layer_class
from .hidden_layers import find_layer_list, layer_of_hook
from .sae import SparseAutoencoder

__all__ = ["SAE_FORMATS", "load_sae", "model_from_sae", "resolve_sae_folder", "save_sae"]

#: the checkpoint formats :func:`save_sae` writes and :func:`load_sae` reads (``"gemmascope"``: read only)
SAE_FORMATS = ("saelens", "sparsify", "gemmascope")
_CONFIG = "cfg.json"
_WEIGHTS = {"saelens": "sae_weights.safetensors", "sparsify": "sae.safetensors", "gemmascope": "params.npz"}
# the SAELens release whose format is written (its loader reads metadata.sae_lens_version >= 6 as
# the current format)
_SAELENS_VERSION = "6.54.12"
_SAELENS_ARCHITECTURES = {"topk": "topk", "sae": "standard", "jumprelu": "jumprelu", "gated": "gated"}
# the parameters of each kind beyond the shared ones, under the names SAELens gives them
_EXTRA_SAELENS_TENSORS = {"jumprelu": ("threshold",), "gated": ("r_mag", "b_mag")}
# the hf_monosem block's "normalize_input" per input normalisation (FeatureLayerSettings.sae_normalize_input)
_NORMALIZE_INPUT_VALUES = {"always": True, "fit": "fit", "never": False}


def save_sae(
    model_or_layer: nn.Module,
    folder: str | os.PathLike,
    format: str = "saelens",
    *,
    backbone: str | None = None,
    pooling: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> str:
    """Write the SAE of ``model_or_layer`` to ``folder`` as a SAELens or sparsify checkpoint; return
    ``folder``.

    Args:
        model_or_layer: an ``sae``/``topk`` feature layer, or a MonoSemantic model (base or classifier)
            whose feature layer is one; a model also gives the backbone id (``config.backbone``, else
            the backbone's ``name_or_path``) and the pooling.
        folder: created if missing; ``cfg.json`` and ``sae_weights.safetensors`` (SAELens) or
            ``sae.safetensors`` (sparsify) are written into it.
        format: ``"saelens"`` (architecture ``topk`` or ``standard``) or ``"sparsify"`` (``topk`` only).
        backbone, pooling: override what the model says (or say it, for a bare layer); they go into the
            metadata only.
        dtype: of the written weights.
    """
    if format not in _WRITTEN_FORMATS:
        raise ValueError(f"format={format!r} is not valid; allowed: {', '.join(map(repr, _WRITTEN_FORMATS))}")
    layer, found_backbone, found_pooling, hidden_layer = _sae_of(model_or_layer)
    # a local folder is named by its last component: cfg.json must not carry the saver's machine paths
    backbone = public_name(backbone if backbone is not None else found_backbone)
    pooling = pooling if pooling is not None else found_pooling
    ours = {
        "kind": layer.kind,
        # True ("always"), False ("never") or "fit": older readers of True / False keep working
        "normalize_input": _NORMALIZE_INPUT_VALUES[layer.input_normalization],
        "pooling": pooling,
        "backbone": backbone,
        "hidden_layer": hidden_layer,
        "sparsity_weight": float(layer.settings.sparsity_weight),
        "reconstruction_weight": float(layer.settings.reconstruction_weight),
    }
    with torch.no_grad():
        weight = layer.encoder.weight.detach().float().cpu()
        bias = layer.encoder.bias.detach().float().cpu()
        decoder = layer.decoder.weight.detach().float().cpu().t()
        pre_bias = layer.pre_bias.detach().float().cpu()
    if format == "saelens":
        hook = f"blocks.{hidden_layer}.hook_resid_post" if hidden_layer is not None else None
        config, tensors = _to_saelens(
            layer, weight, bias, decoder, pre_bias, backbone, hook or pooling, ours, dtype
        )
    else:
        config, tensors = _to_sparsify(layer, weight, bias, decoder, pre_bias, ours)
    os.makedirs(folder, exist_ok=True)
    save_file(
        {name: t.to(dtype).contiguous() for name, t in tensors.items()},
        os.path.join(folder, _WEIGHTS[format]),
    )
    with open(os.path.join(folder, _CONFIG), "w") as f:
        json.dump(scrub_local_paths(config), f, indent=2)
    return os.fspath(folder)


def _sae_of(model_or_layer: nn.Module) -> tuple[SparseAutoencoder, str | None, str | None, int | None]:
    layer = getattr(model_or_layer, "feature_layer", model_or_layer)
    if not isinstance(layer, SparseAutoencoder) or layer.kind not in _SAELENS_ARCHITECTURES:
        raise ValueError(
            f"{type(layer).__name__} is not a sparse autoencoder; allowed: a feature layer of kind "
            f"{', '.join(map(repr, _SAELENS_ARCHITECTURES))}, or a MonoSemantic model with one"
        )
    config = getattr(model_or_layer, "config", None)
    if config is None:
        return layer, None, None, None
    backbone = getattr(config, "backbone", None)
    if not backbone:
        inner = getattr(model_or_layer, "backbone", None)
        backbone = getattr(getattr(inner, "config", None), "name_or_path", None) or None
    return layer, backbone, getattr(config, "pooling", None), getattr(config, "hidden_layer", None)


_WRITTEN_FORMATS = ("saelens", "sparsify")


def _to_saelens(layer, weight, bias, decoder, pre_bias, backbone, hook_or_pooling, ours, dtype):
    dim = layer.input_dim
    scale = math.sqrt(dim) if layer.normalize_input else 1.0
    config: dict[str, Any] = {
        "architecture": _SAELENS_ARCHITECTURES[layer.kind],
        "d_in": dim,
        "d_sae": layer.feature_dim,
        "dtype": str(dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "constant_norm_rescale" if layer.normalize_input else "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": _SAELENS_VERSION,
            "sae_lens_training_version": None,
            "model_name": backbone,
            # a layer's output in SAELens' name, else the pooled vector ("pooled.<pooling>")
            "hook_name": (
                hook_or_pooling
                if hook_or_pooling and hook_or_pooling.startswith("blocks.")
                else f"pooled.{hook_or_pooling}"
                if hook_or_pooling
                else "pooled"
            ),
            "hf_monosem": ours,
        },
    }
    if layer.kind == "topk":
        config.update(k=layer.k, rescale_acts_by_decoder_norm=False)
    tensors = {
        "W_enc": weight.t() / scale,
        "b_gate" if layer.kind == "gated" else "b_enc": bias,
        "W_dec": decoder * scale,
        "b_dec": pre_bias * scale,
    }
    # the pre-activations do not change with the folded scale: thresholds and gate parameters as they are
    for name in _EXTRA_SAELENS_TENSORS.get(layer.kind, ()):
        tensors[name] = getattr(layer, name).detach().float().cpu()
    return config, tensors


def _to_sparsify(layer, weight, bias, decoder, pre_bias, ours):
    if layer.kind != "topk":
        raise ValueError(
            f"sparsify has TopK sparse coders only; a {layer.kind!r} layer can be saved as format='saelens'"
        )
    config = {
        "activation": "topk",
        "expansion_factor": max(1, layer.feature_dim // layer.input_dim),
        "normalize_decoder": True,
        "num_latents": layer.feature_dim,
        "k": layer.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": layer.input_dim,
        "hf_monosem": ours,
    }
    return config, {"encoder.weight": weight, "encoder.bias": bias, "W_dec": decoder, "b_dec": pre_bias}


def resolve_sae_folder(
    folder_or_hub_id: str | os.PathLike,
    subfolder: str | None = None,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> str:
    """The local folder of an SAE checkpoint: ``folder_or_hub_id`` (+ ``subfolder``) if it is a folder,
    else a Hub repository downloaded with ``huggingface_hub.snapshot_download`` (only ``subfolder``'s
    files when given). Offline (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``) the cached snapshot is
    used.
    """
    if os.path.isdir(folder_or_hub_id):
        folder = os.path.join(folder_or_hub_id, subfolder) if subfolder else os.fspath(folder_or_hub_id)
    else:
        from huggingface_hub import snapshot_download

        root = snapshot_download(
            os.fspath(folder_or_hub_id),
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_patterns=[f"{subfolder.strip('/')}/*"] if subfolder else None,
        )
        folder = os.path.join(root, subfolder) if subfolder else root
    if not any(os.path.isfile(os.path.join(folder, name)) for name in (_CONFIG, _WEIGHTS["gemmascope"])):
        present = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        raise FileNotFoundError(
            f"no {_CONFIG} in {folder} (it holds {present}); an SAE checkpoint is a folder with {_CONFIG} "
            f"and {_WEIGHTS['saelens']} or {_WEIGHTS['sparsify']} (or Gemma Scope's "
            f"{_WEIGHTS['gemmascope']}); pass subfolder= if the SAE sits in a folder of the "
            f"repository"
        )
    return folder


def load_sae(
    folder_or_hub_id: str | os.PathLike,
    subfolder: str | None = None,
    *,
    format: str | None = None,
    normalize_input: bool | str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Read a SAELens, sparsify or Gemma Scope checkpoint (a folder or a Hub id, see
    :func:`resolve_sae_folder`) into an ``sae`` / ``topk`` / ``jumprelu`` / ``gated`` feature layer;
    return ``(layer, info)``.

    ``format`` is detected from the weights file when ``None``: SAELens' ``sae_weights.safetensors``,
    sparsify's ``sae.safetensors`` or Gemma Scope's ``params.npz`` (DeepMind's JumpReLU SAEs as the Hub
    holds them, ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``, read as SAELens' Gemma Scope
    loader reads them: the input is not centred by ``b_dec``, and the hook comes from the path,
    ``layer_N`` in a ``-res`` repository being ``blocks.N.hook_resid_post``). ``normalize_input`` (a value of
    ``FeatureLayerSettings.sae_normalize_input``) overrides what the checkpoint says about L2-normalising
    the input (sparsify checkpoints not written here say nothing: no normalisation). ``info`` holds
    ``format``, ``architecture``, ``model_name``, ``hook_name``,
    ``pooling`` and ``folder``; ``hook_name`` is SAELens' ``metadata.hook_name``, sparsify's hookpoint
    (the name of the folder its trainer writes the coder into, e.g. ``layers.6``) or Gemma Scope's
    (see above); :func:`~.hidden_layers.layer_of_hook` says which layer it reads. The layer is in
    eval mode, in fp32.
    """
    folder = resolve_sae_folder(
        folder_or_hub_id,
        subfolder,
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
    )
    if format is None:
        found = [name for name, weights in _WEIGHTS.items() if os.path.isfile(os.path.join(folder, weights))]
        if not found:
            raise FileNotFoundError(f"{folder} has {_CONFIG} but neither of {', '.join(_WEIGHTS.values())}")
        format = found[0]
    elif format not in SAE_FORMATS:
        raise ValueError(
            f"format={format!r} is not valid; allowed: None, {', '.join(map(repr, SAE_FORMATS))}"
        )
    config_path, weights_path = os.path.join(folder, _CONFIG), os.path.join(folder, _WEIGHTS[format])
    if format == "gemmascope":
        config = _gemma_scope_config(os.path.join(os.fspath(folder_or_hub_id), subfolder or ""))
        config_path = weights_path
    else:
        config = _read_config(config_path)
    try:
        if format == "gemmascope":
            tensors = _read_npz(weights_path)
        else:
            tensors = {name: t.float() for name, t in load_file(weights_path).items()}
    except Exception as error:  # safetensors' / numpy's own error types for truncated / garbled files
        raise ValueError(f"{weights_path} cannot be read ({error}); the SAE checkpoint is damaged") from error
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{weights_path} holds NaN/inf in {name!r}; the SAE checkpoint is damaged")
    reader = _from_sparsify if format == "sparsify" else _from_saelens
    try:
        if format == "gemmascope":  # the sizes are those of the weights (SAELens takes them from the name)
            config["d_in"], config["d_sae"] = tensors["W_enc"].shape
        kind, dim, width, k, normalized, tensors, info = reader(config, tensors)
        if format == "sparsify" and _MODULE_PATH_END.search(os.path.basename(os.path.normpath(folder))):
            info["hook_name"] = os.path.basename(os.path.normpath(folder))  # the hookpoint its trainer names
    except KeyError as error:
        raise ValueError(
            f"{config_path} / {os.path.basename(weights_path)} lack {error.args[0]!r}, which a {format} SAE "
            "checkpoint holds"
        ) from error
    ours = info.pop("ours")
    if normalize_input is not None:
        normalized = normalize_input
    settings_kwargs = {
        name: ours[name]
        for name in ("sparsity_weight", "reconstruction_weight")
        if ours.get(name) is not None
    }
    settings = FeatureLayerSettings(
        feature_dim=width, topk=k, sae_normalize_input=normalized, **settings_kwargs
    )
    layer = feature_layer_class(kind, is_sparse_autoencoder=True)(dim, settings)
    try:
        layer.load_state_dict(tensors)
    except RuntimeError as error:  # sizes that disagree with cfg.json
        raise ValueError(
            f"the weights in {weights_path} do not fit the sizes in {config_path}: {error}"
        ) from error
    layer.eval()
    info.update(format=format, folder=folder, normalize_input=normalized)
    info.setdefault("pooling", ours.get("pooling"))
    if info.get("hook_name") is None and ours.get("hidden_layer") is not None:  # ours, as sparsify
        info["hook_name"] = f"blocks.{ours['hidden_layer']}.hook_resid_post"
    return layer, info


# a folder or hook name that ends in a layer index ("layers.6", "encoder.layer.3")
_MODULE_PATH_END = re.compile(r"\.\d+$")


def _read_config(config_path: str) -> dict[str, Any]:
    try:
        with open(config_path) as f:
            config = json.load(f)
    except ValueError as error:
        raise ValueError(
            f"{config_path} is not valid JSON ({error}); the SAE checkpoint is damaged"
        ) from error
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} holds a {type(config).__name__}, not a JSON object of SAE settings")
    return config


def _read_npz(path: str) -> dict[str, torch.Tensor]:
    import numpy as np

    with np.load(path) as data:  # Gemma Scope's keys, some releases with lower-case "w_"
        tensors = {
            ("W_" + key[2:] if key.startswith("w_") else key): torch.from_numpy(data[key]).float()
            for key in data.files
        }
    factor = tensors.pop("scaling_factor", None)
    if factor is not None and not bool((factor == 1).all()):
        raise ValueError("Gemma Scope checkpoints with a finetuning scaling factor are not supported")
    return tensors


def _gemma_scope_config(source: str) -> dict[str, Any]:
    """The SAELens settings of a Gemma Scope ``params.npz`` (what SAELens' ``get_gemma_2_config_from_hf``
    says): JumpReLU, the input not centred by ``b_dec``, no normalisation; the hook from ``source``
    (repository id or folder, and subfolder), ``layer_N`` of a ``-res`` release: the output of layer N."""
    layer = re.search(r"layer_(\d+)", source)
    hook = None
    if layer:
        site = next((name for name in ("res", "mlp", "att") if f"-{name}" in source), None)
        hook = {
            "res": f"blocks.{layer.group(1)}.hook_resid_post",
            "mlp": f"blocks.{layer.group(1)}.hook_mlp_out",
            "att": f"blocks.{layer.group(1)}.attn.hook_z",
            None: None,  # the path does not say: from_sae asks for hidden_layer=
        }[site]
    return {
        "architecture": "jumprelu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "metadata": {"hook_name": hook},
    }


def _from_saelens(config: dict[str, Any], tensors: dict[str, torch.Tensor]):
    metadata = config.get("metadata") or {}
    architecture = config.get("architecture", "standard")
    legacy_k = (config.get("activation_fn_kwargs") or {}).get("k")
    if architecture == "standard" and config.get("activation_fn", config.get("activation_fn_str")) == "topk":
        architecture = "topk"  # SAELens < 6 wrote TopK SAEs as standard + activation_fn="topk"
    kinds = {value: key for key, value in _SAELENS_ARCHITECTURES.items()}
    if architecture not in kinds:
        raise ValueError(
            f"SAELens architecture {architecture!r} has no feature layer here; allowed: "
            f"{', '.join(map(repr, kinds))}"
        )
    if config.get("finetuning_scaling_factor"):
        raise ValueError("SAELens checkpoints with a finetuning scaling factor are not supported")
    normalization = config.get("normalize_activations") or "none"
    if normalization not in ("none", "expected_average_only_in", "constant_norm_rescale"):
        raise ValueError(
            f"SAELens normalize_activations={normalization!r} has no counterpart here (the feature layer "
            "L2-normalises its input or leaves it alone); allowed: 'none', 'expected_average_only_in', "
            "'constant_norm_rescale'"
        )
    w_enc, w_dec, b_dec = (tensors[name] for name in ("W_enc", "W_dec", "b_dec"))
    dim, width = int(config["d_in"]), int(config["d_sae"])
    b_enc = tensors["b_gate" if architecture == "gated" else "b_enc"]
    extra = {name: tensors[name] for name in _EXTRA_SAELENS_TENSORS.get(kinds[architecture], ())}
    if config.get("rescale_acts_by_decoder_norm"):  # fold the decoder norms into the encoder (TopK only)
        norms = w_dec.norm(dim=-1).clamp_min(1e-8)
        w_enc, b_enc, w_dec = w_enc * norms, b_enc * norms, w_dec / norms.unsqueeze(-1)
    if not config.get("apply_b_dec_to_input", True):  # we always subtract the pre-bias: fold it back in
        b_enc = b_enc + b_dec @ w_enc
        if "b_mag" in extra:  # the gated magnitude path reads the same input through W_enc * exp(r_mag)
            extra["b_mag"] = extra["b_mag"] + b_dec @ (w_enc * extra["r_mag"].exp())
    normalized = normalization == "constant_norm_rescale"
    scale = math.sqrt(dim) if normalized else 1.0
    ours = metadata.get("hf_monosem") or {}
    if not normalized and ours.get("normalize_input") == "fit":  # normalised while fitting only
        normalized = "fit"
    state = {
        "pre_bias": b_dec / scale,
        "encoder.weight": (w_enc * scale).t().contiguous(),
        "encoder.bias": b_enc,
        "decoder.weight": (w_dec / scale).t().contiguous(),
        **extra,  # thresholds and gate parameters act on pre-activations, which the scale leaves alone
    }
    kind = kinds[architecture]
    k = int(config.get("k", legacy_k or 0)) if kind == "topk" else None
    info = {
        "architecture": architecture,
        "model_name": metadata.get("model_name", config.get("model_name")),
        "hook_name": metadata.get("hook_name", config.get("hook_name")),
        "ours": ours,
    }
    return kind, dim, width, k, normalized, state, info


def _from_sparsify(config: dict[str, Any], tensors: dict[str, torch.Tensor]):
    if config.get("activation", "topk") != "topk":
        raise ValueError(
            f"sparsify activation={config.get('activation')!r} has no feature layer here; allowed: 'topk'"
        )
    for flag in ("skip_connection", "transcode"):  # (multi_topk changes the training loss only)
        if config.get(flag):
            raise ValueError(f"sparsify coders with {flag}=True have no feature layer here")
    dim = int(config["d_in"])
    width = int(config.get("num_latents") or dim * int(config.get("expansion_factor", 32)))
    ours = config.get("hf_monosem") or {}
    state = {
        "pre_bias": tensors["b_dec"],
        "encoder.weight": tensors["encoder.weight"],
        "encoder.bias": tensors["encoder.bias"],
        "decoder.weight": tensors["W_dec"].t().contiguous(),
    }
    info = {"architecture": "topk", "model_name": ours.get("backbone"), "hook_name": None, "ours": ours}
    normalized = ours.get("normalize_input", False)
    normalized = normalized if normalized == "fit" else bool(normalized)
    return "topk", dim, width, int(config["k"]), normalized, state, info


def model_from_sae(
    model_class: type,
    backbone: Any,
    sae: str | os.PathLike,
    *,
    subfolder: str | None = None,
    sae_revision: str | None = None,
    local_files_only: bool = False,
    normalize_input: bool | str | None = None,
    **config_kwargs: Any,
):
    """``model_class.from_backbone(backbone, ...)`` with the SAE checkpoint ``sae`` as its feature layer.

    What :meth:`MonoSemanticModel.from_sae <hf_monosem.MonoSemanticModel.from_sae>` does (see there);
    ``model_class`` is any MonoSemantic model class.
    """
    set_by_sae = sorted({"feature_layer", "feature_dim", "topk", "sae_normalize_input"} & set(config_kwargs))
    if set_by_sae:
        raise ValueError(
            f"{set_by_sae} are set by the SAE checkpoint; pass normalize_input= to override its normalisation"
        )
    # token / cache_dir serve the SAE's download, and the backbone's when it is a Hub id or folder too
    hub = {key: config_kwargs.get(key) for key in ("token", "cache_dir")}
    if not isinstance(backbone, (str, os.PathLike)):
        for key in hub:
            config_kwargs.pop(key, None)
    layer, info = load_sae(
        sae,
        subfolder,
        revision=sae_revision,
        local_files_only=local_files_only,
        normalize_input=normalize_input,
        **hub,
    )
    if info.get("pooling") and "pooling" not in config_kwargs:
        config_kwargs["pooling"] = info["pooling"]
    config_kwargs.setdefault("freeze_backbone", True)  # the SAE was fitted on this backbone's vectors
    backbone = model_class._backbone_model(backbone, config_kwargs)
    if "hidden_layer" not in config_kwargs:
        config_kwargs["hidden_layer"] = _layer_read(info, backbone)
    settings = layer.settings
    model = model_class.from_backbone(
        backbone,
        feature_layer=layer.kind,
        feature_dim=layer.feature_dim,
        sae_normalize_input=layer.settings.sae_normalize_input,
        sparsity_weight=settings.sparsity_weight,
        reconstruction_weight=settings.reconstruction_weight,
        **({"topk": layer.k} if layer.kind == "topk" else {}),
        **config_kwargs,
    )
    if model.feature_layer.input_dim != layer.input_dim:
        where = "pooled vector is" if model.config.hidden_layer is None else "hidden states are"
        raise ValueError(
            f"the SAE in {info['folder']} reads {layer.input_dim}-d vectors, but this backbone's {where} "
            f"{model.feature_layer.input_dim}-d"
        )
    model.feature_layer.load_state_dict(layer.state_dict())
    model.eval()
    return model


def _layer_read(info: dict[str, Any], backbone: nn.Module) -> int | None:
    """The backbone layer whose output the SAE of ``info`` was trained on (``None``: the pooled output)."""
    hook = info.get("hook_name")
    if info["format"] == "gemmascope" and hook is None:
        raise ValueError(
            f"{info['folder']} does not say which layer its SAE reads (Gemma Scope names it in the path: "
            "layer_N in a -res repository); pass hidden_layer="
        )
    if hook is None or hook == "pooled" or hook.startswith("pooled."):
        return None
    return layer_of_hook(hook, find_layer_list(backbone)[0])
