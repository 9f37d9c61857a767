import pytest
import torch
from tiny_models import tiny_bert_config
from training_toys import sparse_mixtures, toy_text
from transformers import BertModel

from hf_monosem import MonoSemanticConfig, MonoSemanticModel, extract_pooled_features, fit_sae
from hf_monosem.cached.sae_fitting import explained_variance, resample_dead_latents, train_sae_layer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def sae_layer(kind="sae", dim=32, width=64, **kwargs):
    cfg = MonoSemanticConfig(
        backbone_config=tiny_bert_config(hidden_size=dim), feature_layer=kind, feature_dim=width, **kwargs
    )
    torch.manual_seed(0)
    return MonoSemanticModel(cfg).feature_layer


@pytest.mark.parametrize("kind", ["topk", "sae"])
def test_explained_variance_rises_during_fitting(kind):
    bert = BertModel(tiny_bert_config())
    model, report = fit_sae(
        bert,
        features=sparse_mixtures(),
        feature_layer=kind,
        feature_dim=64,
        topk=8,
        epochs=6,
        lr=3e-3,
        batch_size=32,
        seed=0,
        progress=False,
    )
    ev = report["explained_variance"]
    assert (
        len(ev) == 7
        and len(report["l0"]) == 7
        and len(report["dead_fraction"]) == 7
        and len(report["loss"]) == 6
    )
    assert ev[-1] > ev[0] + 0.3 and ev[-1] > 0.7
    assert all(later >= earlier - 0.02 for earlier, later in zip(ev, ev[1:]))  # rises (up to noise)
    assert report["loss"][-1] < report["loss"][0]
    assert report["final_explained_variance"] == ev[-1] and 0 <= report["final_dead_fraction"] <= 1
    if kind == "topk":
        assert report["final_l0"] == pytest.approx(8.0, abs=0.5)
    assert model.config.freeze_backbone and model.config.feature_layer == kind
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in bert.parameters())  # the caller's backbone is untouched (copied)


def test_same_seed_same_fit():
    features = sparse_mixtures(n=128)
    runs = [
        fit_sae(
            BertModel(tiny_bert_config()),
            features=features,
            feature_layer="topk",
            feature_dim=64,
            topk=8,
            epochs=2,
            batch_size=32,
            seed=3,
            progress=False,
        )
        for _ in range(2)
    ]
    assert runs[0][1] == runs[1][1]
    assert torch.equal(runs[0][0].feature_layer.encoder.weight, runs[1][0].feature_layer.encoder.weight)


@pytest.mark.parametrize("kind", ["topk", "sae"])
def test_the_sae_after_each_epoch_is_the_fit_of_that_many_epochs(kind):
    """``on_epoch_end`` sees, after epoch ``e`` of one fit, exactly the SAE a fit of ``e`` epochs returns
    (constant learning rate; AuxK for topk, no resampling for sae): how one fit scores several counts."""
    features = sparse_mixtures(n=192)
    options = dict(
        features=features, feature_layer=kind, feature_dim=64, topk=8, batch_size=32, seed=5, progress=False
    )
    if kind == "sae":
        options["dead_latents"] = "none"
    seen, modes = {}, []

    def snapshot(epoch, layer):
        modes.append((layer.training, torch.is_grad_enabled()))
        seen[epoch] = {name: value.clone() for name, value in layer.state_dict().items()}

    _, long_report = fit_sae(BertModel(tiny_bert_config()), epochs=3, on_epoch_end=snapshot, **options)
    assert sorted(seen) == [1, 2, 3] and modes == [(True, False)] * 3
    for epochs in (1, 2, 3):
        model, report = fit_sae(BertModel(tiny_bert_config()), epochs=epochs, **options)
        for name, value in model.feature_layer.state_dict().items():
            assert torch.equal(seen[epochs][name], value), (epochs, name)
        assert report["explained_variance"] == long_report["explained_variance"][: epochs + 1]
    if kind == "topk":  # the AuxK term ran: some latent was dead at some step
        assert max(long_report["dead_fraction"]) > 0


