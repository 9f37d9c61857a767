"""The sparse kernels of a TopK SAE's training step: what :meth:`TopKSparseAutoencoderFeatures.fit_forward
<hf_monosem.models.sae.TopKSparseAutoencoderFeatures.fit_forward>` runs instead of the dense layer.

A TopK step's only dense work is the encoder's forward GEMM ``[B, D] x [D, M]``. Everything after the
top-k has ``B * k`` nonzeros: the decoding is a gather of ``k`` decoder rows per input
(``embedding_bag``), the code values' gradient a dot product per nonzero (a sampled product, SDDMM), and
both weight gradients are sparse ``[M, B] x [B, D]`` products (``embedding_bag`` with a bag per latent;
one latent-major layout per step, shared), so no ``[B, M]`` gradient is ever formed (EleutherAI's
sparsify does the same with Triton kernels on GPU).
:class:`TopKReconstruction` is that step as one autograd node, :class:`TopKReconstructionWithAuxK` the
same with the AuxK term of dead latents inside it (one set of sparse products for both terms);
:class:`GatheredPreactivations` and :class:`SparseDecode` are its two halves on their own
(``sparse_encode`` / ``sparse_decode``).
The gradients equal those of the dense expressions (``tests/models/test_sae_kernels.py``).

Same-folder imports only (remote-code export copies this folder next to the weights).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "GatheredPreactivations",
    "SparseDecode",
    "TopKReconstruction",
    "TopKReconstructionWithAuxK",
    "largest_positions",
    "latent_major_sum",
    "per_entry_dot",
    "topk_indices",
]


def autocast_off_backward(backward):
    """Run a custom Function's backward with autocast off: ``loss.backward()`` called inside a caller's
    ``torch.autocast`` block runs CPU backwards under it, and the sparse products here have no bf16
    kernels (``NotImplementedError: addmm_out_sparse_csr``) and must stay fp32 anyway."""

    @functools.wraps(backward)
    def wrapped(ctx, *grads):
        device_type = next((g.device.type for g in grads if isinstance(g, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device_type, enabled=False), torch.autocast("cpu", enabled=False):
            return backward(ctx, *grads)

    return wrapped


def topk_indices(pre: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of the ``k`` largest entries of each row (in no particular order), as ``pre.topk``.

    On CPU, when torch's top-k would take its slow path (``64 k > n``, a full ``nth_element`` over
    (value, index) pairs) and ``16 k <= n``, in two cheaper stages over strided groups of ``g``
    entries: the ``k`` groups with the largest maxima hold the row's ``k`` largest entries (a group
    left out has ``k`` larger group maxima above its own), so the top ``k`` of their ``g k`` entries is
    the row's. Each stage is one :func:`largest_positions`, over ``n / g`` and ``g k`` entries: ``g = 8``
    from ``n >= 40 k`` on, else 4 (the sum is smallest near ``g = sqrt(n / k)``; measured at
    n = 1536, k = 32: 8 is ~15% faster than 4, and at n = 1024 4 is ~10% faster). The same set as
    ``pre.topk`` (up to which of exactly tied entries is kept); 2-3x faster at n = 1536, k = 32.

    Example:
        >>> pre = torch.randn(3, 256)
        >>> torch.equal(topk_indices(pre, 8).sort(-1).values, pre.topk(8).indices.sort(-1).values)
        True
    """
    n = pre.shape[-1]
    if pre.device.type != "cpu" or n % 4 or not (16 * k <= n < 64 * k):
        return pre.topk(k, dim=-1, sorted=False).indices
    size = 8 if n % 8 == 0 and n >= 40 * k else 4
    groups = n // size
    # group g = entries g, g + groups, g + 2 groups, ...: one vectorised max over `size` slices
    members = pre.view(pre.shape[0], size, groups)
    best = largest_positions(members.amax(1), k)  # [B, k] groups
    # the entries of each chosen group, [B, size k] (position i * k + j: entry i of group best[:, j])
    candidates = members.gather(2, best.unsqueeze(1).expand(-1, size, -1)).flatten(1)
    chosen = largest_positions(candidates, k)
    return torch.div(chosen, k, rounding_mode="floor") * groups + best.gather(1, chosen % k)


