"""Tiny learnable data sets and Trainer arguments shared by the training tests."""

from __future__ import annotations

import datasets
import torch
from transformers import TrainingArguments


def toy_images(
    n: int = 48, num_classes: int = 3, channels: int = 1, size: int = 16, seed: int = 0, noise: float = 0.3
):
    """Each class is a fixed random pattern; examples are pattern + Gaussian noise (values ~[0, 1])."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(num_classes, channels, size, size, generator=g)
    labels = torch.arange(n) % num_classes
    pixels = (patterns[labels] + noise * torch.randn(n, channels, size, size, generator=g)).clamp(0, 1)
    return datasets.Dataset.from_dict({"pixel_values": pixels.numpy(), "label": labels.numpy()})


def toy_smooth_images(n: int = 32, channels: int = 3, size: int = 16, seed: int = 0):
    """Unlabelled images, each its own smooth random colour field (a 4x4 grid upsampled): the identity
    of an image survives mild crops, flips and colour jitter, so contrastive views are matchable."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 4, 4, generator=g)
    pixels = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return datasets.Dataset.from_dict({"pixel_values": pixels.numpy(), "label": [0] * n})


def mild_views():
    """SimCLR's augmentations at toy strength (the defaults are made for real photos)."""
    from hf_monosem import ImageViews

    return ImageViews(crop_scale=(0.6, 1.0), color_jitter=(0.2, 0.2, 0.2, 0.0), grayscale_p=0.0)


def toy_text(n: int = 48, num_classes: int = 2, length: int = 10, vocab: int = 100, seed: int = 0):
    """Class c draws its tokens from its own band of the vocabulary; [CLS]=1 first, some rows padded."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    band = (vocab - 10) // num_classes
    ids = 10 + labels[:, None] * band + torch.randint(0, band, (n, length), generator=g)
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[::4, -3:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return datasets.Dataset.from_dict(
        {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "label": labels.numpy()}
    )


def training_args(tmp_path, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        num_train_epochs=2,
        logging_steps=2,
        learning_rate=1e-2,
        seed=0,
        dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def train_logs(trainer) -> list[dict]:
    """The training-step logs (those with a ``loss``)."""
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def comparable(log_history: list[dict]) -> list[dict]:
    """Log entries without wall-clock fields, for run-to-run comparisons."""
    timing = ("runtime", "per_second")
    return [{k: v for k, v in e.items() if not any(t in k for t in timing)} for e in log_history]


def accelerate_launch(
    script,
    *script_args,
    num_processes: int = 2,
    config_file=None,
    use_cpu: bool = True,
    timeout: float = 300,
    attempts: int = 3,
):
    """Run ``script`` under ``accelerate launch`` with ``num_processes`` CPU processes (gloo).

    On a machine without GPUs the working invocation is ``accelerate launch --multi_gpu`` (torchrun
    under the hood) with ``ACCELERATE_USE_CPU=1``: ``--cpu`` alone starts a single process, and
    without ``ACCELERATE_USE_CPU`` / ``use_cpu=True`` every process silently trains on its own.
    Returns the ``CompletedProcess``; the caller asserts on ``returncode`` and ``stderr``.

    Several launches may run side by side: ``--main_process_port 0`` lets accelerate pick a free port,
    and a launch whose port was taken in the moment between the pick and torchrun's bind (the error
    names ``EADDRINUSE``) is started again, up to ``attempts`` times in all.
    """
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file is not None:
        command += ["--config_file", str(config_file)]
    else:
        command += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if config_file is None or use_cpu:
        command += ["--num_processes", str(num_processes)]
    command += ["--main_process_port", "0", str(script), *map(str, script_args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if use_cpu:
        env.update(CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="1")
    for _ in range(attempts):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        output = result.stdout + result.stderr
        if result.returncode == 0 or not port_was_taken(output):
            break
    return result


def launch_and_load(tmp_path, script_text: str, search_path: str, world: int = 2) -> list:
    """Write ``script_text`` to ``tmp_path``, run it under :func:`accelerate_launch` with ``world`` CPU
    processes (arguments: ``tmp_path`` and ``search_path``), check it succeeded, and return what each
    process saved with ``torch.save`` as ``rank{r}.pt`` in ``tmp_path``, in rank order."""
    script = tmp_path / "launched.py"
    script.write_text(script_text)
    result = accelerate_launch(script, tmp_path, search_path, num_processes=world)
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def port_was_taken(output: str) -> bool:
    """Whether a launch failed because its rendezvous port was bound by another process first."""
    return "EADDRINUSE" in output or "address already in use" in output.lower()


def sparse_mixtures(n=512, dim=32, atoms=48, k=4, seed=0):
    """Inputs that an SAE can explain: sums of k of `atoms` unit directions with positive weights."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(atoms, dim, generator=g), dim=-1)
    idx = torch.rand(n, atoms, generator=g).argsort(-1)[:, :k]
    codes = torch.zeros(n, atoms).scatter(1, idx, torch.rand(n, k, generator=g) + 0.5)
    return codes @ dictionary


def write_shards(folder, x: torch.Tensor, rows_per_shard: int = 37):
    """``x`` as a feature matrix in shard files (``ShardedFeatures``, key ``"test"``), written in batches of
    50 rows into shards of ``rows_per_shard``: batches and statistics blocks cross shard borders."""
    from hf_monosem.cached.feature_shards import ShardWriter, open_shards, write_manifest

    writer = ShardWriter(folder, rows_per_shard=rows_per_shard)
    for block in x.split(50):
        writer.write(block)
    write_manifest(folder, [writer.close()], width=x.shape[1], key="test")
    matrix = open_shards(folder, key="test")
    assert matrix is not None
    return matrix