@pytest.mark.parametrize("through", ["method", "function"])
def test_dead_latents_are_resampled_toward_badly_reconstructed_inputs(through):
    layer = sae_layer("sae")
    x = sparse_mixtures(n=64)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
    codes, aux = layer(x)
    layer.weighted_aux_loss(aux).backward()
    optimizer.step()  # creates Adam moments
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:5] = True
    before = layer.encoder.weight.detach().clone()
    generator = torch.Generator().manual_seed(0)
    if through == "method":  # the layer maintains itself, Adam state included
        count = layer.resample_dead_(dead, x, optimizer, generator)
    else:  # the cached route's name for it
        count = resample_dead_latents(layer, dead, x, optimizer, generator)
    assert count == 5
    assert torch.equal(layer.encoder.weight[5:], before[5:])  # live latents untouched
    assert not torch.equal(layer.encoder.weight[:5], before[:5])
    # the new decoder columns are unit-norm centred inputs; encoder rows point the same way, smaller
    columns = layer.decoder.weight[:, :5].t()
    assert torch.allclose(columns.norm(dim=-1), torch.ones(5), atol=1e-5)
    prepared = layer.prepare_input(x) - layer.pre_bias
    candidates = torch.nn.functional.normalize(prepared, dim=-1)
    assert ((columns @ candidates.t()).max(dim=-1).values > 0.999).all()
    enc = torch.nn.functional.normalize(layer.encoder.weight[:5], dim=-1)
    assert torch.allclose(enc, columns, atol=1e-5)
    assert (layer.encoder.bias[:5] == 0).all()
    state = optimizer.state[layer.encoder.weight]
    assert (state["exp_avg"][:5] == 0).all() and (state["exp_avg_sq"][:5] == 0).all()
    assert (state["exp_avg_sq"][5:] != 0).any()
    assert (optimizer.state[layer.decoder.weight]["exp_avg"][:, :5] == 0).all()
    assert (optimizer.state[layer.decoder.weight]["exp_avg_sq"][:, 5:] != 0).any()
    assert layer.resample_dead_(torch.zeros(64, dtype=torch.bool), x) == 0  # nothing dead: nothing changes


def test_resampling_without_an_optimizer_leaves_no_state_behind():
    layer = sae_layer("topk", topk=8)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[10:20] = True
    x = sparse_mixtures(n=64)
    runs = []
    for _ in range(2):
        copy = sae_layer("topk", topk=8)
        copy.load_state_dict(layer.state_dict())
        assert copy.resample_dead_(dead, x, generator=torch.Generator().manual_seed(1)) == 10
        runs.append(copy.decoder.weight.detach())
    assert torch.equal(runs[0], runs[1])  # the generator alone decides the picks
    assert torch.equal(runs[0][:, :10], layer.decoder.weight[:, :10])


def test_only_sparse_autoencoders_are_trained_or_measured():
    linear = MonoSemanticModel(
        MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_layer="linear", feature_dim=16)
    ).feature_layer
    for call in (
        lambda: train_sae_layer(linear, torch.randn(8, 32), progress=False),
        lambda: explained_variance(linear, torch.randn(8, 32)),
    ):
        with pytest.raises(ValueError, match=r"LinearFeatures is not a sparse autoencoder; .*'sae', 'topk'"):
            call()


def test_resampling_revives_latents_that_never_fire():
    x = sparse_mixtures(n=256)
    reports = {}
    for resample_until in (0.0, 0.8):
        layer = sae_layer("sae")
        with torch.no_grad():
            layer.encoder.bias[:32] = -100.0  # half the latents can never fire: no gradient reaches them
        reports[resample_until] = train_sae_layer(
            layer, x, epochs=6, lr=3e-3, batch_size=32, seed=0, resample_until=resample_until, progress=False
        )
    assert reports[0.0]["resampled"] == 0 and reports[0.0]["final_dead_fraction"] >= 0.5
    assert reports[0.8]["resampled"] >= 32
    assert reports[0.8]["final_dead_fraction"] < reports[0.0]["final_dead_fraction"]


