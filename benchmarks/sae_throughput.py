"""TopK SAE training throughput and quality: ``train_sae_layer`` against EleutherAI's sparsify, side by side.

Both fit a TopK SAE on the same L2-normalised training rows with the same settings (width, k, batch,
epochs, Adam with a constant learning rate, the same thread count), in one process. Ours runs at
``fit_sae``'s defaults (:class:`~hf_monosem.cached.SaeFitConfig`, its layer started by
``init_for_fit_`` as ``fit_sae`` starts it); sparsify gets the same learning rate (``--lr`` sets both).
The repeats alternate which trainer runs first, so that load changes on the machine hit both alike;
the medians over the repeats are compared. For each fit: rows/s (rows x epochs / wall time of the
whole fit, including whatever the trainer does besides the steps) and the FVU of the final weights
on held-back rows of the same distribution (``sum ||x - x_hat||^2 / sum ||x - mean||^2``, measured
afterwards, outside the timing).

The ceiling (issue 25's yardstick): the rows/s of two dense GEMMs at these shapes, the encoder's
forward ``[B, D] x [D, M]`` and a weight gradient ``[M, B] x [B, D]``, timed on their own just before
and just after each of our fits (the machine's load changes from minute to minute); our rows/s is
printed as a share of it. Our step runs only the first of the two densely: everything after the
top-k is sparse (``hf_monosem/models/sae_kernels.py``), so the rest of the step (top-k, sparse
products, Adam, decoder upkeep, Python) has the second GEMM's time to spend. With ``--threads`` above
1 on cores that other jobs share, each parallel region of the step waits for a descheduled sibling
thread, which costs the many-kernel step far more than the two-GEMM ceiling; ``--threads 1`` shows
the share without that effect. ``--output STEM`` writes ``STEM.json`` and ``STEM.md`` (settings,
numbers, the load average at start and end, ``--note``).

The sparsify side is its ``SparseCoder`` (1.3.3, eager path: ``SPARSIFY_DISABLE_TRITON=1``, no
Triton on CPU anyway) driven by the steps of its ``Trainer`` for ``loss_fn="fvu"``: decoder bias set
to the data mean, decoder renormalised before each forward, FVU loss, the decoder gradient made
orthogonal to the decoder rows, Adam step. Its ``Trainer`` itself cannot run here (it trains on a
language model's hookpoints); its AuxK term is off by default (``auxk_alpha=0``) and its learning-rate
schedule (1000 warm-up steps, then a linear decay) is left out (a 60-step fit would never leave the
warm-up). Ours has AuxK for dead latents, none of which die in 3 epochs here.

The data (``--data``, several in one run): ``synthetic`` is a MiniLM-like matrix made here (384-d, a
shared offset plus sparse positive mixtures of 6144 directions with power-law frequencies, plus
noise); ``lowrank`` is Gaussian mixtures of 64 directions plus noise; ``minilm`` extracts
all-MiniLM-L6-v2 mean-pooled embeddings of the offline tweets (the ``assets`` extra; cached under
``--cache-dir``, slow the first time); a path reads a ``[N, D]`` tensor saved with ``torch.save``.
The last ``--heldout`` rows are held back.

Needs the benchmark extra: ``pip install -e ".[interop]"`` (eai-sparsify).

Usage::

    # synthetic and lowrank: 20k training rows x 384 (+ 4096 held back), width 1536, k 32, 3 epochs,
    # batch 1024, 2 threads
    python benchmarks/sae_throughput.py
    python benchmarks/sae_throughput.py --repeats 7 --data minilm
    python benchmarks/sae_throughput.py --repeats 1 --output docs/results/sae_throughput --note "..."
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # before sparsify is imported: its eager decoder

import torch
import torch.nn.functional as F

from hf_monosem.cached import SaeFitConfig, train_sae_layer
from hf_monosem.models import FeatureLayerSettings, build_feature_layer
from hf_monosem.models.sae import ENCODER_INIT_NORM


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


def lowrank_features(rows: int, dim: int, seed: int = 0, rank: int = 64) -> torch.Tensor:
    """Low rank plus noise: Gaussian mixtures of ``rank`` orthonormal directions (scales ``i**-0.5``),
    plus isotropic noise (std 0.05). The directions are fixed (seed 1000), so that ``seed`` draws
    further rows of one distribution (the held-back rows)."""
    g = torch.Generator().manual_seed(1000)
    basis = torch.linalg.qr(torch.randn(dim, rank, generator=g))[0].t()
    scales = torch.arange(1, rank + 1).float() ** -0.5
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, rank, generator=g) * scales) @ basis + 0.05 * torch.randn(
        rows, dim, generator=g
    )


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


def gemm_ceiling(args, reps: int) -> float:
    """Rows/s of the two dense GEMMs a TopK step cannot avoid at these shapes (the encoder's forward,
    ``[B, D] x [D, M]``, and a weight gradient, ``[M, B] x [B, D]``): the median of ``reps`` timings
    of the pair, on random operands, with the fits' threads."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, args.dim_in, generator=g)
    weight = torch.randn(args.width, args.dim_in, generator=g)
    bias = torch.zeros(args.width)
    grad = torch.randn(args.batch_size, args.width, generator=g)
    torch.addmm(bias, x, weight.t())  # warm-up (MKL's first call)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.addmm(bias, x, weight.t())
        torch.mm(grad.t(), x)
        times.append(time.perf_counter() - start)
    return args.batch_size / statistics.median(times)


