"""hf_monosem: monosemantic feature layers for any Hugging Face backbone.

Importing the package registers :class:`MonoSemanticConfig` and the models with the transformers
Auto classes, so saved checkpoints load with ``AutoModel*.from_pretrained``.
"""

import importlib.metadata

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
)

from .adapters.lora import MonoLoraConfig, adapter_sparsity, add_lora, load_lora
from .cached.feature_cache import extract_pooled_features
from .cached.probing import CachedFeatureDataset, FeatureProbe, probe_on_features
from .cached.sae_fitting import fit_sae
from .hub import enable_remote_code, make_model_card, push_to_hub_with_card, save_for_hub
from .models.configuration import MonoSemanticConfig
from .models.feature_layers import FEATURE_LAYERS, FeatureLayer, register_feature_layer
from .models.modeling import (
    MonoSemanticClassifierOutput,
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
    MonoSemanticModelOutput,
    MonoSemanticPreTrainedModel,
)
from .models.sae_formats import load_sae, save_sae
from .training.contrastive import ContrastiveTrainer, ImageViews, TextViews, UnlabeledDataCollator
from .training.trainer import MonoSemanticTrainer

try:  # the version is written once, in pyproject.toml; the installed metadata carries it
    __version__ = importlib.metadata.version("hf_monosem")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

AutoConfig.register(MonoSemanticConfig.model_type, MonoSemanticConfig, exist_ok=True)
AutoModel.register(MonoSemanticConfig, MonoSemanticModel, exist_ok=True)
AutoModelForImageClassification.register(
    MonoSemanticConfig, MonoSemanticForImageClassification, exist_ok=True
)
AutoModelForSequenceClassification.register(
    MonoSemanticConfig, MonoSemanticForSequenceClassification, exist_ok=True
)
# The Trainer's create_model_card / push_to_hub write this package's card (training/ cannot import hub/)
MonoSemanticTrainer.model_card_builder = make_model_card

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
    "CachedFeatureDataset",
    "ContrastiveTrainer",
    "FeatureProbe",
    "ImageViews",
    "MonoSemanticTrainer",
    "TextViews",
    "UnlabeledDataCollator",
    "extract_pooled_features",
    "fit_sae",
    "load_sae",
    "save_sae",
    "probe_on_features",
    "MonoLoraConfig",
    "adapter_sparsity",
    "add_lora",
    "enable_remote_code",
    "load_lora",
    "make_model_card",
    "push_to_hub_with_card",
    "save_for_hub",
]