def test_fit_sae_from_a_dataset_caches_features_and_round_trips(tmp_path):
    torch.manual_seed(0)
    bert = BertModel(tiny_bert_config(hidden_dropout_prob=0.0))
    ds = toy_text(n=32)
    model, report = fit_sae(
        bert,
        ds,
        feature_layer="topk",
        feature_dim=64,
        topk=4,
        epochs=2,
        lr=1e-4,
        batch_size=8,
        seed=0,
        cache_dir=tmp_path / "cache",
        extract_batch_size=16,
        progress=False,
    )
    cached = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(cached) == 1
    pooled = extract_pooled_features(bert, ds, cache_dir=tmp_path / "cache")  # the same cache entry
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    assert set(report) >= {"explained_variance", "l0", "dead_fraction", "resampled"}
    # the returned model is backbone -> pooling -> the fitted SAE, and saves/loads as one checkpoint
    batch = ds.with_format("torch")[:8]
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        expected, _ = model.feature_layer(pooled[:8])
    assert torch.allclose(out.features, expected, atol=1e-5)
    assert ((out.features != 0).sum(-1) <= 4).all()
    model.save_pretrained(tmp_path / "sae_model")
    loaded = MonoSemanticModel.from_pretrained(tmp_path / "sae_model")
    assert loaded.config.freeze_backbone and loaded.config.feature_layer == "topk"
    with torch.no_grad():
        again = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).features
    assert torch.allclose(again, out.features, atol=1e-6)
    # a MonoSemantic model works as the source too (its backbone and pooling are used)
    source = MonoSemanticModel(
        MonoSemanticConfig(backbone_config=tiny_bert_config(), pooling="mean", feature_dim=16)
    )
    from_model, _ = fit_sae(
        source, ds, feature_layer="sae", feature_dim=32, epochs=1, batch_size=8, progress=False
    )
    assert from_model.config.pooling == "mean" and from_model.config.feature_dim == 32


def test_fit_sae_validates_arguments():
    bert = BertModel(tiny_bert_config())
    with pytest.raises(ValueError, match=r"feature_layer='nonneg' is not valid; allowed: 'sae', 'topk'"):
        fit_sae(bert, features=torch.randn(8, 32), feature_layer="nonneg")
    with pytest.raises(ValueError, match="dataset"):
        fit_sae(bert)
    with pytest.raises(ValueError, match=r"features must be \[N, 32\]"):
        fit_sae(bert, features=torch.randn(8, 5), progress=False)


def test_fit_sae_refuses_a_model_whose_feature_layer_reads_a_hidden_layer(monkeypatch):
    """fit_sae fits on pooled output vectors: a model reading hidden layer 0 per token is refused, by
    name, before any copy or extraction (the fit would have landed on the pooled output instead)."""
    config = MonoSemanticConfig(
        backbone_config=tiny_bert_config(), feature_layer="topk", feature_dim=64, hidden_layer=0
    )
    model = MonoSemanticModel(config)
    monkeypatch.setattr("copy.deepcopy", lambda *a, **k: pytest.fail("the backbone was copied"))
    with pytest.raises(ValueError, match=r"reads hidden layer 0 token by token \(config.hidden_layer=0\)"):
        fit_sae(model, features=torch.randn(8, 32), progress=False)
    pooled = MonoSemanticModel(MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_layer="topk"))
    monkeypatch.undo()
    fitted, _ = fit_sae(
        pooled, features=torch.randn(16, 32), feature_dim=64, topk=4, epochs=1, progress=False
    )
    assert fitted.config.hidden_layer is None


def test_explained_variance_matches_its_definition():
    layer = sae_layer("topk", topk=8)
    x = sparse_mixtures(n=64)
    stats = layer.explained_variance(x, batch_size=10)  # chunked sums equal the one-shot formula
    assert explained_variance(layer, x, batch_size=10) == stats
    with torch.no_grad():
        prepared = layer.prepare_input(x)
        codes = layer.encode(prepared)
        reconstruction = layer.decode(codes)
    expected = 1 - (prepared - reconstruction).pow(2).sum() / (prepared - prepared.mean(0)).pow(2).sum()
    assert stats["explained_variance"] == pytest.approx(float(expected), abs=1e-5)
    assert stats["l0"] == pytest.approx(8.0)
    assert stats["dead_fraction"] == pytest.approx(1 - float((codes != 0).any(0).float().mean()))


