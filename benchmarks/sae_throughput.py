"""TopK SAE training throughput and quality: ``train_sae_layer`` against EleutherAI's sparsify, side by side.

Both fit a TopK SAE on the same L2-normalised feature matrix with the same settings (width, k, batch,
epochs, Adam with a constant learning rate, the same thread count), in one process. The repeats
alternate which trainer runs first, so that load changes on the machine hit both alike; the medians
over the repeats are compared. For each fit: rows/s (rows x epochs / wall time of the whole fit,
including whatever the trainer does besides the steps) and the FVU of the final weights on all rows
(``sum ||x - x_hat||^2 / sum ||x - mean||^2``, measured afterwards, outside the timing). The ratio is
ours / sparsify (> 1: we are faster).

The sparsify side is its ``SparseCoder`` (1.3.3, eager path: ``SPARSIFY_DISABLE_TRITON=1``, no
Triton on CPU anyway) driven by the steps of its ``Trainer`` for ``loss_fn="fvu"``: decoder bias set
to the data mean, decoder renormalised before each forward, FVU loss, the decoder gradient made
orthogonal to the decoder rows, Adam step. Its ``Trainer`` itself cannot run here (it trains on a
language model's hookpoints); its AuxK term is off by default (``auxk_alpha=0``) and its 1000-step
learning-rate warm-up is left out (a 60-step fit would never leave it). Ours is
``hf_monosem.cached.train_sae_layer`` with its defaults (AuxK for dead latents, none of which die in
3 epochs here).

The data: ``--data synthetic`` (default) is a MiniLM-like matrix made here (384-d, a shared offset
plus sparse positive mixtures of 6144 directions with power-law frequencies, plus noise);
``--data minilm`` extracts all-MiniLM-L6-v2 mean-pooled embeddings of the offline tweets (the
``assets`` extra; cached under ``--cache-dir``, slow the first time); ``--features PATH`` reads a
``[N, D]`` tensor saved with ``torch.save``.

Needs the benchmark extra: ``pip install -e ".[interop]"`` (eai-sparsify).

Usage::

    python benchmarks/sae_throughput.py                      # 20k x 384, width 1536, k 32, 3 epochs, 2 threads
    python benchmarks/sae_throughput.py --repeats 7 --data minilm
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # before sparsify is imported: its eager decoder

import torch
import torch.nn.functional as F

from hf_monosem.cached import train_sae_layer
from hf_monosem.models import FeatureLayerSettings, build_feature_layer


def synthetic_features(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    """MiniLM-like vectors: a shared offset, sparse positive mixtures of many directions, noise."""
    g = torch.Generator().manual_seed(seed)
    atoms, active = 6144, 12
    dictionary = F.normalize(torch.randn(atoms, dim, generator=g), dim=-1)
    frequency = 1.0 / torch.arange(1, atoms + 1).float() ** 0.8
    chosen = torch.multinomial(frequency.expand(rows, -1), active, replacement=False, generator=g)
    weights = torch.exp(0.5 * torch.randn(rows, active, generator=g))
    x = torch.zeros(rows, atoms).scatter_(1, chosen, weights) @ dictionary
    offset = 2.0 * F.normalize(torch.randn(dim, generator=g), dim=0)
    return x + offset + 0.1 * torch.randn(rows, dim, generator=g)


def minilm_features(rows: int, cache_dir: str) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding

    from hf_monosem import extract_pooled_features
    from hf_monosem.data.assets import load_tweets, minilm_path

    tweets = load_tweets()
    texts = [t for split in ("train", "validation", "test") for t in tweets[split]["text"]][:rows]
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    encoded = [tokenizer(t, truncation=True, max_length=64) for t in texts]
    backbone = AutoModel.from_pretrained(minilm_path())
    return extract_pooled_features(
        backbone,
        encoded,
        batch_size=128,
        cache_dir=cache_dir,
        pooling="mean",
        collate_fn=DataCollatorWithPadding(tokenizer),
        cache_key=f"tweets-minilm-{len(texts)}",
        progress=True,
    )


def fvu(reconstruction: torch.Tensor, x: torch.Tensor) -> float:
    return float((reconstruction - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def run_sparsify(x: torch.Tensor, args, seed: int) -> tuple[float, float, float]:
    from sparsify import SparseCoder, SparseCoderConfig

    x = F.normalize(x, dim=-1)  # sparsify has no input normalisation: give it what our layer computes
    torch.manual_seed(seed)
    sae = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=args.width, k=args.k))
    optimizer = torch.optim.Adam(sae.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(seed)
    wall, cpu = time.perf_counter(), time.process_time()
    sae.b_dec.data = x.mean(0)
    for _ in range(args.epochs):
        for rows in torch.randperm(len(x), generator=generator).split(args.batch_size):
            sae.set_decoder_norm_to_unit_norm()
            sae(x[rows]).fvu.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            optimizer.step()
            optimizer.zero_grad()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    with torch.no_grad():
        sae.set_decoder_norm_to_unit_norm()
        quality = fvu(sae(x).sae_out, x)
    return len(x) * args.epochs / wall, len(x) * args.epochs / cpu, quality


def run_ours(x: torch.Tensor, args, seed: int) -> tuple[float, float, float]:
    torch.manual_seed(seed)
    settings = FeatureLayerSettings(feature_dim=args.width, topk=args.k, sae_normalize_input=True)
    layer = build_feature_layer(settings, input_dim=x.shape[1], kind="topk")
    wall, cpu = time.perf_counter(), time.process_time()
    train_sae_layer(
        layer, x, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=seed, progress=False
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    with torch.no_grad():
        prepared = layer.prepare_input(x)
        quality = fvu(layer.decode(layer.encode(prepared)), prepared)
    return len(x) * args.epochs / wall, len(x) * args.epochs / cpu, quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=["synthetic", "minilm"], default="synthetic")
    parser.add_argument("--features", default=None, help="a torch.save'd [N, D] tensor (overrides --data)")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=384, help="width of the synthetic features")
    parser.add_argument("--width", type=int, default=1536, help="SAE latents")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="fits of each trainer, alternating")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/hf_monosem/benchmarks"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.features:
        x = torch.load(args.features, weights_only=True)[: args.rows].float()  # tensors only: runs no code
    elif args.data == "minilm":
        x = minilm_features(args.rows, args.cache_dir)
    else:
        x = synthetic_features(args.rows, args.dim)
    print(
        f"data={args.features or args.data} rows={x.shape[0]} dim={x.shape[1]} width={args.width} k={args.k} "
        f"batch={args.batch_size} epochs={args.epochs} lr={args.lr} threads={torch.get_num_threads()} "
        f"repeats={args.repeats} (alternating order)"
    )
    runners = {"sparsify": run_sparsify, "ours": run_ours}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runners}
    for repeat in range(args.repeats):
        order = list(runners) if repeat % 2 == 0 else list(runners)[::-1]
        for name in order:
            results[name].append(runners[name](x, args, seed=repeat))
        line = "  ".join(
            f"{name}: {results[name][-1][0]:8.0f} rows/s  FVU {results[name][-1][2]:.4f}" for name in runners
        )
        print(f"repeat {repeat} (seed {repeat}, {order[0]} first)  {line}", flush=True)

    medians = {
        name: [statistics.median(r[i] for r in runs) for i in range(3)] for name, runs in results.items()
    }
    paired = statistics.median(o[0] / s[0] for o, s in zip(results["ours"], results["sparsify"]))
    print(f"\n{'trainer':<10} {'rows/s':>10} {'rows/cpu-s':>11} {'FVU':>8}   (medians of {args.repeats})")
    for name, (rate, cpu_rate, quality) in medians.items():
        print(f"{name:<10} {rate:>10.0f} {cpu_rate:>11.0f} {quality:>8.4f}")
    ratio = medians["ours"][0] / medians["sparsify"][0]
    print(
        f"\nratio ours/sparsify: {ratio:.2f}x rows/s (median of per-repeat ratios {paired:.2f}x, "
        f"{medians['ours'][1] / medians['sparsify'][1]:.2f}x per CPU-second); "
        f"FVU {medians['ours'][2]:.4f} vs {medians['sparsify'][2]:.4f}"
    )


if __name__ == "__main__":
    main()
