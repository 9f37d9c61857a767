"""Shared fixtures of the tests; the tiny backbones themselves are in ``tiny_models.py``."""

from __future__ import annotations

import pytest
import torch
from tiny_models import BACKBONES

# The fixture folder holds data and the script that made it, not tests.
collect_ignore_glob = ["models/fixtures/*"]


@pytest.fixture(params=sorted(BACKBONES))
def backbone_family(request):
    return request.param


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (restored after): tiny models gain nothing from a second thread
    and lose a lot when the cores are shared. Modules opt in with ``pytestmark = pytest.mark.usefixtures``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