def test_fit_normalisation_fits_like_always_but_codes_scale_with_the_input_norm(tmp_path):
    """sae_normalize_input="fit" (the authors' probe): the SAE is fitted on L2-normalised inputs exactly as
    with "always", but its codes encode the raw vector, so they grow with the input's norm; "always" codes
    do not change when the input is rescaled."""
    features = sparse_mixtures(n=256) * 20.0  # far from unit norm, like a projector output
    fits = {
        mode: fit_sae(
            BertModel(tiny_bert_config()),
            features=features,
            feature_layer="topk",
            feature_dim=64,
            topk=8,
            epochs=3,
            lr=3e-3,
            batch_size=32,
            seed=0,
            sae_normalize_input=mode,
            progress=False,
        )
        for mode in ("always", "fit")
    }
    (always, always_report), (fit, fit_report) = fits["always"], fits["fit"]
    assert always_report == fit_report  # the same fitting objective on the same normalised inputs
    for name, tensor in always.feature_layer.state_dict().items():
        assert torch.equal(fit.feature_layer.state_dict()[name], tensor), name
    x = features[:64]
    unit = torch.nn.functional.normalize(x, dim=-1)
    with torch.no_grad():
        codes = {mode: {c: m.feature_layer(c * x)[0] for c in (1.0, 10.0)} for mode, (m, _) in fits.items()}
        # "always" reads x / ||x||: rescaling the input changes nothing
        torch.testing.assert_close(codes["always"][10.0], codes["always"][1.0])
        # "fit" reads x itself: on a unit-norm input it gives the "always" codes, on x it does not
        torch.testing.assert_close(fit.feature_layer(unit)[0], codes["always"][1.0])
        norms = {c: codes["fit"][c].norm(dim=-1).mean() for c in (1.0, 10.0)}
        assert norms[1.0] > 5 * codes["always"][1.0].norm(dim=-1).mean()  # inputs of norm ~20, not 1
        assert norms[10.0] > 5 * norms[1.0]  # codes grow with the input norm
        # the reconstruction loss still reads the normalised vector: equal for both modes
        torch.testing.assert_close(fit.feature_layer(x)[1], always.feature_layer(x)[1])
    fit.save_pretrained(tmp_path / "fit")
    loaded = MonoSemanticModel.from_pretrained(tmp_path / "fit")
    assert loaded.config.sae_normalize_input == "fit" and loaded.feature_layer.input_normalization == "fit"
    with torch.no_grad():
        torch.testing.assert_close(loaded.feature_layer(x)[0], codes["fit"][1.0])


def test_unpadded_tokenised_text_is_named_with_the_fix(tmp_path):
    """A dataset tokenised without padding (the usual ``ds.map(tokenizer)``) fails with a message that says
    what to do, and the advice (a padding collator) then works for both extraction and fitting."""
    import datasets
    from transformers import BertTokenizerFast, DataCollatorWithPadding

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "d", "e"]))
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    texts = ["a b c", "a b", "c d e a", "e"] * 2
    ds = datasets.Dataset.from_dict({"text": texts}).map(lambda b: tokenizer(b["text"]), batched=True)
    bert = BertModel(tiny_bert_config()).eval()
    with pytest.raises(ValueError, match=r"'input_ids' have different lengths.*DataCollatorWithPadding"):
        extract_pooled_features(bert, ds, batch_size=4)
    with pytest.raises(ValueError, match="DataCollatorWithPadding"):
        fit_sae(bert, ds, feature_dim=64, topk=4, epochs=1, progress=False)
    collate = DataCollatorWithPadding(tokenizer)
    pooled = extract_pooled_features(bert, ds, batch_size=4, collate_fn=collate)
    one_by_one = torch.cat([extract_pooled_features(bert, ds.select([i]), batch_size=1) for i in range(4)])
    torch.testing.assert_close(pooled[:4], one_by_one, atol=1e-5, rtol=1e-4)  # padding does not change [CLS]
    fitted, _ = fit_sae(bert, ds, feature_dim=64, topk=4, epochs=1, collate_fn=collate, progress=False)
    assert fitted.config.feature_layer == "topk"


def test_one_config_object_drives_both_fitting_functions_and_keywords_fill_it():
    """SaeFitConfig is what fit_sae and train_sae_layer share: the same options through the config or
    through the keywords give the same fit; a keyword given replaces the config's field."""
    from hf_monosem.cached import SaeFitConfig

    x = sparse_mixtures(n=128)
    config = SaeFitConfig(epochs=2, batch_size=32, lr=3e-3, seed=3, progress=False)
    by_config = train_sae_layer(sae_layer("topk", topk=4), x, config=config)
    by_keywords = train_sae_layer(
        sae_layer("topk", topk=4), x, epochs=2, batch_size=32, lr=3e-3, seed=3, progress=False
    )
    assert by_config == by_keywords and by_config["lr"] == 3e-3
    overridden = train_sae_layer(sae_layer("topk", topk=4), x, config=config, epochs=1)
    assert len(overridden["explained_variance"]) == 2  # entry 0 and one epoch
    model_a, report_a = fit_sae(
        BertModel(tiny_bert_config()), features=x, feature_dim=64, topk=4, config=config
    )
    model_b, report_b = fit_sae(
        BertModel(tiny_bert_config()), features=x, feature_dim=64, topk=4, epochs=2, batch_size=32, lr=3e-3,
        seed=3, progress=False,
    )  # fmt: skip
    assert report_a == report_b
    assert torch.equal(model_a.feature_layer.encoder.weight, model_b.feature_layer.encoder.weight)
    with pytest.raises(ValueError, match=r"lr_decay=2 is not valid; allowed: a number in \[0, 1\]"):
        SaeFitConfig(lr_decay=2)


