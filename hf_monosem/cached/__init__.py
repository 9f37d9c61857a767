"""The frozen-backbone route: features extracted once (optionally cached on disk), then SAEs,
contrastive projectors and linear probes (single or batched grids) fitted on those features.
"""

from . import (
    cache_files,
    checks,
    extraction,
    minibatch,
    probe_grid,
    probing,
    projector_fitting,
    sae_fitting,
    scaling,
)
from .cache_files import *  # noqa: F403
from .checks import *  # noqa: F403
from .extraction import *  # noqa: F403
from .minibatch import *  # noqa: F403
from .probe_grid import *  # noqa: F403
from .probing import *  # noqa: F403
from .projector_fitting import *  # noqa: F403
from .sae_fitting import *  # noqa: F403
from .scaling import *  # noqa: F403

__all__ = [
    *cache_files.__all__,
    *checks.__all__,
    *extraction.__all__,
    *probing.__all__,
    *probe_grid.__all__,
    *sae_fitting.__all__,
    *projector_fitting.__all__,
    *scaling.__all__,
    *minibatch.__all__,
]