def largest_positions(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The positions of the ``k`` largest entries of each row of a ``[B, n]`` matrix (as
    ``scores.topk(k).indices``, up to order: ascending within a row here).

    The ``k``-th largest value of each row comes from NumPy's values-only introselect
    (``np.partition``, ~4x faster than ``torch.topk``, which selects (value, index) pairs), and the
    positions are those at or above it (``np.flatnonzero``: ~2-3x faster than ``torch.nonzero`` on
    these shapes): exactly ``k`` per row unless a row's ``k``-th value is tied (then, off the CPU, or for
    a dtype NumPy lacks, ``torch.topk``). A row holds at least ``k`` entries at or above its ``k``-th
    largest, so ``B * k`` of them in all means exactly ``k`` in every row; a NaN row has none.

    Example:
        >>> largest_positions(torch.tensor([[0.1, 0.9, 0.5, 0.7], [3.0, 1.0, 2.0, 0.0]]), 2)
        tensor([[1, 3],
                [0, 2]])
    """
    rows, n = scores.shape
    if scores.device.type != "cpu" or scores.dtype not in (torch.float32, torch.float64) or not 0 < k < n:
        return scores.topk(k, dim=-1, sorted=False).indices
    values = scores.detach().numpy()
    kth = np.partition(values, n - k, axis=1)[:, n - k]
    flat = np.flatnonzero(values >= kth[:, None])  # row-major: each row's positions ascend, rows in order
    if flat.shape[0] != rows * k:  # a tie at some row's k-th value (or a NaN row): the exact path
        return scores.topk(k, dim=-1, sorted=False).indices
    return torch.from_numpy(flat.reshape(rows, k) % n)


def _latent_major_layout(
    indices: torch.Tensor, num_latents: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CSR layout of the ``[num_latents, B]`` matrix with a nonzero at ``(indices[b, j], b)``:
    ``(crow, columns, order)``, ``order`` the flat positions of the entries in latent-major order.

    Built once per ``indices`` (the encoder's and the decoder's backward share it). On CPU the order is
    numpy's stable radix sort of the latent ids as uint16 (~0.2 ms for 32k entries): torch's int64
    sort takes ~1 ms on one thread but ~160 ms on two threads of a busy machine. Within a latent's row
    the columns (inputs) ascend: the sort is stable (a latent a row holds twice, as AuxK's entries may
    repeat a code's, gives two entries, which every product here sums).
    """
    cached = getattr(indices, "_latent_major_layout", None)
    if cached is not None:
        return cached
    flat = indices.reshape(-1)
    if flat.device.type == "cpu" and num_latents <= 65536:
        order = torch.from_numpy(np.argsort(flat.numpy().astype(np.uint16), kind="stable"))
    else:
        order = torch.argsort(flat, stable=True)
    crow = torch.zeros(num_latents + 1, dtype=torch.int64, device=flat.device)
    torch.cumsum(torch.bincount(flat, minlength=num_latents), 0, out=crow[1:])
    layout = (crow, torch.div(order, indices.shape[1], rounding_mode="floor"), order)
    indices._latent_major_layout = layout  # the autograd graph keeps indices alive for every backward
    return layout


