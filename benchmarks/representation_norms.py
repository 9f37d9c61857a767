"""Mean L2 norm of every representation of a robustness-benchmark run, read from the run's own caches.

The authors' probes (``paper_cifar``, ``paper_in100``) train every representation on its natural scale,
so the norm of each vector decides how fast a probe memorises flipped labels; ``docs/results`` cites these
numbers beside the P3 results. Nothing is refitted: the text track's fitted layers are loaded from its
representation cache (checked against its fingerprint) and applied to the cached training features (the
pooled matrix with as many rows as the cached K-view matrix: the training posts); the vision track's
pretrained models encode the first ``--vision_train_size`` Fashion-MNIST training images.

Run (after ``python examples/robustness_benchmark.py --output_dir docs/results/benchmark_p3 --cache_dir
runs/cache_p3``)::

    python benchmarks/representation_norms.py --cache_dir runs/cache_p3 \\
        --output docs/results/benchmark_p3/norms.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import torch
from safetensors import safe_open

from hf_monosem import MonoSemanticModel
from hf_monosem.cached import load_feature_layers
from hf_monosem.data import load_fashion_mnist


def _matrices(cache_dir: str, prefix: str) -> list[torch.Tensor]:
    out = []
    for path in sorted(glob.glob(os.path.join(cache_dir, f"{prefix}-*.safetensors"))):
        with safe_open(path, "pt") as f:
            out.append(f.get_tensor("features"))
    return out


@torch.no_grad()
def text_norms(cache_dir: str) -> dict[str, float]:
    """Mean norms of the text track's training features: raw (as the SAEs see it and standardised), every
    fitted layer's output (``simclr_sae_*`` on the SimCLR output, the others on the encoder output)."""
    # the text track's file is the one with the projectors (the vision track caches its SAEs beside it)
    texts = []
    for path in sorted(glob.glob(os.path.join(cache_dir, "representations-*.safetensors"))):
        with safe_open(path, "pt") as f:
            fingerprint = (f.metadata() or {})["fingerprint"]
        layers = load_feature_layers(path, fingerprint)
        if layers is None:
            raise SystemExit(f"{os.path.basename(path)} did not load (see the warning above)")
        if "simclr" in layers:
            texts.append(layers)
    if len(texts) != 1:
        raise SystemExit(
            f"expected one text representation cache (with a SimCLR projector), found {len(texts)}"
        )
    layers = texts[0]
    rows = {v.shape[1] for v in _matrices(cache_dir, "views")}
    train = [m for m in _matrices(cache_dir, "pooled") if m.shape[0] in rows]
    if len(train) != 1:
        raise SystemExit(
            f"expected one pooled matrix with {sorted(rows)} rows (the views'), found {len(train)}"
        )
    x = train[0]
    out = {"raw (as fitted)": x, "raw (standardised)": (x - x.mean(0)) / x.std(0)}
    simclr = layers["simclr"][0](x)[0]
    for name, (layer, _) in layers.items():
        out[name] = layer(simclr if name.startswith("simclr_sae") else x)[0]
    return {name: round(float(v.norm(dim=1).mean()), 3) for name, v in out.items()}


@torch.no_grad()
def vision_norms(cache_dir: str, train_size: int) -> dict[str, float]:
    """Mean norms of the vision track's pretrained models' outputs on its training images."""
    images = load_fashion_mnist(max_train=train_size, max_test=0)["train"][:]["pixel_values"]
    out = {}
    for folder in sorted(glob.glob(os.path.join(cache_dir, "vision-pretrain-*", "*", "model"))):
        model = MonoSemanticModel.from_pretrained(folder).eval()
        features = torch.cat([model(pixel_values=chunk).features for chunk in images.split(512)])
        out[os.path.basename(os.path.dirname(folder))] = round(float(features.norm(dim=1).mean()), 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache_dir", required=True, help="the benchmark run's --cache_dir")
    parser.add_argument("--vision_train_size", type=int, default=5000)
    parser.add_argument("--output", default=None, help="a JSON file to write")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.cache_dir):
        raise SystemExit(f"--cache_dir {args.cache_dir!r} is not a folder")
    result = {
        "what": "mean L2 norm of the training features of each representation",
        "text": text_norms(args.cache_dir),
        "vision": vision_norms(args.cache_dir, args.vision_train_size),
    }
    for track in ("text", "vision"):
        for name, norm in result[track].items():
            print(f"{track:6s} {name:22s} {norm:8.3f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
