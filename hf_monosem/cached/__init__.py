"""The frozen-backbone route: features extracted once (optionally cached on disk), then SAEs,
contrastive projectors and linear probes (single or batched grids) fitted on those features.
"""
from .extraction import (
    extract_pooled_features,
    model_fingerprint,
    resolve_base_model,
)
from .probing import (
    CachedFeatureDataset,
    FeatureProbe,
    probe_on_features,
)
from .probe_grid import (
    ProbeGrid,
    train_probe_grid,
)
from .sae_fitting import (
    explained_variance,
    fit_sae,
    resample_dead_latents,
    train_sae_layer,
)
from .projector_fitting import (
    fit_contrastive_projector,
)

__all__ = [
    "extract_pooled_features",
    "model_fingerprint",
    "resolve_base_model",
    "CachedFeatureDataset",
    "FeatureProbe",
    "probe_on_features",
    "ProbeGrid",
    "train_probe_grid",
    "explained_variance",
    "fit_sae",
    "resample_dead_latents",
    "train_sae_layer",
    "fit_contrastive_projector",
]