def latent_major_sum(
    indices: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, num_latents: int
) -> torch.Tensor:
    """``out[m] = sum over (b, j) with indices[b, j] == m of values[b, j] * rows[b]``: ``[num_latents, D]``.

    The weight gradient of a gather/scatter of ``k`` latents per row: ``B * k * D`` multiply-adds, no
    ``[B, k, D]`` temporary (sparsify's ``index_add_`` of per-entry contributions) and no dense
    ``[B, num_latents]`` matrix. One ``embedding_bag`` over ``rows`` with a bag per latent (its
    entries in the latent-major layout): it writes each output row once, about twice as fast on CPU
    as the same product through a sparse CSR matrix (which zero-fills and copies its output first).

    Example:
        >>> indices, values, rows = torch.tensor([[0, 2], [2, 1]]), torch.ones(2, 2), torch.eye(2)
        >>> latent_major_sum(indices, values, rows, 3)
        tensor([[1., 0.],
                [0., 1.],
                [1., 1.]])
    """
    if rows.device.type not in ("cpu", "cuda"):  # pragma: no cover - the plain scatter elsewhere
        contributions = (values.unsqueeze(-1) * rows.unsqueeze(1)).reshape(-1, rows.shape[1])
        out = rows.new_zeros(num_latents, rows.shape[1])
        return out.index_add_(0, indices.reshape(-1), contributions.to(rows.dtype))
    return _layout_sum(_latent_major_layout(indices, num_latents), values.reshape(-1), rows)


