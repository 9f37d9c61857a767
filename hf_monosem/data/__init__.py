"""Data for training scripts: the offline assets as ``datasets`` objects, datasets by name, the default
backbones, and the dataset checks run before training.

* :mod:`~hf_monosem.data.assets` -- loaders of the offline datasets and the MiniLM folder;
* :mod:`~hf_monosem.data.registry` -- :func:`load_dataset_by_name` (a built-in, a folder or a Hub id),
  :func:`preprocess` and the small helpers around them;
* :mod:`~hf_monosem.data.backbones` -- :func:`backbone_source` (a named backbone or the offline
  defaults) and :func:`build_classifier`;
* :mod:`~hf_monosem.data.validation` -- checks that fail before training, naming the bad value.
"""

from . import assets, backbones, registry, validation
from .assets import *  # noqa: F403
from .backbones import *  # noqa: F403
from .registry import *  # noqa: F403
from .validation import *  # noqa: F403

# the public names of each module, as its own __all__ lists them
__all__ = [*backbones.__all__, *registry.__all__, *assets.__all__, *validation.__all__]
