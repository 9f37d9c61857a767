"""Fault injection: a run of the cached route killed (SIGKILL) at several points, then rerun, ends exactly
like an uninterrupted run and redoes only the work whose result was not yet on disk.

The phases: feature extraction with its cache, SAE and contrastive projector fits (saved together as one
representation cache), a probe grid, the result file. A kill can land in any of them, including inside
an atomic write (temp file + fsync + rename): the rerun must never see half a file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = r"""
import json, os, sys
import torch
from datasets import Dataset
from transformers import BertConfig, BertModel
from hf_monosem import extract_pooled_features
from hf_monosem.cached import (fit_contrastive_projector, load_feature_layers, save_feature_layers,
                               tensors_sha256, train_probe_grid, train_sae_layer)
from hf_monosem.models import FeatureLayerSettings, build_feature_layer
from hf_monosem.training.checkpoints import write_json

out = sys.argv[1]
torch.set_num_threads(1)
torch.manual_seed(0)
bert = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64)).eval()
g = torch.Generator().manual_seed(1)
y = torch.arange(256) % 2
ids = 10 + 40 * y[:, None] + torch.randint(0, 40, (256, 24), generator=g)
data = Dataset.from_dict({"input_ids": ids.numpy(), "label": y.numpy()})
cache = os.path.join(out, "cache")
print("phase: extract" + (" (cache present)" if os.path.isdir(cache) and os.listdir(cache) else ""), flush=True)
x = extract_pooled_features(bert, data, batch_size=16, cache_dir=cache)
path = os.path.join(out, "representations.safetensors")
fingerprint = tensors_sha256({"x": x})
layers = load_feature_layers(path, fingerprint)
if layers is None:
    print("phase: fit", flush=True)
    torch.manual_seed(0)
    sae = build_feature_layer(FeatureLayerSettings(feature_dim=64, topk=8, sae_normalize_input=True), 32, kind="topk")
    report = train_sae_layer(sae, x, epochs=40, batch_size=32, progress=False)
    projector, _ = fit_contrastive_projector(x, feature_dim=32, projector_hidden_dim=32, epochs=40, progress=False)
    save_feature_layers(path, {"sae": (sae.eval(), {"ev": report["final_explained_variance"]}),
                               "ncl": (projector, {})}, fingerprint)
    layers = load_feature_layers(path, fingerprint)
with torch.no_grad():
    features = {name: layer(x)[0] for name, (layer, _) in layers.items()}
print("phase: probe", flush=True)
result = {}
for name, f in features.items():
    grid = train_probe_grid(f, y[None], 2, epochs=60, batch_size=32, seeds=[0])
    accuracy = ((f @ grid.weight[0] + grid.bias[0]).argmax(1) == y).float().mean()
    result[name] = {"accuracy": float(accuracy), "weight_sum": float(grid.weight.double().sum())}
write_json(os.path.join(out, "result.json"), result)
print("phase: done", flush=True)
"""


def _start(script: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, str(script), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_cached_route_reruns_to_the_uninterrupted_result_redoing_only_missing_work(tmp_path):
    script = tmp_path / "route.py"
    script.write_text(SCRIPT)
    start = time.perf_counter()
    full = _start(script, tmp_path / "full")
    log, _ = full.communicate(timeout=600)
    duration = time.perf_counter() - start
    assert full.returncode == 0, log
    expected = json.loads((tmp_path / "full" / "result.json").read_text())

    for fraction in (0.45, 0.7, 0.9):  # import/extraction, fitting, probing (roughly; loads vary)
        out = tmp_path / f"killed{fraction}"
        run = _start(script, out)
        time.sleep(fraction * duration)
        run.send_signal(signal.SIGKILL)
        run.communicate()
        had_cache = (out / "cache").is_dir() and any((out / "cache").glob("*.safetensors"))
        had_layers = (out / "representations.safetensors").is_file()
        rerun = _start(script, out)
        log, _ = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, log
        assert "is not used" not in log, log  # atomic writes: no half file was ever left under a cache name
        assert ("(cache present)" in log) == had_cache, log
        assert ("phase: fit" in log) == (not had_layers), log  # fitted layers on disk are not refitted
        assert json.loads((out / "result.json").read_text()) == expected, (fraction, log)
