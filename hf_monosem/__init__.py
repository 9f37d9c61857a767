"""hf_monosem: monosemantic feature layers for any Hugging Face backbone.

Importing the package registers :class:`MonoSemanticConfig` and the models with the transformers
Auto classes, so saved checkpoints load with ``AutoModel*.from_pretrained``.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
)

from .configuration import MonoSemanticConfig
from .feature_layers import FEATURE_LAYERS, FeatureLayer, register_feature_layer
from .modeling import (
    MonoSemanticClassifierOutput,
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
    MonoSemanticModelOutput,
    MonoSemanticPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(MonoSemanticConfig.model_type, MonoSemanticConfig, exist_ok=True)
AutoModel.register(MonoSemanticConfig, MonoSemanticModel, exist_ok=True)
AutoModelForImageClassification.register(MonoSemanticConfig, MonoSemanticForImageClassification, exist_ok=True)
AutoModelForSequenceClassification.register(MonoSemanticConfig, MonoSemanticForSequenceClassification, exist_ok=True)

__all__ = [
    "FEATURE_LAYERS",
    "FeatureLayer",
    "MonoSemanticClassifierOutput",
    "MonoSemanticConfig",
    "MonoSemanticForImageClassification",
    "MonoSemanticForSequenceClassification",
    "MonoSemanticModel",
    "MonoSemanticModelOutput",
    "MonoSemanticPreTrainedModel",
    "register_feature_layer",
]