def run_sparsify(x: torch.Tensor, held: torch.Tensor, args, seed: int) -> tuple[float, float, float]:
    from sparsify import SparseCoder, SparseCoderConfig

    # sparsify has no input normalisation: give it what our layer computes
    x, held = F.normalize(x, dim=-1), F.normalize(held, dim=-1)
    torch.manual_seed(seed)
    sae = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=args.width, k=args.k))
    optimizer = torch.optim.Adam(sae.parameters(), lr=args.sparsify_lr)
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
        quality = fvu(sae(held).sae_out, held)
    return len(x) * args.epochs / wall, len(x) * args.epochs / cpu, quality


def run_ours(x: torch.Tensor, held: torch.Tensor, args, seed: int) -> tuple[float, float, float]:
    torch.manual_seed(seed)
    settings = FeatureLayerSettings(feature_dim=args.width, topk=args.k, sae_normalize_input=True)
    layer = build_feature_layer(settings, input_dim=x.shape[1], kind="topk")
    layer.init_for_fit_(encoder_norm=ENCODER_INIT_NORM)  # what fit_sae does to the layer it builds
    config = SaeFitConfig(epochs=args.epochs, batch_size=args.batch_size, seed=seed, progress=False)
    wall, cpu = time.perf_counter(), time.process_time()
    train_sae_layer(layer, x, config=config.with_options(lr=args.lr))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    with torch.no_grad():
        prepared = layer.prepare_input(held)
        quality = fvu(layer.decode(layer.encode(prepared)), prepared)
    return len(x) * args.epochs / wall, len(x) * args.epochs / cpu, quality


def load_data(name: str, args) -> tuple[torch.Tensor, torch.Tensor]:
    """``(training rows, held-back rows)`` of one data set."""
    total = args.rows + args.heldout
    if name == "synthetic":
        x = synthetic_features(total, args.dim)
    elif name == "lowrank":
        x = lowrank_features(total, args.dim)
    elif name == "minilm":
        x = minilm_features(total, args.cache_dir)
    else:  # a file
        x = torch.load(name, weights_only=True)[:total].float()  # tensors only: runs no code
    if len(x) <= args.heldout:
        raise SystemExit(f"{name}: {len(x)} rows, not more than --heldout {args.heldout}")
    return x[: len(x) - args.heldout], x[len(x) - args.heldout :]


def bench(name: str, args) -> dict[str, float]:
    x, held = load_data(name, args)
    args.dim_in = x.shape[1]
    args.sparsify_lr = SaeFitConfig(lr=args.lr).resolved_lr(args.width)
    print(
        f"\ndata={name} rows={x.shape[0]} held-back={held.shape[0]} dim={x.shape[1]} width={args.width} "
        f"k={args.k} batch={args.batch_size} epochs={args.epochs} threads={torch.get_num_threads()} "
        f"repeats={args.repeats} (alternating order); ours at fit_sae's defaults"
        f"{'' if args.lr is None else f' but lr={args.lr}'}, sparsify at lr={args.sparsify_lr:.3g}"
    )
    runners = {"sparsify": run_sparsify, "ours": run_ours}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runners}
    ceilings: list[float] = []  # the GEMM ceiling, measured just before and just after our fit
    shares: list[float] = []
    for repeat in range(args.repeats):
        order = list(runners) if repeat % 2 == 0 else list(runners)[::-1]
        for trainer in order:
            before = gemm_ceiling(args, args.ceiling_reps) if trainer == "ours" else None
            results[trainer].append(runners[trainer](x, held, args, seed=repeat))
            if before is not None:
                ceiling = statistics.mean([before, gemm_ceiling(args, args.ceiling_reps)])
                ceilings.append(ceiling)
                shares.append(results["ours"][-1][0] / ceiling)
        line = "  ".join(
            f"{t}: {results[t][-1][0]:8.0f} rows/s  FVU {results[t][-1][2]:.4f}" for t in runners
        )
        print(
            f"repeat {repeat} (seed {repeat}, {order[0]} first)  {line}  "
            f"ceiling {ceilings[-1]:8.0f} rows/s (ours {shares[-1]:.0%})",
            flush=True,
        )

    medians = {
        trainer: [statistics.median(r[i] for r in runs) for i in range(3)]
        for trainer, runs in results.items()
    }
    paired = statistics.median(o[0] / s[0] for o, s in zip(results["ours"], results["sparsify"]))
    fvus = {t: [r[2] for r in runs] for t, runs in results.items()}
    print(
        f"\n{'trainer':<10} {'rows/s':>10} {'rows/cpu-s':>11} {'held-back FVU':>14}"
        f"   (medians of {args.repeats})"
    )
    for trainer, (rate, cpu_rate, quality) in medians.items():
        spread = f"{min(fvus[trainer]):.4f}..{max(fvus[trainer]):.4f}"
        print(f"{trainer:<10} {rate:>10.0f} {cpu_rate:>11.0f} {quality:>14.4f}   (range {spread})")
    print(f"{'ceiling':<10} {statistics.median(ceilings):>10.0f}   (two dense GEMMs per step, next to ours)")
    wins = sum(o <= s for o, s in zip(fvus["ours"], fvus["sparsify"]))
    print(
        f"\n{name}: ours/sparsify {medians['ours'][0] / medians['sparsify'][0]:.2f}x rows/s (median of "
        f"per-repeat ratios {paired:.2f}x); ours at {statistics.median(shares):.0%} of the GEMM ceiling "
        f"(median of per-repeat shares, range {min(shares):.0%}..{max(shares):.0%}); held-back FVU "
        f"{medians['ours'][2]:.4f} vs {medians['sparsify'][2]:.4f} (ours <= sparsify in {wins} of "
        f"{args.repeats} seeds)"
    )
    return {
        "share": statistics.median(shares),
        "fvu_ours": medians["ours"][2],
        "fvu_sparsify": medians["sparsify"][2],
        "rows_per_s": {trainer: numbers[0] for trainer, numbers in medians.items()},
        "rows_per_cpu_s": {trainer: numbers[1] for trainer, numbers in medians.items()},
        "ceiling_rows_per_s": statistics.median(ceilings),
        "shares": shares,
        "fvus": fvus,
    }


