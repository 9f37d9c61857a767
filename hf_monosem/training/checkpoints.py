"""Run folders: which Trainer checkpoint to resume from, and the JSON files that record a run.

A training script that may be killed and restarted needs three things, all here:

* :func:`last_complete_checkpoint` -- the newest ``checkpoint-<step>`` folder that was saved
  completely (a run killed while saving leaves a newer one without ``trainer_state.json``);
* :func:`resume_checkpoint` / :func:`wants_resume` -- what ``--resume_from_checkpoint`` means for one
  run of a script that trains several models, each in its own folder;
* :func:`write_json` / :func:`read_json` -- result and state files, written atomically so that another
  process (of an ``accelerate launch`` run, or a resumed run) never reads half a file.

Example:
    >>> import os, tempfile
    >>> run = tempfile.mkdtemp()
    >>> for step, complete in ((4, True), (8, True), (12, False)):  # checkpoint-12 was cut off
    ...     os.makedirs(os.path.join(run, f"checkpoint-{step}"))
    ...     if complete:
    ...         write_json(os.path.join(run, f"checkpoint-{step}", TRAINER_STATE_FILE), {"global_step": step})
    >>> os.path.basename(last_complete_checkpoint(run))
    'checkpoint-8'
    >>> os.path.basename(resume_checkpoint(run, "True")), resume_checkpoint(run, "")
    ('checkpoint-8', None)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from typing import Any

__all__ = [
    "TRAINER_STATE_FILE",
    "CheckpointLoadError",
    "last_complete_checkpoint",
    "load_checkpoint_weights",
    "read_json",
    "public_record",
    "recorded_command",
    "resume_checkpoint",
    "wants_resume",
    "write_json",
]

#: written last into a Trainer checkpoint folder: a folder without it was cut off while saving.
TRAINER_STATE_FILE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The ``checkpoint-<step>`` folder in ``folder`` with the highest step that was saved completely.

    A run killed while saving leaves a newer ``checkpoint-*`` folder without ``trainer_state.json``
    (the Trainer writes it last); ``transformers.trainer_utils.get_last_checkpoint`` would pick that
    one and resuming would fail. ``None`` when ``folder`` does not exist or holds no complete one.

    Example:
        >>> import tempfile
        >>> last_complete_checkpoint(tempfile.mkdtemp()) is None
        True
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return None
    steps = []
    for name in os.listdir(folder):
        match = _CHECKPOINT_RE.match(name)
        path = os.path.join(folder, name)
        if match and _readable_state(os.path.join(path, TRAINER_STATE_FILE)):
            steps.append((int(match.group(1)), path))
    return max(steps)[1] if steps else None


def _readable_state(path: str) -> bool:
    """Whether ``path`` is a trainer state the Trainer can resume from: a JSON object (a file cut off
    while written, or emptied, is not; the Trainer would crash on it after the model was loaded)."""
    try:
        return isinstance(read_json(path), dict)
    except (OSError, ValueError):
        return False


class CheckpointLoadError(RuntimeError):
    """A checkpoint's weights do not fit the model being resumed (missing, unexpected or resized keys)."""


def load_checkpoint_weights(model: Any, checkpoint: str | os.PathLike) -> None:
    """Load the weights saved in Trainer checkpoint ``checkpoint`` into ``model``, exactly, or raise.

    ``transformers.Trainer`` reloads a checkpoint with ``model.load_state_dict(file, strict=False)``,
    which skips the key conversion ``from_pretrained`` applies. Since transformers 5.25 ViT's modules
    are named ``layers.N.attention.q_proj`` while ``save_pretrained`` writes the legacy
    ``encoder.layer.N.attention.attention.query``, so a resumed ViT run silently kept its backbone's
    current weights (only a logged "missing keys" warning). Here the checkpoint is read the way
    ``from_pretrained`` reads it (``type(model).from_pretrained(checkpoint)`` with the model's own
    config, so every renaming a release adds is applied), then copied into ``model`` with
    ``strict=True``. Costs one more copy of the weights in CPU memory while loading.

    Raises:
        CheckpointLoadError: when the checkpoint lacks weights of the model, holds weights the model has
            not, or holds them in another shape; each list is named (at most 5 keys of each).
    """
    import copy

    checkpoint = os.fspath(checkpoint)
    # each tensor comes back in its saved dtype (transformers 5 loads dtype="auto"); load_state_dict
    # then copies it into the model's own parameters, whatever their dtype
    loaded, info = type(model).from_pretrained(
        checkpoint, config=copy.deepcopy(model.config), output_loading_info=True, ignore_mismatched_sizes=True
    )  # mismatched sizes are reported in ``info`` and refused below, with the keys named
    # tied weights are reported neither missing nor unexpected; buffers the model does not persist are
    # not in the file: what matters is the model's own persistent state
    problems = {
        "missing": sorted(info.get("missing_keys", ())),
        "unexpected": sorted(info.get("unexpected_keys", ())),
        "mismatched": sorted(
            str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", ())
        ),
    }
    if any(problems.values()):
        named = "; ".join(
            f"{what}: {keys[:5]}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
            for what, keys in problems.items()
            if keys
        )
        raise CheckpointLoadError(
            f"the weights in {checkpoint} do not fit the model being resumed ({named}); resuming would "
            "continue from partly random weights. Resume with the model (backbone, feature layer, sizes) the "
            "checkpoint was saved from"
        )
    model.load_state_dict(loaded.state_dict(), strict=True)