def per_entry_dot(grad: torch.Tensor, table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``out[b, j] = grad[b] . table[indices[b, j]]`` (``[B, k]``) without materialising ``table[indices]``.

    A sampled dense product (SDDMM) over the latent-major CSR pattern of ``indices`` (the layout the
    weight gradients share), its values put back in ``[B, k]`` order; ~2x faster on CPU than
    ``embedding_bag``'s per-sample-weights backward.

    Example:
        >>> grad, table = torch.randn(2, 4), torch.randn(5, 4)
        >>> indices = torch.tensor([[3, 0], [1, 3]])
        >>> expected = torch.einsum("bkd,bd->bk", table[indices], grad)
        >>> torch.allclose(per_entry_dot(grad, table, indices), expected)
        True
    """
    batch, k = indices.shape
    if grad.device.type not in ("cpu", "cuda"):  # pragma: no cover - no sparse CSR kernels there
        return torch.einsum("bkd,bd->bk", table[indices], grad)
    return _sampled_dots(_latent_major_layout(indices, table.shape[0]), table, grad).view(batch, k)


def _layout_sum(layout, values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``out[m] = sum over the entries e of latent m of values[e] * rows[column of e]``: ``[M, D]``, one
    ``embedding_bag`` with a bag per latent over a layout of :func:`_latent_major_layout`'s form
    (``values`` in entry order)."""
    crow, columns, order = layout
    weights = values.index_select(0, order).to(rows.dtype)
    return F.embedding_bag(columns, rows, crow[:-1], mode="sum", per_sample_weights=weights)


def _sampled_dots(layout, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``out[e] = rows[column of e] . table[latent of e]`` for every entry of a layout of
    :func:`_latent_major_layout`'s form, in entry order: a sampled dense product (SDDMM)."""
    crow, columns, order = layout
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        pattern = torch.sparse_csr_tensor(
            crow,
            columns,
            rows.new_zeros(columns.numel()),
            (table.shape[0], rows.shape[0]),
            check_invariants=False,
        )
        sampled = torch.sparse.sampled_addmm(pattern, table, rows.t(), beta=0.0).values()
    return torch.empty_like(sampled).index_copy_(0, order, sampled)


class GatheredPreactivations(torch.autograd.Function):
    """``pre.gather(1, indices)`` where ``pre = centred @ weight.T + bias``, ``centred = x - pre_bias``,
    was computed without a graph.

    The backward reaches only the gathered latents: ``weight``'s rows and ``bias``'s entries at
    ``indices``, and ``pre_bias`` (``x`` too if it needs a gradient) through them; the gradients equal
    those of the dense expression.
    """

    @staticmethod
    def forward(ctx, x, pre_bias, weight, bias, pre, indices, centred):
        # centred = x - pre_bias, as the forward computed it: the weight gradient reads it again
        ctx.save_for_backward(weight, indices, centred)
        return pre.gather(1, indices)

    @staticmethod
    @autocast_off_backward
    def backward(ctx, grad):
        weight, indices, centred = ctx.saved_tensors
        grads = _encoder_grads(ctx.needs_input_grad, grad, indices, weight, centred)
        return (*grads, None, None, None)


def _encoder_grads(needs, grad, indices, weight, centred):
    """``(grad_x, grad_pre_bias, grad_weight, grad_bias)`` of ``sum_bj grad[b, j] pre[b, indices[b, j]]``
    with ``pre = (x - pre_bias) @ weight.T + bias`` (``None`` where ``needs`` says no)."""
    grad_x = grad_pre_bias = grad_weight = grad_bias = None
    latent_sums = torch.bincount(indices.reshape(-1), weights=grad.reshape(-1), minlength=weight.shape[0])
    latent_sums = latent_sums.to(weight.dtype)
    if needs[0]:
        grad_x = F.embedding_bag(indices, weight, per_sample_weights=grad.to(weight.dtype), mode="sum")
    if needs[1]:  # d/d pre_bias of sum_bj g_bj (W (x_b - p))_ij = -(sum_m s_m W_m)
        grad_pre_bias = -(latent_sums @ weight)
    if needs[2]:
        grad_weight = latent_major_sum(indices, grad, centred, weight.shape[0])
    if needs[3]:
        grad_bias = latent_sums
    return grad_x, grad_pre_bias, grad_weight, grad_bias


class SparseDecode(torch.autograd.Function):
    """``sum_j values[:, j] * decoder_t[indices[:, j]]`` (``embedding_bag``), for a ``[M, D]`` decoder.

    Equal to ``codes @ decoder_t`` with the dense codes, in ``B * k * D`` instead of ``B * M * D``.
    """

    @staticmethod
    def forward(ctx, values, indices, decoder_t):
        decoder_t = decoder_t.contiguous()
        ctx.save_for_backward(values, indices, decoder_t)
        return F.embedding_bag(indices, decoder_t, per_sample_weights=values.to(decoder_t.dtype), mode="sum")

    @staticmethod
    @autocast_off_backward
    def backward(ctx, grad):
        values, indices, decoder_t = ctx.saved_tensors
        grad_values = grad_decoder = None
        if ctx.needs_input_grad[0]:
            grad_values = per_entry_dot(grad, decoder_t, indices).to(values.dtype)
        if ctx.needs_input_grad[2]:
            grad_decoder = latent_major_sum(indices, values, grad, decoder_t.shape[0])
        return grad_values, None, grad_decoder


class TopKReconstruction(torch.autograd.Function):
    """A TopK SAE's training forward in one node: per input, the squared reconstruction error
    ``||decode(topk(relu(encode(x)))) - x||^2``, for ``encode(x) = (x - pre_bias) @ enc_weight.T +
    enc_bias`` and ``decode(c) = c @ dec_weight.T + pre_bias``.

    ``apply(x, pre_bias, enc_weight, enc_bias, dec_weight, k)`` returns ``(squared, values, indices,
    pre, centred, error)``: ``squared`` (``[B]``) carries the gradient; the others are the step's by-products
    (no gradient): the codes as ``values`` / ``indices`` (``[B, k]``), the pre-activations ``pre`` and
    ``centred = x - pre_bias`` (which AuxK reads again), and ``error = x_hat - x``.

    The forward is the encoder GEMM, the top-k, a gather of the ``k`` decoder rows per input; the
    backward only sparse products (module docstring), in place of the dense graph's ``[B, M]``
    gradient and two ``[B, M] x [M, D]``-sized GEMMs. The decoder is read as ``dec_weight.T``
    (``[M, D]``): stored latent-major (column-major ``dec_weight``) it needs no copy, and its gradient
    comes back in that layout.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> x, enc, dec = torch.randn(5, 8), torch.randn(32, 8), torch.randn(8, 32, requires_grad=True)
        >>> out = TopKReconstruction.apply(x, torch.zeros(8), enc, torch.zeros(32), dec, 4)
        >>> squared, values, indices = out[:3]
        >>> codes = torch.zeros(5, 32).scatter(1, indices, values)
        >>> torch.allclose(squared, (codes @ dec.T - x).pow(2).sum(-1))
        True
    """

    @staticmethod
    def forward(ctx, x, pre_bias, enc_weight, enc_bias, dec_weight, k):
        squared, values, indices, pre, centred, error, table = _reconstruction_forward(
            x, pre_bias, enc_weight, enc_bias, dec_weight, k
        )
        ctx.save_for_backward(centred, enc_weight, table, indices, values, error)
        ctx.mark_non_differentiable(values, indices, pre, centred, error)
        ctx.set_materialize_grads(False)  # no [B, M] zeros for the by-products' (absent) gradients
        return squared, values, indices, pre, centred, error

    @staticmethod
    @autocast_off_backward
    def backward(ctx, grad_squared, *unused):
        return (*_reconstruction_backward(ctx.needs_input_grad[:5], grad_squared, *ctx.saved_tensors), None)


def _reconstruction_forward(x, pre_bias, enc_weight, enc_bias, dec_weight, k):
    """:class:`TopKReconstruction`'s forward: ``(squared, values, indices, pre, centred, error, table)``,
    ``table`` the decoder as ``[M, D]``."""
    centred = x - pre_bias
    pre = torch.addmm(enc_bias, centred, enc_weight.t())
    indices = topk_indices(pre, k)
    values = pre.gather(1, indices).relu_()
    table = dec_weight.t()  # [M, D]
    table = table if table.is_contiguous() else table.contiguous()
    # x_hat - x = (decoded + pre_bias) - (centred + pre_bias)
    error = F.embedding_bag(indices, table, per_sample_weights=values, mode="sum").sub_(centred)
    squared = torch.linalg.vector_norm(error, dim=-1).square_()  # one pass, no [B, D] temporary
    return squared, values, indices, pre, centred, error, table


def _reconstruction_backward(needs, grad_squared, centred, enc_weight, table, indices, values, error):
    """The gradients of :class:`TopKReconstruction` for ``(x, pre_bias, enc_weight, enc_bias, dec_weight)``
    (``None`` where ``needs`` says no, or when the loss does not read ``squared``)."""
    if grad_squared is None:  # the loss does not read the error
        return None, None, None, None, None
    grad_error = error * (2 * grad_squared).unsqueeze(1)  # d squared / d x_hat, [B, D]
    grad_dec_weight = None
    if needs[4]:  # dec_weight
        grad_dec_weight = latent_major_sum(indices, values, grad_error, table.shape[0]).t()
    # through the codes: relu's gradient is zero where the kept pre-activation is not positive
    grad_values = per_entry_dot(grad_error, table, indices).mul_(values > 0)
    return (*_input_grads(needs[:4], grad_values, indices, enc_weight, centred, grad_error), grad_dec_weight)


def _input_grads(needs, grad_codes, indices, enc_weight, centred, grad_error):
    """``(grad_x, grad_pre_bias, grad_enc_weight, grad_enc_bias)`` of a reconstruction node (``None``
    where ``needs`` says no): through the codes ``indices`` (their gradients ``grad_codes``, read from
    the centred input) and directly, since ``error = decoded - x + pre_bias`` (``grad_error`` is the
    gradient of the error)."""
    grad_x, grad_pre_bias, grad_enc_weight, grad_enc_bias = _encoder_grads(
        needs, grad_codes, indices, enc_weight, centred
    )
    if needs[0]:
        grad_x = grad_x - grad_error
    if needs[1]:
        grad_pre_bias = grad_pre_bias + grad_error.sum(0)
    return grad_x, grad_pre_bias, grad_enc_weight, grad_enc_bias


class TopKReconstructionWithAuxK(torch.autograd.Function):
    """:class:`TopKReconstruction` with OpenAI's AuxK term in the same node (Gao et al. 2024, App. B.1):
    the ``k_aux`` largest pre-activations among the ``dead_ids`` latents (ReLU) decode the residual, and
    ``aux_squared[b] = ||decode_aux(x_b) - (x_b - x_hat_b)||^2`` with the residual held constant.

    ``apply(x, pre_bias, enc_weight, enc_bias, dec_weight, k, dead_ids, k_aux)`` returns ``(squared,
    aux_squared, values, indices, pre, centred, error)``. The backward runs the main and the AuxK entries
    through one set of sparse products (one latent-major layout over both: the decoder's gradient reads
    the stacked ``[2B, D]`` error gradients, the encoder's the shared centred input), so AuxK adds no
    dense ``[M, D]`` gradient of its own for autograd to sum; the gradients equal those of the two-node
    formulation (``tests/models/test_sae_kernels.py``).
    """

    @staticmethod
    def forward(ctx, x, pre_bias, enc_weight, enc_bias, dec_weight, k, dead_ids, k_aux):
        squared, values, indices, pre, centred, error, table = _reconstruction_forward(
            x, pre_bias, enc_weight, enc_bias, dec_weight, k
        )
        batch = x.shape[0]
        if k_aux >= dead_ids.numel():  # every dead latent, in every row: nothing to select
            aux_indices = dead_ids.unsqueeze(0).expand(batch, -1).contiguous()
        else:
            aux_indices = dead_ids[largest_positions(pre.index_select(1, dead_ids), k_aux)]
        aux_values = pre.gather(1, aux_indices).relu_()
        # decoded (no pre-bias) minus the residual x - x_hat = decoded + error
        aux_error = F.embedding_bag(aux_indices, table, per_sample_weights=aux_values, mode="sum").add_(error)
        aux_squared = torch.linalg.vector_norm(aux_error, dim=-1).square_()
        ctx.save_for_backward(
            centred, enc_weight, table, indices, values, error, aux_indices, aux_values, aux_error
        )
        ctx.mark_non_differentiable(values, indices, pre, centred, error)
        ctx.set_materialize_grads(False)
        return squared, aux_squared, values, indices, pre, centred, error

    @staticmethod
    @autocast_off_backward
    def backward(ctx, grad_squared, grad_aux_squared, *unused):
        centred, enc_weight, table, indices, values, error, aux_indices, aux_values, aux_error = (
            ctx.saved_tensors
        )
        if grad_aux_squared is None:  # the loss does not read the AuxK term: the main node's backward
            return (
                *_reconstruction_backward(ctx.needs_input_grad[:5], grad_squared, *ctx.saved_tensors[:6]),
                None,
                None,
                None,
            )
        batch, k = indices.shape
        if grad_squared is None:
            grad_squared = torch.zeros_like(grad_aux_squared)
        grad_error = error * (2 * grad_squared).unsqueeze(1)
        grad_aux_error = aux_error * (2 * grad_aux_squared).unsqueeze(1)
        # each row's entries of both terms: its k codes, then its k_aux AuxK codes. The encoder reads
        # them all from the row's centred input (its layout is the one of `both`); the decoder from the
        # row of the stacked error gradients [grad_error; grad_aux_error] each term differentiates
        both = torch.cat([indices, aux_indices], 1)
        codes = torch.cat([values, aux_values], 1)
        crow, row_of, order = _latent_major_layout(both, table.shape[0])
        in_aux = order.remainder(both.shape[1]) >= k
        decoder_layout = (crow, row_of + batch * in_aux, order)
        stacked = torch.cat([grad_error, grad_aux_error])
        grad_dec_weight = None
        if ctx.needs_input_grad[4]:  # dec_weight
            grad_dec_weight = _layout_sum(decoder_layout, codes.reshape(-1), stacked).t()
        # through the codes (relu's gradient: zero where the kept pre-activation is not positive); the
        # AuxK residual is a constant, so only the main error reaches x and the pre-bias directly
        grad_codes = _sampled_dots(decoder_layout, table, stacked).view_as(codes).mul_(codes > 0)
        grads = _input_grads(ctx.needs_input_grad[:4], grad_codes, both, enc_weight, centred, grad_error)
        return *grads, grad_dec_weight, None, None, None