def write_results(stem: str, args, summary: dict, load: tuple[list[float], list[float]]) -> None:
    """``stem.json`` (settings, per-data-set numbers, load averages) and ``stem.md`` (the summary)."""
    settings = {
        name: getattr(args, name)
        for name in ("rows", "heldout", "width", "k", "batch_size", "epochs", "threads", "repeats", "lr")
    }
    record = {"settings": settings, "load_average_start_end": load, "note": args.note, "data": summary}
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(f"{stem}.json", "w") as f:
        json.dump(record, f, indent=2)
    lines = [
        "# TopK SAE fitting: ours vs sparsify (`benchmarks/sae_throughput.py`)",
        "",
        f"Settings: {json.dumps(settings)}. 1-minute load average at start / end: "
        f"{load[0][0]:.1f} / {load[1][0]:.1f}. {args.note}",
        "",
        "| data | ours rows/s | sparsify rows/s | GEMM ceiling rows/s | ours / ceiling | ours FVU "
        "| sparsify FVU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, n in summary.items():
        lines.append(
            f"| {name} | {n['rows_per_s']['ours']:.0f} | {n['rows_per_s']['sparsify']:.0f} | "
            f"{n['ceiling_rows_per_s']:.0f} | {n['share']:.0%} | {n['fvu_ours']:.4f} | "
            f"{n['fvu_sparsify']:.4f} |"
        )
    with open(f"{stem}.md", "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", nargs="+", default=["synthetic", "lowrank"], help="synthetic, lowrank, minilm or a file"
    )
    parser.add_argument("--rows", type=int, default=20000, help="training rows")
    parser.add_argument("--heldout", type=int, default=4096, help="held-back rows the FVU is measured on")
    parser.add_argument("--dim", type=int, default=384, help="width of the synthetic features")
    parser.add_argument("--width", type=int, default=1536, help="SAE latents")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate of both (default: fit_sae's, given to sparsify too)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="fits of each trainer, alternating")
    parser.add_argument(
        "--ceiling-reps", type=int, default=10, help="GEMM pairs timed before and after each fit"
    )
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/hf_monosem/benchmarks"))
    parser.add_argument(
        "--output", default=None, help="write STEM.json and STEM.md (e.g. docs/results/sae_throughput)"
    )
    parser.add_argument("--note", default="", help="a line for the written results (the machine, its load)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = list(os.getloadavg())
    summary = {name: bench(name, args) for name in args.data}
    if args.output:
        write_results(args.output, args, summary, (load_start, list(os.getloadavg())))
    print("\nsummary (goal: held-back FVU <= sparsify's on every data set, >= 75% of the GEMM ceiling)")
    for name, numbers in summary.items():
        print(
            f"  {name:<10} FVU {numbers['fvu_ours']:.4f} vs {numbers['fvu_sparsify']:.4f} "
            f"({'met' if numbers['fvu_ours'] <= numbers['fvu_sparsify'] else 'NOT met'}); "
            f"{numbers['share']:.0%} of the ceiling ({'met' if numbers['share'] >= 0.75 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
