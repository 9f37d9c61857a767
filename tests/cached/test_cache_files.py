"""Caches cannot lie or run code: damaged, stale or crafted files are named in a warning and rebuilt.

Before: a truncated feature cache raised a raw ``SafetensorError`` on every later run; flipped bytes
changed the features silently (max difference 87.8); a valid file with 5 rows was returned for a
300-row dataset; another ``collate_fn`` got the first call's features; the benchmark's representation
cache was a pickle loaded with ``weights_only=False`` (a crafted file ran its payload).
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from tiny_models import tiny_bert_config
from training_toys import toy_text
from transformers import BertModel

from hf_monosem import extract_pooled_features
from hf_monosem.cached.cache_files import load_feature_layers, load_tensors, save_feature_layers, save_tensors
from hf_monosem.cached.projector_fitting import fit_contrastive_projector
from hf_monosem.models import FeatureLayerSettings, build_feature_layer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture()
def bert():
    torch.manual_seed(0)
    return BertModel(tiny_bert_config()).eval()


def _cached(bert, folder):
    """A 12-row dataset, its features (extracted and cached in ``folder``) and the one cache file."""
    ds = toy_text(n=12)
    first = extract_pooled_features(bert, ds, cache_dir=folder)
    files = list(folder.glob("*.safetensors"))
    assert len(files) == 1
    return ds, first, files[0]


def test_a_truncated_feature_cache_is_rebuilt_with_a_warning_naming_it(bert, tmp_path):
    ds, first, path = _cached(bert, tmp_path)
    path.write_bytes(path.read_bytes()[:100])  # a kill during a (non-atomic) write
    with pytest.warns(UserWarning, match=f"cache file {path}.*cannot be read"):
        again = extract_pooled_features(bert, ds, cache_dir=tmp_path)
    assert torch.equal(again, first)
    assert torch.equal(load_tensors(path)["features"], first)  # rewritten whole
    path.write_bytes(b"")  # the 0-byte file a killed torch.save left
    with pytest.warns(UserWarning, match="cannot be read"):
        assert torch.equal(extract_pooled_features(bert, ds, cache_dir=tmp_path), first)


def test_flipped_bytes_in_a_feature_cache_are_caught_by_the_content_hash(bert, tmp_path):
    ds, first, path = _cached(bert, tmp_path)
    data = bytearray(path.read_bytes())
    for offset in range(len(data) - 400, len(data) - 300, 7):  # inside the float data at the end
        data[offset] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="does not match its hash"):
        assert torch.equal(extract_pooled_features(bert, ds, cache_dir=tmp_path), first)


def test_a_valid_cache_file_with_too_few_rows_is_not_returned(bert, tmp_path):
    ds, first, path = _cached(bert, tmp_path)
    meta_key = path.name  # keep the file's own key: only the row count is wrong
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_tensors(path, {"features": first[:5]}, {"output": meta["output"], "key": meta["key"]})
    with pytest.warns(UserWarning, match=r"shape \(5, 32\), expected \(12, None\)"):
        assert torch.equal(extract_pooled_features(bert, ds, cache_dir=tmp_path), first)
    assert path.name == meta_key


def test_the_collate_function_is_part_of_the_key(bert, tmp_path):
    from transformers import default_data_collator

    ds = toy_text(n=12)

    def truncating(rows):
        batch = default_data_collator(rows)
        return {k: v[:, :4] for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    full = extract_pooled_features(bert, ds, cache_dir=tmp_path)
    short = extract_pooled_features(bert, ds, cache_dir=tmp_path, collate_fn=truncating)
    expected = extract_pooled_features(bert, ds, collate_fn=truncating)  # no cache
    assert torch.equal(short, expected) and not torch.equal(short, full)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_a_padding_collator_is_keyed_by_how_it_pads_not_by_its_tokenizers_state(bert, tmp_path):
    import datasets
    from transformers import BertTokenizerFast, DataCollatorWithPadding

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *[f"w{i}" for i in range(28)]]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)})
    texts = [" ".join(f"w{(3 * i + j) % 28}" for j in range(1 + i % 5)) for i in range(12)]
    ds = datasets.Dataset.from_dict(dict(tokenizer(texts)))  # rows of different lengths: padding matters

    def extract():
        collate = DataCollatorWithPadding(tokenizer)
        return extract_pooled_features(bert, ds, cache_dir=tmp_path, collate_fn=collate)

    first = extract()
    # calling a tokenizer stores its truncation settings in its backend: a resumed run whose rows came from
    # the datasets cache never calls it, and must still find the features
    tokenizer(texts, truncation=True, max_length=4)
    again = extract()
    assert torch.equal(again, first) and len(list(tmp_path.glob("*.safetensors"))) == 1
    tokenizer.padding_side = "left"  # other batches: [CLS] is no longer at position 0 of the padded rows
    left = extract()
    assert not torch.equal(left, first) and len(list(tmp_path.glob("*.safetensors"))) == 2


def test_fitted_layers_round_trip_and_a_crafted_pickle_never_runs(tmp_path):
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    projector, report = fit_contrastive_projector(
        x, feature_dim=6, projector_hidden_dim=6, epochs=1, progress=False
    )
    sae = build_feature_layer(
        FeatureLayerSettings(feature_dim=12, topk=3, sae_normalize_input=True), 8, kind="topk"
    )
    path = tmp_path / "representations.safetensors"
    save_feature_layers(path, {"ncl": (projector, report), "sae": (sae.eval(), {"final_loss": 0.5})}, "fp1")
    loaded = load_feature_layers(path, "fp1")
    assert loaded["ncl"][1] == report and loaded["sae"][1] == {"final_loss": 0.5}
    assert torch.equal(loaded["ncl"][0](x)[0], projector.eval()(x)[0])
    assert torch.equal(loaded["sae"][0](x)[0], sae(x)[0])
    with pytest.warns(UserWarning, match="written for fingerprint='fp1', not 'fp2'"):
        assert load_feature_layers(path, "fp2") is None
    # a pickle with a payload at the cache's name: refused as unreadable, and the payload never runs
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps(Payload()))
    with pytest.warns(UserWarning, match="cannot be read"):
        assert load_feature_layers(path, "fp1") is None
    assert not marker.exists()


def test_no_weights_only_false_anywhere():
    """Every ``torch.load`` of the package, examples and benchmarks says ``weights_only=True`` (no pickle
    code runs from a file); nothing says ``weights_only=False``."""
    import re

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    offenders = []
    for folder in ("hf_monosem", "examples", "benchmarks"):
        for base, _, files in os.walk(os.path.join(root, folder)):
            for name in (n for n in files if n.endswith(".py")):
                with open(os.path.join(base, name), encoding="utf-8") as f:
                    text = f.read()
                calls = re.findall(r"torch\.load\(([^)]*)\)", text)
                if "weights_only=False" in text or any("weights_only=True" not in call for call in calls):
                    offenders.append(os.path.relpath(os.path.join(base, name), root))
    assert offenders == []