def test_default_learning_rate_scales_with_the_width_and_decays_at_the_end(monkeypatch):
    from hf_monosem.cached import SaeFitConfig

    lrs = []
    step = torch.optim.Adam.step

    def recorded_step(self, *args, **kwargs):  # the learning rate each optimiser step runs at
        lrs.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recorded_step)
    x = sparse_mixtures(n=128)
    report = train_sae_layer(
        sae_layer("topk", topk=4, width=64),
        x,
        config=SaeFitConfig(epochs=2, batch_size=32, lr_decay=0.5, progress=False),
    )
    base = SaeFitConfig().resolved_lr(64)
    assert report["lr"] == pytest.approx(base)
    # 8 steps, the last 4 decay linearly toward 0
    assert lrs == pytest.approx([base] * 5 + [base * 3 / 4, base / 2, base / 4])


def test_fit_sae_builds_one_model_and_starts_its_sae_tied_at_the_data_mean(monkeypatch):
    """The pooled vectors come from the model fit_sae returns (no second MonoSemanticModel wrapped around
    the backbone for the extraction); its SAE starts from init_for_fit_: encoder = decoder transpose at
    sparsify's row norm, pre-bias at the mean of the (normalised) features."""
    from hf_monosem.models.sae import ENCODER_INIT_NORM

    built = []
    original = MonoSemanticModel.from_backbone.__func__

    def counting(cls, *args, **kwargs):
        built.append(kwargs.get("feature_layer"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(MonoSemanticModel, "from_backbone", classmethod(counting))
    torch.manual_seed(0)
    ds = toy_text(n=16)
    model, _ = fit_sae(
        BertModel(tiny_bert_config()),
        ds,
        feature_dim=64,
        topk=4,
        epochs=1,
        lr=0.0,
        batch_size=8,
        progress=False,
    )
    assert built == ["topk"]
    layer = model.feature_layer
    with torch.no_grad():
        pooled = extract_pooled_features(model, ds)
    assert torch.allclose(layer.encoder.weight, ENCODER_INIT_NORM * layer.decoder.weight.t(), atol=1e-6)
    assert torch.allclose(layer.pre_bias, layer.prepare_input(pooled).mean(0), atol=1e-5)


def test_adam_over_the_latent_major_decoders_transpose_is_adam_over_the_decoder():
    """The fitting loop hands a latent-major decoder to Adam as its contiguous transpose (same storage,
    no per-step copy in fused Adam): the same updates as Adam over the decoder itself, and resampling
    still finds (and resets) the decoder's moments through that view."""
    from hf_monosem.cached import sae_optimizer

    layers = [sae_layer("topk", topk=4) for _ in range(2)]
    for layer in layers:
        layer.init_for_fit_()  # the decoder becomes latent-major
    assert layers[0].decoder.weight.t().is_contiguous()
    optimizer, share_gradients = sae_optimizer(layers[0], 1e-2)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(layers[0].decoder.weight) not in held  # the view is, not the decoder
    reference = torch.optim.Adam(layers[1].parameters(), lr=1e-2, fused=True)
    x = sparse_mixtures(n=64)
    for _ in range(3):
        for layer, step in ((layers[0], share_gradients), (layers[1], lambda: None)):
            layer.zero_grad(set_to_none=True)
            layer.weighted_aux_loss(layer.fit_forward(x).aux_losses).backward()
            step()
        optimizer.step()
        reference.step()
        for (name, got), expected in zip(layers[0].named_parameters(), layers[1].parameters()):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7, msg=name)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:3] = True
    layers[0].resample_dead_(dead, x, optimizer, torch.Generator().manual_seed(0))
    view = next(p for p in optimizer.state if p.data_ptr() == layers[0].decoder.weight.data_ptr())
    moment = optimizer.state[view]["exp_avg"]  # the decoder's, latent-major: [M, D]
    assert moment.shape == (64, 32)
    assert (moment[:3] == 0).all() and (moment[3:] != 0).any()
