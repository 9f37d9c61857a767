"""Trainers: :class:`MonoSemanticTrainer` (task + feature-layer losses), :class:`ContrastiveTrainer`
(SimCLR vs NCL pretraining), their views and losses, and the run files behind resume.
"""

from . import checkpoints, contrastive, losses, threads, trainer, views
from .checkpoints import *  # noqa: F403
from .contrastive import *  # noqa: F403
from .losses import *  # noqa: F403
from .threads import *  # noqa: F403
from .trainer import *  # noqa: F403
from .views import *  # noqa: F403

# contrastive re-exports the views it uses and trainer re-exports last_complete_checkpoint: list each once
__all__ = list(
    dict.fromkeys(
        [
            *losses.__all__,
            *trainer.__all__,
            *checkpoints.__all__,
            *threads.__all__,
            *views.__all__,
            *contrastive.__all__,
        ]
    )
)