def wants_resume(resume: str | bool | None) -> bool:
    """Whether a ``--resume_from_checkpoint`` value asks for resuming: ``True`` or a path (as a bool or
    the string ``TrainingArguments`` keeps), not ``None`` / ``False`` / ``""`` / ``"false"`` / ``"none"``.

    Example:
        >>> [wants_resume(v) for v in (None, False, "", "False", "True", "runs/x/checkpoint-8")]
        [False, False, False, False, True, True]
    """
    return resume is not None and resume is not False and str(resume).lower() not in ("", "false", "none")


def resume_checkpoint(run_dir: str | os.PathLike, resume: str | bool | None) -> str | None:
    """What to pass to ``Trainer.train(resume_from_checkpoint=...)`` for one run of a multi-run script.

    ``resume`` is the script's ``--resume_from_checkpoint``: ``True`` resumes every run from the last
    complete ``checkpoint-*`` in its own folder ``run_dir`` (:func:`last_complete_checkpoint`; a run
    that never saved one starts afresh, returning ``None``); a checkpoint path resumes the run whose
    folder holds it (every other run behaves as with ``True``); empty / ``False`` / ``None``: no
    resuming. Unlike ``resume_from_checkpoint=True`` on the Trainer, a run with nothing saved yet is
    not an error, so one flag can resume a script whose later runs never started.

    Example:
        >>> import tempfile
        >>> resume_checkpoint(tempfile.mkdtemp(), True) is None  # nothing saved yet: start afresh
        True
    """
    if not wants_resume(resume):
        return None
    run_dir = os.fspath(run_dir)
    if isinstance(resume, (str, os.PathLike)) and str(resume).lower() != "true":
        if os.path.abspath(resume).startswith(os.path.abspath(run_dir) + os.sep):
            return os.fspath(resume)
    return last_complete_checkpoint(run_dir)


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` as indented JSON atomically (a temporary file, then a rename), creating the folder.

    A concurrent reader (another process of an ``accelerate launch`` run, a resumed run) sees the old
    file or the new one, never half of one. Arrays and tensors are written as lists (their
    ``tolist()``), dataclasses as dicts, anything else JSON cannot hold as its ``str``.

    Example:
        >>> import os, tempfile, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "run", "result.json")
        >>> write_json(path, {"accuracy": np.float32(0.5), "per_seed": np.array([1, 2])})
        >>> read_json(path)
        {'accuracy': 0.5, 'per_seed': [1, 2]}
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, default=_jsonable)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


#: options whose value is a secret: never written into a run record
_SECRET_OPTION = re.compile(r"^--?[\w-]*(token|password|secret|api[_-]?key)[\w-]*$", re.IGNORECASE)


def recorded_command(script: str, argv: list[str]) -> str:
    """The command line as a run record (``results.json``'s ``"command"``) keeps it: the value of any
    ``--*token*`` / ``--*password*`` / ``--*secret*`` / ``--*api_key*`` option replaced by ``***``, and
    every local path by its last component (:func:`~hf_monosem.models.configuration.public_name`).

    Example:
        >>> recorded_command("train_sae.py", ["--token", "hf_abc", "--hub_token=hf_x", "--output_dir", "/tmp/run/out"])
        'train_sae.py --token *** --hub_token=*** --output_dir out'
    """
    from ..models.configuration import public_name

    words, secret_next = [os.path.basename(script)], False
    for word in argv:
        if secret_next:
            words.append("***")
            secret_next = False
            continue
        option, equals, value = word.partition("=")
        if _SECRET_OPTION.match(option):
            words.append(f"{option}=***" if equals else option)
            secret_next = not equals
        elif equals and option.startswith("-"):
            words.append(f"{option}={public_name(value)}")
        else:
            words.append(public_name(word) if not word.startswith("-") else word)
    return " ".join(words)


def public_record(payload: Any, root: str | os.PathLike | None = None) -> Any:
    """``payload`` (a results record) with every absolute local path replaced: a path inside ``root`` (the
    run's output folder) by its path relative to it, any other by its last component. Results files are
    shared and published; they must not carry the machine's folders.

    Example:
        >>> public_record({"checkpoint": "/tmp/run/k2/linear", "backbone": "/home/me/bert", "lr": 0.1}, "/tmp/run")
        {'checkpoint': 'k2/linear', 'backbone': 'bert', 'lr': 0.1}
    """
    from ..models.configuration import public_name

    if isinstance(payload, dict):
        return {key: public_record(value, root) for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [public_record(value, root) for value in payload]
    if isinstance(payload, str) and os.path.isabs(payload):
        inside = root is not None and os.path.abspath(payload).startswith(os.path.abspath(root) + os.sep)
        return os.path.relpath(payload, root) if inside else public_name(payload)
    return payload


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value stored in ``path`` (e.g. by :func:`write_json`)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _jsonable(value: Any) -> Any:
    """``json.dump``'s fallback: arrays/tensors/NumPy scalars as lists or numbers, dataclasses as dicts."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__") and not isinstance(value, type):
        return asdict(value)
    return str(value)
