"""``load_sae`` / ``from_sae`` on a damaged SAE checkpoint: an error naming the file and the problem.

Before: raw ``JSONDecodeError``, ``KeyError``, size ``RuntimeError``, and NaN weights were accepted."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from hf_monosem import load_sae, save_sae
from hf_monosem.models import FeatureLayerSettings, build_feature_layer


@pytest.fixture()
def folder(tmp_path):
    layer = build_feature_layer(FeatureLayerSettings(feature_dim=16, topk=4), 8, kind="topk")
    return save_sae(layer, tmp_path / "sae", format="saelens")


def _edit_weights(folder, edit):
    path = f"{folder}/sae_weights.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def test_damaged_sae_checkpoints_are_named(folder):
    config = json.loads(open(f"{folder}/cfg.json").read())
    open(f"{folder}/cfg.json", "w").write("{not json")
    with pytest.raises(ValueError, match=r"cfg.json is not valid JSON"):
        load_sae(folder)
    open(f"{folder}/cfg.json", "w").write(json.dumps({k: v for k, v in config.items() if k != "d_sae"}))
    with pytest.raises(ValueError, match=r"lack 'd_sae'"):
        load_sae(folder)
    open(f"{folder}/cfg.json", "w").write(json.dumps({**config, "d_sae": 32}))
    with pytest.raises(ValueError, match=r"do not fit the sizes in .*cfg.json"):
        load_sae(folder)
    open(f"{folder}/cfg.json", "w").write(json.dumps(config))
    _edit_weights(folder, lambda t: t["W_enc"].__setitem__((0, 0), float("nan")))
    with pytest.raises(ValueError, match=r"holds NaN/inf in 'W_enc'"):
        load_sae(folder)
    open(f"{folder}/sae_weights.safetensors", "wb").write(b"\0" * 10)
    with pytest.raises(ValueError, match=r"sae_weights.safetensors cannot be read"):
        load_sae(folder)
