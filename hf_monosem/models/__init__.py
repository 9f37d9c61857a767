"""Models: the configuration, the feature layers (linear / nonneg / sae / topk / jumprelu / gated) and the
backbone -> pooling -> feature layer -> head modeling code.

This folder is self-contained (same-folder relative imports only): remote-code export copies it next
to a checkpoint so that ``trust_remote_code=True`` users need no hf_monosem.
"""

from . import (
    configuration,
    feature_layers,
    gated_sae,
    hidden_layers,
    jumprelu_sae,
    loading,
    modeling,
    sae,
    sae_formats,
)
from .configuration import *  # noqa: F403
from .feature_layers import *  # noqa: F403
from .gated_sae import *  # noqa: F403
from .hidden_layers import *  # noqa: F403
from .jumprelu_sae import *  # noqa: F403
from .loading import *  # noqa: F403
from .modeling import *  # noqa: F403
from .sae import *  # noqa: F403
from .sae_formats import *  # noqa: F403

__all__ = [
    *configuration.__all__,
    *feature_layers.__all__,
    *sae.__all__,
    *jumprelu_sae.__all__,
    *gated_sae.__all__,
    *hidden_layers.__all__,
    *sae_formats.__all__,
    *modeling.__all__,
    *loading.__all__,
]
