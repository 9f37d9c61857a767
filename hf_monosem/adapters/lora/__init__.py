"""LoRA and MonoLoRA adapters on the backbone, with the feature layer and classifier trained fully.

:func:`add_lora` puts LoRA adapters on the backbone's attention projections (per-family defaults,
see :func:`default_target_modules`) and lists the feature layer and the classifier in peft's
``modules_to_save``, so they are trained in full and saved with the adapter. peft only
auto-detects heads named ``classifier``/``score``; our head is ``classifier`` and our feature
layer is ``feature_layer``, both matched by name suffix (``monosemantic.feature_layer``).

**MonoLoRA** (the paper's language method) is LoRA with a ReLU in the adapter branch, so the update
is sparse and non-negative. Two placements (the paper does not pin it down):

* ``monolora="output"``: ``h = W x + relu(s * B A x)``
* ``monolora="hidden"``: ``h = W x + s * B relu(A x)``

peft's ``PeftType`` is a closed enum, so MonoLoRA is a LoRA *variant*: :class:`MonoLoraConfig` is a
``LoraConfig`` with one more field, ``monolora``, and registers :class:`MonoLoraLinear` (a peft
``lora.Linear`` whose variant runs the ReLU) through LoRA's custom-module support
(``LoraConfig._register_custom_module``). Its adapters are ordinary LoRA weights
(``lora_A``/``lora_B``) with the same state-dict keys.

Saving and loading: a MonoLoRA ``adapter_config.json`` says ``"peft_type": "MONOLORA"`` and
``"monolora": "<placement>"``. Importing :mod:`hf_monosem` adds ``"MONOLORA"`` to peft's
config-type lookup, so ``PeftModel.from_pretrained(base, folder)`` rebuilds the ReLU layers;
without :mod:`hf_monosem` peft refuses the folder (``KeyError: 'MONOLORA'``) instead of silently
running it as plain LoRA (whose outputs would be different). :func:`load_lora` does the same
explicitly.

Merging: ``relu(B A x)`` and ``B relu(A x)`` are not linear in ``x``, so no matrix ``dW`` satisfies
``(W + dW) x = W x + update(x)`` for all ``x``: a MonoLoRA adapter *cannot* be folded into ``W``.
``merge_adapter()`` / ``merge_and_unload()`` raise :class:`MonoLoraMergeError` and leave the model
untouched; serve the model unmerged (``PeftModel``) or use ``unload()`` to drop the adapters.
Plain LoRA adapters merge as usual.

The ReLU is ``clamp(min=0)``, whose gradient at exactly 0 is 1: LoRA initialises ``B = 0``, so with
``placement="output"`` every pre-activation starts at exactly 0, where ``torch.relu`` has gradient
0 and the adapter would never train. Forward values are identical to ``relu``.
"""

from . import config, layer, model, monitor
from .config import *  # noqa: F403
from .config import register_with_peft
from .layer import *  # noqa: F403
from .model import *  # noqa: F403
from .monitor import *  # noqa: F403

__all__ = [*config.__all__, *layer.__all__, *model.__all__, *monitor.__all__]

# The one registration side effect of this folder (as peft's tuners/<method>/__init__ registers its
# method): peft reads "MONOLORA" adapter folders once the package is imported.
register_with_peft()
