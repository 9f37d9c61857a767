"""Sparse autoencoder feature layers (``sae``: ReLU + L1, ``topk``: TopK) and their upkeep.

The codes are the features. :class:`SparseAutoencoder` holds what both kinds share: the pre-bias,
encoder, unit-norm decoder and normalised-MSE reconstruction, and the maintenance a fitting loop
needs between optimiser steps (:meth:`~SparseAutoencoder.normalize_decoder_`,
:meth:`~SparseAutoencoder.resample_dead_`, :meth:`~SparseAutoencoder.explained_variance`), so that
no code outside the class writes its weights.

Training goes through :meth:`~SparseAutoencoder.fit_forward`, the forward pass of a fitting loop: for
``topk`` it is one autograd node (:class:`~.sae_kernels.TopKReconstruction`, in ``sae_kernels.py``)
that never forms the dense ``[batch, feature_dim]`` codes nor their gradient (the ``k`` active latents
are decoded by a gather and every gradient after the top-k is a sparse product, as in EleutherAI's
sparsify), yet its loss and gradients equal those of :meth:`~SparseAutoencoder.forward`, the dense
reference the model runs (``tests/models/test_sae_kernels.py`` checks both, and against autograd on
the plain formulation in float64). It can add OpenAI's AuxK term for dead latents (Gao et al. 2024,
"Scaling and evaluating sparse autoencoders"). For ``sae`` the decoding and the L1 term are one
autograd node.

Same-folder imports only (remote-code export copies this folder next to the weights).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as hf_init

from .feature_layers import EPS, FeatureLayer, FeatureLayerSettings, register_feature_layer
from .sae_kernels import (
    GatheredPreactivations,
    SparseDecode,
    TopKReconstruction,
    TopKReconstructionWithAuxK,
    autocast_off_backward,
    topk_indices,
)

__all__ = ["FitForward", "SparseAutoencoder", "SparseAutoencoderFeatures", "TopKSparseAutoencoderFeatures"]

# Anthropic's resampling scales new encoder rows to this fraction of the mean alive encoder norm
_RESAMPLE_ENCODER_SCALE = 0.2
#: Norm of the encoder rows a fresh fit starts from (``fit_sae``; a layer built on its own starts there
#: too): that of nn.Linear's default rows (uniform in +-1/sqrt(fan_in)), sparsify's initialisation.
#: Unit rows fit measurably worse in a few epochs (FVU 0.351 vs 0.332 on 20k MiniLM vectors, width
#: 1536, k 32, 3 epochs).
ENCODER_INIT_NORM = 3**-0.5


class FitForward(NamedTuple):
    """What one training step of an SAE needs from its forward pass (:meth:`SparseAutoencoder.fit_forward`).

    Attributes:
        aux_losses: the layer's loss terms (as :meth:`SparseAutoencoder.forward` returns them), plus
            ``auxk_loss`` when dead latents were given to a ``topk`` layer.
        fired: ``[feature_dim]`` bool, the latents active on at least one row of the batch.
        squared_error: ``sum ||x - x_hat||^2`` over the batch, in the SAE's input space (detached).
        active: the number of nonzero codes in the batch (detached).
    """

    aux_losses: dict[str, torch.Tensor]
    fired: torch.Tensor
    squared_error: torch.Tensor
    active: torch.Tensor


class _DecodeWithDecoderNormL1(torch.autograd.Function):
    """``(codes @ weight.T, mean_b sum_m codes[b, m] * ||weight[:, m]||)``: the ReLU SAE's decoding and
    its decoder-norm-weighted L1 term in one node.

    The same values and gradients as the autograd expression, with the decoder's two gradients
    (through the decoding and through the column norms) summed in place: one pass over the
    ``[D, M]`` decoder instead of four (three products and a sum), which at small batches is most of
    the term's cost (``benchmarks/step_time.py``).
    """

    @staticmethod
    def forward(ctx, codes, weight):
        ctx.set_materialize_grads(False)
        squares = (weight * weight).sum(0)
        norms = squares.clamp_min(1e-12).sqrt()
        ctx.save_for_backward(codes, weight, norms, squares > 1e-12)
        return F.linear(codes, weight), codes.mean(0) @ norms

    @staticmethod
    @autocast_off_backward
    def backward(ctx, grad_decoded, grad_l1):
        codes, weight, norms, unclamped = ctx.saved_tensors
        grad_codes = grad_weight = None
        if ctx.needs_input_grad[0]:
            if grad_decoded is not None:
                grad_codes = grad_decoded @ weight
            if grad_l1 is not None:
                per_code = (grad_l1 / codes.shape[0]) * norms
                grad_codes = (
                    per_code.expand_as(codes).clone() if grad_codes is None else grad_codes.add_(per_code)
                )
        if ctx.needs_input_grad[1]:
            grad_weight = grad_decoded.t() @ codes if grad_decoded is not None else torch.zeros_like(weight)
            if grad_l1 is not None:
                column_scale = torch.where(unclamped, grad_l1 * codes.mean(0) / norms, 0.0)
                grad_weight.addcmul_(weight, column_scale)
        return grad_codes, grad_weight


class SparseAutoencoder(FeatureLayer):
    """Shared parts of the ReLU and TopK SAEs: pre-bias, encoder, unit-norm decoder, reconstruction.

    Inputs are optionally L2-normalised first (the paper's post-hoc SAE reads the normalised
    projector output), which also makes the losses scale-free; with ``sae_normalize_input="fit"``
    only the fitting objective reads the normalised vector and the codes encode the raw one
    (:attr:`input_normalization`). Subclasses implement :meth:`encode`.
    """

    is_sparse_autoencoder = True
    #: :meth:`init_for_fit_` stores the decoder weight column-major: the layout of the kind's training
    #: kernel (the TopK one gathers decoder rows; a dense ``F.linear`` backward writes row-major)
    latent_major_decoder = False

    def __init__(self, input_dim: int, settings: FeatureLayerSettings):
        super().__init__(input_dim, settings)
        #: ``"always"``, ``"fit"`` or ``"never"`` (see ``FeatureLayerSettings.sae_normalize_input``)
        self.input_normalization = self.settings.sae_input_normalization
        #: the codes encode the L2-normalised input (``"always"``)
        self.normalize_input = self.input_normalization == "always"
        #: the fitting objective reads the L2-normalised input (``"always"`` or ``"fit"``)
        self.normalize_fit_input = self.input_normalization != "never"
        self.pre_bias = nn.Parameter(torch.zeros(input_dim))
        self.encoder = nn.Linear(input_dim, self.feature_dim)
        self.decoder = nn.Linear(self.feature_dim, input_dim, bias=False)
        self.loss_weights = {"reconstruction_loss": float(self.settings.reconstruction_weight)}
        # A layer built on its own (build_feature_layer, the cached route) starts like sparsify's: the
        # decoder is the unit-norm transpose of nn.Linear's encoder, the encoder bias zero. No random
        # draw here, so seeded code that builds a layer draws what it drew before.
        with torch.no_grad():
            self.encoder.bias.zero_()
            self.decoder.weight.copy_(F.normalize(self.encoder.weight, dim=1, eps=EPS).t())

    @torch.no_grad()
    def reset_parameters_like_sae(self) -> None:
        """Decoder columns of unit norm, encoder = decoder transpose (a standard SAE initialisation).

        Uses ``transformers.initialization`` so that weights already loaded from a checkpoint are
        left alone when ``from_pretrained`` initialises missing keys.
        """
        decoder = torch.randn_like(self.decoder.weight, device="cpu" if self.decoder.weight.is_meta else None)
        decoder = decoder / decoder.norm(dim=0, keepdim=True).clamp_min(EPS)
        hf_init.copy_(self.decoder.weight, decoder)
        hf_init.copy_(self.encoder.weight, decoder.t().contiguous())
        hf_init.zeros_(self.encoder.bias)
        hf_init.zeros_(self.pre_bias)

    @torch.no_grad()
    def init_for_fit_(
        self, data_mean: torch.Tensor | None = None, *, encoder_norm: float | None = ENCODER_INIT_NORM
    ) -> None:
        """The starting point of a fresh fit, in place (sparsify's initialisation).

        With ``encoder_norm``, each encoder row becomes its decoder column (tied initialisation: every
        latent starts reading the direction it writes) scaled to that norm, and the encoder bias zero;
        with ``data_mean`` (in the SAE's input space, :meth:`prepare_input`), the pre-bias becomes it,
        so the first steps fit the spread of the data and not its offset (the geometric median's cheap
        stand-in, as sparsify's ``b_dec``). Either can be ``None`` to leave that part alone. The decoder
        weight (``[input_dim, feature_dim]``) of a ``topk`` layer (:attr:`latent_major_decoder`) is
        stored latent-major (column-major) from here on: the
        same values in the layout the TopK training kernel reads and writes without a transposing copy
        (:class:`~.sae_kernels.TopKReconstruction`); an optimiser made afterwards keeps its state in
        that layout (torch's fused CPU Adam assumes parameter, gradient and state share one).

        Example:
            >>> sae = TopKSparseAutoencoderFeatures(16, FeatureLayerSettings(feature_dim=32, topk=4))
            >>> sae.init_for_fit_(torch.ones(16), encoder_norm=0.5)
            >>> round(sae.encoder.weight.norm(dim=1).max().item(), 4), sae.pre_bias[0].item()
            (0.5, 1.0)
            >>> torch.allclose(sae.encoder.weight, 0.5 * sae.decoder.weight.t())
            True
            >>> sae.decoder.weight.shape, sae.decoder.weight.t().is_contiguous()
            (torch.Size([16, 32]), True)
        """
        decoder = self.decoder.weight
        if self.latent_major_decoder and not decoder.t().is_contiguous():
            decoder.data = decoder.data.t().contiguous().t()
        if encoder_norm is not None:
            unit = decoder / torch.linalg.vecdot(decoder, decoder, dim=0).sqrt().clamp_min(EPS)
            self.encoder.weight.copy_(unit.t() * encoder_norm)
            self.encoder.bias.zero_()
        if data_mean is not None:
            self.pre_bias.copy_(data_mean)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """The vector the fitting objective reads: fp32, L2-normalised unless ``"never"``.

        SAE arithmetic runs in fp32: reconstruction errors are small differences of large numbers.
        """
        x = x.float()
        if self.normalize_fit_input:
            x = F.normalize(x, dim=-1, eps=EPS)
        return x

    def prepare_code_input(self, x: torch.Tensor) -> torch.Tensor:
        """The vector the codes (the features a head reads) encode: fp32, L2-normalised only if ``"always"``.

        Example:
            >>> fit = TopKSparseAutoencoderFeatures(
            ...     4, FeatureLayerSettings(feature_dim=8, topk=2, sae_normalize_input="fit"))
            >>> x = torch.tensor([[3.0, 4.0, 0.0, 0.0]])
            >>> fit.prepare_code_input(x).norm().item(), fit.prepare_input(x).norm().item()
            (5.0, 1.0)
        """
        x = x.float()
        if self.normalize_input:
            x = F.normalize(x, dim=-1, eps=EPS)
        return x

    def encode_preactivations(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x - self.pre_bias, self.encoder.weight.float(), self.encoder.bias.float())

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.linear(codes, self.decoder.weight.float()) + self.pre_bias

    @staticmethod
    def normalized_mse(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Per-example squared error divided by the example's squared norm, averaged."""
        err = (reconstruction - x).pow(2).sum(-1)
        return (err / x.pow(2).sum(-1).clamp_min(EPS)).mean()

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - subclasses
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Autocast would run the encoder/decoder matmuls in bf16/fp16; keep the SAE in fp32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            fit_input = self.prepare_input(x)
            fit_codes = self.encode(fit_input)
            reconstruction, aux = self.decode_with_losses(fit_codes)
            aux = {
                "reconstruction_loss": self.normalized_mse(fit_input, reconstruction),
                **aux,
                **self.input_losses(fit_input),
            }
            # "fit": the loss terms are those of the normalised vector, the codes encode the raw one
            codes = (
                fit_codes
                if self.normalize_input == self.normalize_fit_input
                else self.encode(self.prepare_code_input(x))
            )
        return codes, aux

    def decode_with_losses(self, codes: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(decode(codes), extra_losses(codes))``; a kind may compute the two together."""
        return self.decode(codes), self.extra_losses(codes)

    def extra_losses(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def input_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms of the (prepared) input that the codes cannot give: the pre-activations below a
        JumpReLU threshold, a gated SAE's gate path (``jumprelu_sae.py``, ``gated_sae.py``)."""
        return {}

    def fit_forward(
        self, x: torch.Tensor, dead: torch.Tensor | None = None, *, prepared: bool = False
    ) -> FitForward:
        """The forward pass of a fitting loop: :meth:`forward`'s loss terms and a step's statistics.

        The terms (and their gradients) are those of :meth:`forward`; ``dead`` (a ``[feature_dim]``
        bool mask) asks a ``topk`` layer for the AuxK term too. ``prepared=True`` says ``x`` is
        already :meth:`prepare_input`'s output (a loop that prepares its matrix once). This base
        version runs the dense forward once and keeps the reconstruction for the statistics.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._fit_forward_prepared(x if prepared else self.prepare_input(x), dead)

    def _fit_forward_prepared(self, x: torch.Tensor, dead: torch.Tensor | None) -> FitForward:
        if dead is not None:
            raise ValueError(f"dead latents (the AuxK term) apply to 'topk' only, not {self.kind!r}")
        codes = self.encode(x)
        reconstruction, aux = self.decode_with_losses(codes)
        aux = {"reconstruction_loss": self.normalized_mse(x, reconstruction), **aux, **self.input_losses(x)}
        nonzero = codes.detach() != 0
        return FitForward(aux, nonzero.any(0), (reconstruction.detach() - x).pow(2).sum(), nonzero.sum())

    # -- upkeep during fitting -------------------------------------------------------------------

    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        """Remove from the decoder's gradient its part along each (unit) decoder column, in place.

        Call between ``backward`` and the optimiser step: with the columns renormalised after every
        step, the part of the gradient that would only change a column's length is wasted (sparsify's
        ``remove_gradient_parallel_to_decoder_directions``).

        Example:
            >>> sae = TopKSparseAutoencoderFeatures(16, FeatureLayerSettings(feature_dim=32, topk=4))
            >>> sae.decoder.weight.grad = torch.randn(16, 32)
            >>> sae.project_decoder_grad_()
            >>> bool((sae.decoder.weight.grad * sae.decoder.weight).sum(0).abs().max() < 1e-6)
            True
        """
        weight, grad = self.decoder.weight, self.decoder.weight.grad
        if grad is not None:
            grad.addcmul_(weight, torch.linalg.vecdot(grad, weight, dim=0), value=-1.0)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder column to unit norm, in place (after each optimiser step).

        Example:
            >>> sae = TopKSparseAutoencoderFeatures(16, FeatureLayerSettings(feature_dim=32, topk=4))
            >>> sae.normalize_decoder_()
            >>> torch.allclose(sae.decoder.weight.norm(dim=0), torch.ones(32))
            True
        """
        weight = self.decoder.weight
        if weight.t().is_contiguous():  # latent-major (init_for_fit_): each column is contiguous
            norms = torch.linalg.vector_norm(weight, dim=0)
        else:  # a column-wise dot product: ~4x faster than weight.norm(dim=0), a strided reduction, on CPU
            norms = torch.linalg.vecdot(weight, weight, dim=0).sqrt_()
        weight.div_(norms.clamp_min_(EPS))

    @torch.no_grad()
    def resample_dead_(
        self,
        dead: torch.Tensor,
        candidates: torch.Tensor,
        optimizer: torch.optim.Optimizer | None = None,
        generator: torch.Generator | None = None,
    ) -> int:
        """Re-initialise the ``dead`` latents toward inputs the SAE reconstructs badly (Anthropic, 2023).

        Following "Towards Monosemanticity" (Bricken et al., 2023, neuron resampling): each of the
        ``candidates`` (raw inputs) is drawn with probability proportional to its squared
        reconstruction loss (with ``generator``); a dead latent's decoder column becomes the drawn
        input (centred by the pre-bias, unit norm), its encoder row the same direction scaled to
        0.2 x the mean encoder-row norm of the live latents, its encoder bias zero. With the
        ``optimizer`` given, the Adam moments (``exp_avg``, ``exp_avg_sq``) of those rows/columns are
        reset too, so stale statistics do not undo the change. Returns how many latents were resampled.

        Example:
            >>> sae = SparseAutoencoderFeatures(16, FeatureLayerSettings(feature_dim=32))
            >>> dead = torch.zeros(32, dtype=torch.bool); dead[:3] = True
            >>> sae.resample_dead_(dead, torch.randn(64, 16), generator=torch.Generator().manual_seed(0))
            3
        """
        idx = dead.nonzero().flatten()
        if idx.numel() == 0:
            return 0
        x = self.prepare_input(candidates)
        err = (self.decode(self.encode(x)) - x).pow(2).sum(-1)
        weights = err.pow(2).double().cpu()
        if not torch.isfinite(weights).all() or weights.sum() <= 0:
            weights = torch.ones_like(weights)
        picks = torch.multinomial(
            weights, idx.numel(), replacement=idx.numel() > weights.numel(), generator=generator
        )
        directions = x[picks.to(x.device)] - self.pre_bias
        directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(EPS)

        alive = ~dead
        enc_norm = self.encoder.weight[alive].norm(dim=-1).mean() if alive.any() else torch.tensor(1.0)
        self.decoder.weight[:, idx] = directions.t().to(self.decoder.weight.dtype)
        self.encoder.weight[idx] = (directions * enc_norm * _RESAMPLE_ENCODER_SCALE).to(
            self.encoder.weight.dtype
        )
        self.encoder.bias[idx] = 0.0
        if optimizer is not None:
            for param, latent_dim in (
                (self.encoder.weight, 0),
                (self.encoder.bias, 0),
                (self.decoder.weight, 1),
            ):
                for moment, dim in _adam_moments(optimizer, param, latent_dim):
                    moment.index_fill_(dim, idx.to(moment.device), 0.0)
        return int(idx.numel())

    @torch.no_grad()
    def explained_variance(self, features: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
        """``1 - ||x - x_hat||^2 / ||x - mean(x)||^2`` over ``features`` (in the SAE's input space, i.e.
        after its optional L2 normalisation), plus ``l0`` (mean active latents per input) and
        ``dead_fraction`` (latents active on none of the inputs); computed in chunks of ``batch_size``.

        Example:
            >>> sae = TopKSparseAutoencoderFeatures(16, FeatureLayerSettings(feature_dim=32, topk=4))
            >>> stats = sae.explained_variance(torch.randn(100, 16))
            >>> sorted(stats), stats["l0"]
            (['dead_fraction', 'explained_variance', 'l0'], 4.0)
        """
        device = features.device
        err = torch.zeros((), dtype=torch.float64, device=device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        active = torch.zeros((), dtype=torch.float64, device=device)
        fired = torch.zeros(self.feature_dim, dtype=torch.bool, device=device)
        prepared = torch.cat([self.prepare_input(chunk) for chunk in features.split(batch_size)])
        mean = prepared.mean(0, keepdim=True)
        energy = prepared.double().pow(2).sum()
        for x in prepared.split(batch_size):
            step = self._fit_forward_prepared(x, None)
            err += step.squared_error.double()
            total += (x - mean).pow(2).sum().double()
            active += step.active.double()
            fired |= step.fired
        n = features.shape[0]
        # one row, or every row equal after the input preparation (their mean differs by an ulp): 0/0, not 1.0
        undefined = not float(total) > 1e-10 * float(energy)
        if undefined:
            warnings.warn(
                f"explained variance is undefined for these {n} input row(s): they have no variance "
                "(one row, all-zero or identical rows); reported as NaN",
                RuntimeWarning,
                stacklevel=2,
            )
        return {
            "explained_variance": float("nan") if undefined else float(1.0 - err / total),
            "l0": float(active / n),
            "dead_fraction": float(1.0 - fired.float().mean()),
        }


@register_feature_layer("sae")
class SparseAutoencoderFeatures(SparseAutoencoder):
    """ReLU sparse autoencoder with an L1 penalty; its non-negative codes are the features.

    The L1 term weights each code by its decoder column's norm, so the penalty cannot be dodged by
    shrinking codes and growing the decoder.

    Example:
        >>> settings = FeatureLayerSettings(feature_dim=64, sparsity_weight=1e-3)
        >>> codes, aux = SparseAutoencoderFeatures(16, settings)(torch.randn(2, 16))
        >>> bool((codes >= 0).all()), sorted(aux)
        (True, ['reconstruction_loss', 'sparsity_loss'])
    """

    def __init__(self, input_dim: int, settings: FeatureLayerSettings):
        super().__init__(input_dim, settings)
        self.loss_weights["sparsity_loss"] = float(self.settings.sparsity_weight)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.encode_preactivations(x))

    def extra_losses(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        weight = self.decoder.weight.float()
        # same value as weight.norm(dim=0), about 3x cheaper forward+backward on CPU
        decoder_norms = (weight * weight).sum(0).clamp_min(1e-12).sqrt()
        return {"sparsity_loss": (codes * decoder_norms).sum(-1).mean()}

    def decode_with_losses(self, codes: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # the value of decode() and extra_losses(), in one autograd node (see _DecodeWithDecoderNormL1)
        decoded, l1 = _DecodeWithDecoderNormL1.apply(codes, self.decoder.weight.float())
        return decoded + self.pre_bias, {"sparsity_loss": l1}


@register_feature_layer("topk")
class TopKSparseAutoencoderFeatures(SparseAutoencoder):
    """TopK sparse autoencoder: keep the ``topk`` largest pre-activations (then ReLU), zero the rest.

    Sparsity is set by construction, so there is no L1 term (as in the paper's post-hoc SAE:
    k = 256 of 2048 latents, normalised-MSE loss). ``topk=None`` means ``feature_dim // 8``.
    The codes are those of SAELens' ``topk`` architecture and of sparsify's ``SparseCoder``
    (ReLU then top-k keeps the same nonzero codes), so the three exchange checkpoints
    (:mod:`.sae_formats`).

    Example:
        >>> sae = TopKSparseAutoencoderFeatures(16, FeatureLayerSettings(feature_dim=64, topk=8))
        >>> codes, _ = sae(torch.randn(2, 16))
        >>> bool(((codes != 0).sum(-1) <= 8).all())
        True
    """

    latent_major_decoder = True

    def __init__(self, input_dim: int, settings: FeatureLayerSettings):
        super().__init__(input_dim, settings)
        self.k = self.settings.resolved_topk

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.encode_preactivations(x)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        # scatter keeps the op vectorised and differentiable w.r.t. the kept values
        return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))

    def sparse_encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The codes of a prepared input as ``(values, indices)`` (``[B, k]`` each) and the pre-activations.

        ``zeros.scatter(-1, indices, values)`` is :meth:`encode`'s output and the gradients of
        ``values`` equal those of the dense codes; ``pre`` (``[B, feature_dim]``) carries no graph.
        """
        values, indices, pre, _ = self._sparse_encode(x)
        return values, indices, pre

    def _sparse_encode(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`sparse_encode` and ``centred = x - pre_bias`` (no graph), which AuxK reads again."""
        weight, bias = self.encoder.weight.float(), self.encoder.bias.float()
        with torch.no_grad():
            centred = x - self.pre_bias
            pre = torch.addmm(bias, centred, weight.t())
            indices = topk_indices(pre, self.k)
        values = F.relu(GatheredPreactivations.apply(x, self.pre_bias, weight, bias, pre, indices, centred))
        return values, indices, pre, centred

    def sparse_decode(self, values: torch.Tensor, indices: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """:meth:`decode` of the codes ``zeros.scatter(-1, indices, values)``, by a gather of ``k``
        columns."""
        out = SparseDecode.apply(values, indices, self.decoder.weight.float().t())
        return out + self.pre_bias if bias else out

    def _fit_forward_prepared(self, x: torch.Tensor, dead: torch.Tensor | None) -> FitForward:
        # one node: encoder GEMM, top-k, sparse decode; a sparse backward (models/sae_kernels.py). In the
        # prepared input's dtype: fp32 from prepare_input (float64 only where a caller prepares it so)
        operands = (
            x,
            self.pre_bias.to(x.dtype),
            self.encoder.weight.to(x.dtype),
            self.encoder.bias.to(x.dtype),
            self.decoder.weight.to(x.dtype),
            self.k,
        )
        dead_ids = dead.nonzero().flatten() if dead is not None else None
        if dead_ids is not None and dead_ids.numel():
            # OpenAI's AuxK (Gao et al. 2024, App. B.1, as in sparsify), in the same node: the k_aux =
            # input_dim // 2 largest pre-activations among the dead latents reconstruct the residual
            # x - x_hat (no pre-bias), scaled by min(n_dead / k_aux, 1) and normalised like the
            # reconstruction loss, so dead latents get a gradient without touching the codes
            k_aux = max(1, self.input_dim // 2)
            scale = min(dead_ids.numel() / k_aux, 1.0)
            squared, aux_squared, values, indices, pre, centred, error = TopKReconstructionWithAuxK.apply(
                *operands, dead_ids, min(k_aux, dead_ids.numel())
            )
        else:
            squared, values, indices, pre, centred, error = TopKReconstruction.apply(*operands)
            aux_squared = None
        norms = torch.linalg.vector_norm(x, dim=-1).square().clamp_min(EPS)
        aux = {"reconstruction_loss": (squared / norms).mean()}
        if aux_squared is not None:
            aux["auxk_loss"] = scale * (aux_squared / norms).mean()
        positive = values > 0
        # latents of positive codes; the others are sent to a spare slot past the end. No boolean
        # indexing: it needs a nonzero(), a sync and three kernels more per step
        fired = torch.zeros(self.feature_dim + 1, dtype=torch.bool, device=x.device)
        fired.index_fill_(0, indices.masked_fill(~positive, self.feature_dim).flatten(), True)
        return FitForward(aux, fired[: self.feature_dim], squared.detach().sum(), positive.sum())


def _adam_moments(optimizer: torch.optim.Optimizer, param: torch.Tensor, latent_dim: int):
    """``(moment, latent dim)`` for each Adam moment (``exp_avg``, ``exp_avg_sq``) ``optimizer`` keeps
    for ``param``: under ``param`` itself, or under a parameter that is its transpose on the same
    storage (how the fitting loop hands a latent-major decoder to Adam, ``cached/sae_fitting.py``),
    whose latent dimension is the other one."""
    for group in optimizer.param_groups:
        for held in group["params"]:
            if held is param:
                dim = latent_dim
            elif (
                held.dim() == param.dim() == 2
                and held.data_ptr() == param.data_ptr()
                and held.shape == param.shape[::-1]
                and held.stride() == param.stride()[::-1]
            ):
                dim = 1 - latent_dim
            else:
                continue
            state = optimizer.state.get(held, {})
            for name in ("exp_avg", "exp_avg_sq"):
                if name in state:
                    yield state[name], dim
