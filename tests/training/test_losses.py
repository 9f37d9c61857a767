import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hf_monosem.training.losses import (
    LOSS_TYPES,
    gather_with_grad,
    generalized_cross_entropy,
    info_nce_loss,
    l1_sparsity_loss,
    nonnegativity_loss,
    robust_classification_loss,
    symmetric_cross_entropy,
)


def reference_nt_xent(a, b, temperature):
    """Loop version of SimCLR's NT-Xent: anchor k, positive its other view, 2N-2 negatives."""
    z = F.normalize(torch.cat([a, b]), dim=-1)
    n = a.shape[0]
    losses = []
    for k in range(2 * n):
        positive = (k + n) % (2 * n)
        sims = torch.stack([z[k] @ z[j] / temperature for j in range(2 * n) if j != k])
        pos_index = positive if positive < k else positive - 1
        losses.append(-(sims[pos_index] - torch.logsumexp(sims, 0)))
    return torch.stack(losses).mean()


def test_info_nce_matches_reference_and_rewards_aligned_views():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert torch.allclose(info_nce_loss(a, b, 0.2), reference_nt_xent(a, b, 0.2), atol=1e-5)
    assert torch.allclose(info_nce_loss(a, b, 0.5), reference_nt_xent(a, b, 0.5), atol=1e-5)
    aligned = info_nce_loss(a, a + 0.01 * torch.randn(5, 7, generator=g))
    assert aligned < info_nce_loss(a, b)
    # scale-free (cosine similarity) and differentiable
    assert torch.allclose(info_nce_loss(3 * a, 3 * b), info_nce_loss(a, b), atol=1e-5)
    a.requires_grad_(True)
    loss, accuracy = info_nce_loss(a, b, return_accuracy=True)
    loss.backward()
    assert a.grad is not None and 0 <= float(accuracy) <= 1
    with pytest.raises(ValueError, match="same shape|one shape"):
        info_nce_loss(a, b[:3])


def test_info_nce_with_nonnegative_features_is_finite():
    z = torch.relu(torch.randn(6, 8))
    z[0] = 0  # an all-zero projector output must not give NaN
    assert torch.isfinite(info_nce_loss(z, torch.relu(torch.randn(6, 8))))


def test_gather_without_process_group_is_identity():
    t = torch.randn(3, 2)
    assert gather_with_grad(t) is t


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import importlib.util, os, sys
    import torch, torch.distributed as dist, torch.multiprocessing as mp

    def load_losses():
        spec = importlib.util.spec_from_file_location("losses", sys.argv[1])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def worker(rank, world, ports, out):
        # rank 0 opens the store on a port the OS picks and hands it to rank 1 (no free port is picked,
        # released and hoped to be still free when the store binds it)
        if rank == 0:
            store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False)
            ports.put(store.port)
        else:
            store = dist.TCPStore("127.0.0.1", ports.get(), world, is_master=False)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
        torch.set_num_threads(1)
        losses = load_losses()
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(world * 3, 5, generator=g), torch.randn(world * 3, 5, generator=g)
        mine = slice(rank * 3, rank * 3 + 3)
        la, lb = a[mine].clone().requires_grad_(True), b[mine].clone().requires_grad_(True)
        loss = losses.info_nce_loss(la, lb, 0.2)
        (loss / world).backward()  # DDP averages gradients over processes
        torch.save({"loss": loss.detach(), "ga": la.grad, "gb": lb.grad}, f"{out}/rank{rank}.pt")
        dist.destroy_process_group()

    if __name__ == "__main__":
        # fork: the workers reuse the imported torch instead of importing it again
        ports = mp.get_context("fork").SimpleQueue()
        mp.start_processes(worker, args=(2, ports, sys.argv[2]), nprocs=2, start_method="fork")
    """
)


def test_info_nce_gathers_negatives_with_gradients_across_processes(tmp_path):
    script = tmp_path / "dist_info_nce.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    import hf_monosem.training.losses as losses_module

    losses_file = Path(losses_module.__file__)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(script), str(losses_file), str(tmp_path)],
        check=True,
        env=env,
        timeout=120,
    )
    # one process holding the whole batch: same anchors, positives and 2N-2 negatives
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    a.requires_grad_(True)
    b.requires_grad_(True)
    a_view = torch.cat([a[:3], a[3:]])
    # rank r's anchors are rows [a_r; b_r]; the single-process equivalent orders anchors the same way
    # and its mean over 12 anchors equals the mean of the two processes' 6-anchor means
    full = info_nce_loss(a_view, b, 0.2)
    full.backward()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.allclose((results[0]["loss"] + results[1]["loss"]) / 2, full.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([r["ga"] for r in results]), a.grad, atol=1e-6)
    assert torch.allclose(torch.cat([r["gb"] for r in results]), b.grad, atol=1e-6)


def test_generalized_cross_entropy():
    logits = torch.randn(8, 4)
    labels = torch.randint(0, 4, (8,))
    p_y = F.softmax(logits, -1)[torch.arange(8), labels]
    assert torch.allclose(generalized_cross_entropy(logits, labels, q=1.0), (1 - p_y).mean())
    # q -> 0 recovers cross-entropy
    assert torch.allclose(
        generalized_cross_entropy(logits, labels, q=1e-4), F.cross_entropy(logits, labels), atol=1e-3
    )
    ignored = labels.clone()
    ignored[:3] = -100
    assert torch.allclose(
        generalized_cross_entropy(logits, ignored), generalized_cross_entropy(logits[3:], labels[3:])
    )
    with pytest.raises(ValueError, match="q="):
        generalized_cross_entropy(logits, labels, q=0)


def test_symmetric_cross_entropy():
    logits = torch.randn(8, 4)
    labels = torch.randint(0, 4, (8,))
    p = F.softmax(logits, -1)
    onehot = F.one_hot(labels, 4).float().clamp(1e-4, 1.0)
    rce = -(p * onehot.log()).sum(-1).mean()
    expected = 0.1 * F.cross_entropy(logits, labels) + 1.0 * rce
    assert torch.allclose(symmetric_cross_entropy(logits, labels), expected, atol=1e-5)
    assert torch.allclose(
        symmetric_cross_entropy(logits, labels, alpha=6.0, beta=0.1),
        6.0 * F.cross_entropy(logits, labels) + 0.1 * rce,
        atol=1e-5,
    )


def test_robust_loss_by_name_and_label_checks():
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert LOSS_TYPES == ("ce", "gce", "sce")
    assert torch.allclose(robust_classification_loss("ce", logits, labels), F.cross_entropy(logits, labels))
    assert torch.allclose(
        robust_classification_loss("gce", logits, labels, gce_q=0.5),
        generalized_cross_entropy(logits, labels, 0.5),
    )
    with pytest.raises(ValueError, match=r"loss_type='focal'.*'ce', 'gce', 'sce'"):
        robust_classification_loss("focal", logits, labels)
    with pytest.raises(ValueError, match="class ids"):
        generalized_cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="integer class ids"):
        symmetric_cross_entropy(logits, torch.rand(4))
    all_ignored = torch.full((4,), -100)
    assert float(generalized_cross_entropy(logits, all_ignored)) == 0.0


def test_sparsity_terms():
    f = torch.tensor([[1.0, -2.0, 0.0], [0.0, 0.0, 3.0]])
    assert float(l1_sparsity_loss(f)) == pytest.approx(3.0)
    assert float(nonnegativity_loss(f)) == pytest.approx(1.0)
    assert float(nonnegativity_loss(f.abs())) == 0.0
