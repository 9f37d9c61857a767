#!/usr/bin/env bash
# Compatibility run against the newest releases of the libraries we integrate (transformers, accelerate,
# peft, datasets): a new release can rename weights (transformers 5.25 renamed ViT's, which silently broke
# Trainer resume) or change an API we override. Runs after the main test run (it upgrades this
# environment), on a subset that exercises those integration points, in about a minute on 2 cores.
# No index reachable (an offline sandbox): says so and runs the subset on the installed versions.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore
LIBS="transformers accelerate peft datasets"
if python -m pip install --disable-pip-version-check -q --upgrade --upgrade-strategy only-if-needed $LIBS; then
    echo "compat: newest releases installed"
else
    echo "compat: WARNING: could not upgrade ($LIBS) from the package index; testing the installed versions" >&2
fi
python - <<'PY'
import importlib.metadata as m
print("compat: " + ", ".join(f"{n} {m.version(n)}" for n in ("torch", "transformers", "accelerate", "peft", "datasets")))
PY
python -m pytest -q -p no:cacheprovider -m "not slow" \
    tests/training/test_resume_families.py \
    tests/training/test_resume.py \
    tests/cached/test_cache_files.py \
    tests/models/test_checkpoint_compat.py \
    tests/models/test_config.py \
    tests/adapters/test_peft.py \
    tests/data/test_validation.py
