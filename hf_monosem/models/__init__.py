"""Models: the configuration, the feature layers (linear / nonneg / sae / topk) and the
backbone -> pooling -> feature layer -> head modeling code.

This folder is self-contained (same-folder relative imports only): remote-code export copies it next
to a checkpoint so that ``trust_remote_code=True`` users need no hf_monosem.
"""
from .configuration import (
    POOLING_CHOICES,
    MonoSemanticConfig,
    backbone_hidden_size,
    default_pooling,
)
from .feature_layers import (
    FEATURE_LAYERS,
    NONNEG_ACTIVATIONS,
    FeatureLayer,
    LinearFeatures,
    NonNegativeFeatures,
    SparseAutoencoderFeatures,
    TopKSparseAutoencoderFeatures,
    build_feature_layer,
    register_feature_layer,
)
from .modeling import (
    MonoSemanticClassifierOutput,
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
    MonoSemanticModelOutput,
    MonoSemanticPreTrainedModel,
)
from .loading import (
    check_checkpoint_folder,
)

__all__ = [
    "POOLING_CHOICES",
    "MonoSemanticConfig",
    "backbone_hidden_size",
    "default_pooling",
    "FEATURE_LAYERS",
    "NONNEG_ACTIVATIONS",
    "FeatureLayer",
    "LinearFeatures",
    "NonNegativeFeatures",
    "SparseAutoencoderFeatures",
    "TopKSparseAutoencoderFeatures",
    "build_feature_layer",
    "register_feature_layer",
    "MonoSemanticClassifierOutput",
    "MonoSemanticForImageClassification",
    "MonoSemanticForSequenceClassification",
    "MonoSemanticModel",
    "MonoSemanticModelOutput",
    "MonoSemanticPreTrainedModel",
    "check_checkpoint_folder",
]
