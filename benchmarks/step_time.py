"""Time one training step of every feature layer against the same backbone with a plain head.

One step = forward + backward + AdamW step on one batch. For each backbone family the plain
``AutoModelFor*Classification`` model and one ``MonoSemanticFor*Classification`` per feature layer
(width 4x the backbone width) share the backbone config; the models are timed round-robin (one step
of each in turn) so that load changes on the machine hit all of them alike, and the median over the
timed steps is compared. A second plain model ("plain (control)") is timed too: its ratio to the
first is the noise floor of the measurement. Goal: at most +5% over plain for linear / nonneg / sae, +10% for
topk.

The optimiser is torch's AdamW with its defaults (``--optimizer fused`` times the fused one that
``transformers.Trainer`` uses by default, ``optim="adamw_torch_fused"``: every step is ~40% faster
there, so the fixed cost of a feature layer weighs more: ResNet ``sae`` 1.10x instead of 1.09x).

The floor of the ResNet ``sae`` row (profiled on 2 CPU threads; 1.08-1.21x before, 1.09x now, over
the 1.05 goal): at 32x32 inputs and batch 16 a ResNet-18 step is small (60-110 ms; its convolutions
act on 8x8 to 1x1 maps), while the SAE on its 512-d pooled vector has two dense 512 x 2048 matrices,
2.1M parameters, +19% over the plain model. Each step they cost six GEMMs of 16 x 512 x 2048
(encoder and decoder forward; input, weight and code gradients), which at batch 16 are bound by
reading or writing a 4 MB matrix (0.2-0.7 ms each, ~2.8 ms in all), plus the AdamW update of the
2.1M parameters (~1-2 ms): 4-5 ms, 6-8% of the step, before anything else, so a dense ReLU SAE of
this width cannot reach +5% on this backbone (the ``linear`` row, one such matrix, is 1.03-1.04x for
the same reason at half the size; on 224 x 224 inputs the backbone does ~50x the work per image,
so the same few ms would be a fraction of a percent: not measured here). What was above that floor is gone:
the decoder-norm-weighted L1 term and the decoding are now one autograd node, with one pass over the decoder
for both of its gradients instead of four (three products and a sum); the layer's forward + backward went from
7.7 to 4.4 ms.

Usage::

    python benchmarks/step_time.py                      # BERT-small-ish (text) and ResNet-18 (32x32)
    python benchmarks/step_time.py --steps 30 --families text --threads 1
    python benchmarks/step_time.py --families image --optimizer fused
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import (
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    BertConfig,
    ResNetConfig,
)

from hf_monosem import (
    MonoSemanticConfig,
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
)

KINDS = ("linear", "nonneg", "sae", "topk")
GOALS = {"linear": 1.05, "nonneg": 1.05, "sae": 1.05, "topk": 1.10}
NUM_LABELS = 10


def _without_labels(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("id2label", "label2id", "num_labels")}


def text_family(batch_size: int, seq_len: int, device: torch.device):
    config = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    g = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(1000, config.vocab_size, (batch_size, seq_len), generator=g).to(device),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device),
        "labels": torch.randint(0, NUM_LABELS, (batch_size,), generator=g).to(device),
    }
    plain_config = BertConfig(**_without_labels(config.to_dict()), num_labels=NUM_LABELS)
    plain = AutoModelForSequenceClassification.from_config(plain_config)
    return f"BERT 256x4, seq {seq_len}", config, plain, MonoSemanticForSequenceClassification, inputs


def image_family(batch_size: int, image_size: int, device: torch.device):
    config = ResNetConfig(
        num_channels=3,
        embedding_size=64,
        hidden_sizes=[64, 128, 256, 512],
        depths=[2, 2, 2, 2],
        layer_type="basic",
    )
    g = torch.Generator().manual_seed(0)
    inputs = {
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device),
        "labels": torch.randint(0, NUM_LABELS, (batch_size,), generator=g).to(device),
    }
    plain_config = ResNetConfig(**_without_labels(config.to_dict()), num_labels=NUM_LABELS)
    plain = AutoModelForImageClassification.from_config(plain_config)
    return f"ResNet-18, {image_size}x{image_size}", config, plain, MonoSemanticForImageClassification, inputs


def make_step(model: torch.nn.Module, inputs: dict, device: torch.device, optimizer_kind: str = "default"):
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    # "fused": what transformers.Trainer uses by default (optim="adamw_torch_fused"); else torch's default
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True if optimizer_kind == "fused" else None)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return step


def bench_family(
    name, backbone_config, plain, mono_cls, inputs, args, device
) -> list[tuple[str, float, float]]:
    hidden = (
        backbone_config.hidden_size
        if hasattr(backbone_config, "hidden_size")
        else backbone_config.hidden_sizes[-1]
    )
    # a second plain model of the same config, timed like the others: its ratio shows the noise floor
    torch.manual_seed(0)
    models = {"plain": plain, "plain (control)": type(plain)(plain.config)}
    for kind in KINDS:
        torch.manual_seed(0)
        config = MonoSemanticConfig(
            backbone_config=backbone_config, feature_layer=kind, feature_dim=4 * hidden, num_labels=NUM_LABELS
        )
        models[kind] = mono_cls(config)
    steps = {label: make_step(model, inputs, device, args.optimizer) for label, model in models.items()}
    times: dict[str, list[float]] = {label: [] for label in steps}
    for i in range(args.warmup + args.steps):
        for label, step in steps.items():  # round-robin: machine load hits every model alike
            elapsed = step()
            if i >= args.warmup:
                times[label].append(elapsed)
    base = statistics.median(times["plain"])
    base_params = _trainable(models["plain"])
    rows = []
    for label, values in times.items():
        median = statistics.median(values)
        rows.append(
            (f"{name} / {label}", median * 1000, median / base, _trainable(models[label]) / base_params)
        )
    return rows


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--families", nargs="+", default=["text", "image"], choices=["text", "image"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--optimizer",
        choices=["default", "fused"],
        default="default",
        help="AdamW implementation: torch's default (for-each on CPU) or fused (the Trainer's default)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch_size} steps={args.steps} "
        f"optimizer={args.optimizer} AdamW "
        f"(median after {args.warmup} warm-up steps, models timed round-robin)"
    )

    rows = []
    if "text" in args.families:
        rows += bench_family(*text_family(args.batch_size, args.seq_len, device), args, device)
    if "image" in args.families:
        rows += bench_family(*image_family(args.batch_size, args.image_size, device), args, device)

    print(f"\n{'model':<40} {'ms/step':>9} {'vs plain':>9} {'goal':>6} {'':>5} {'params vs plain':>16}")
    for label, ms, ratio, params in rows:
        kind = label.rsplit(" / ", 1)[1]
        goal = GOALS.get(kind)
        verdict = "" if goal is None else ("ok" if ratio <= goal else "OVER")
        goal_text = f"{goal:.2f}" if goal else ""
        print(f"{label:<40} {ms:>9.1f} {ratio:>9.3f} {goal_text:>6} {verdict:>5} {params:>16.3f}")


if __name__ == "__main__":
    main()
